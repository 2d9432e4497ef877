//! The only module that touches the operating system for the engine: files,
//! directories, symlinks, ownership, and name lookups.
//!
//! Invariant: no symlink is ever followed on the way to a managed path. Every
//! path is walked component by component from the root's file descriptor with
//! `O_NOFOLLOW | O_DIRECTORY`, and every operation is relative to the parent's
//! descriptor (`*at` calls). With `--root DIR`, nothing outside DIR is touched.

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// What is at a path (never following a final symlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A device, socket or FIFO: never managed, never clobbered.
    Other,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::File => "a regular file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symlink",
            Kind::Other => "a device, socket or FIFO",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits (0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
}

/// A file written beside its target but not yet renamed into place (see
/// [`Host::stage_file`] and [`Host::commit_all`]).
pub struct Staged {
    path: String,
    dir: Arc<OwnedFd>,
    tmp: String,
    name: String,
    fd: OwnedFd,
}

/// The id [`Host::lookup_id`] gives, in a dry run, for a user or group that
/// the same run would create: (uid_t)-1, never a real id, and never applied
/// (a dry run applies nothing).
pub const PENDING_ID: u32 = u32::MAX;

/// Largest file content the engine reads to compare or back up.
pub const MAX_READ: u64 = 64 * 1024 * 1024;

pub struct Host {
    root: PathBuf,
    root_fd: OnceLock<Result<OwnedFd, String>>,
    names: Mutex<HashMap<(bool, String), Option<u32>>>,
    /// Users and groups a dry run would have created by now (see [`PENDING_ID`]).
    assumed: Mutex<std::collections::BTreeSet<(bool, String)>>,
    /// Directories a dry run would have created by now.
    assumed_dirs: Mutex<std::collections::BTreeSet<String>>,
    /// Directories opened (without following symlinks) during this run.
    dirs: Mutex<HashMap<String, Arc<OwnedFd>>>,
    /// Directories whose entries changed and still need an fsync.
    dirty: Mutex<HashMap<String, Arc<OwnedFd>>>,
}

fn split(path: &str) -> (Vec<&str>, &str) {
    let mut parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let last = parts.pop().unwrap_or("");
    (parts, last)
}

fn meta_of(st: &nix::sys::stat::FileStat) -> Meta {
    let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    let kind = match fmt {
        SFlag::S_IFREG => Kind::File,
        SFlag::S_IFDIR => Kind::Dir,
        SFlag::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    };
    Meta {
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
    }
}

fn random_suffix() -> String {
    let mut b = [0u8; 6];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

impl Host {
    /// `None` manages `/`; `Some(dir)` makes every managed path relative to `dir`.
    pub fn new(root: Option<PathBuf>) -> Host {
        Host {
            root: root.unwrap_or_else(|| PathBuf::from("/")),
            root_fd: OnceLock::new(),
            names: Mutex::new(HashMap::new()),
            assumed: Mutex::new(Default::default()),
            assumed_dirs: Mutex::new(Default::default()),
            dirs: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a run: forgets directory descriptors and name lookups from
    /// earlier runs (the host may have changed in between).
    pub fn begin_run(&self) {
        self.dirs.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.assumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.forget_names();
    }

    /// Ends a run: fsyncs every directory whose entries changed. Each write
    /// was already atomic (a crash leaves old or new content); this makes the
    /// renames durable once per directory instead of once per file.
    pub fn sync_dirs(&self) -> anyhow::Result<()> {
        let dirty: Vec<(String, Arc<OwnedFd>)> = self
            .dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (path, fd) in dirty {
            nix::unistd::fsync(&fd).with_context(|| format!("fsync directory {path}"))?;
        }
        Ok(())
    }

    fn mark_dirty(&self, path: &str, dir: &Arc<OwnedFd>) {
        let parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(parent.to_owned())
            .or_insert_with(|| dir.clone());
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the host is the real system (root `/`), not a sandbox.
    pub fn is_system(&self) -> bool {
        self.root == Path::new("/")
    }

    fn root_fd(&self) -> anyhow::Result<&OwnedFd> {
        self.root_fd
            .get_or_init(|| {
                nix::fcntl::open(
                    &self.root,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| format!("open root {}: {e}", self.root.display()))
            })
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Opens the parent directory of `path` without following symlinks
    /// (cached for the run). `Ok(None)` when a parent component does not exist.
    fn parent(&self, path: &str) -> anyhow::Result<Option<(Arc<OwnedFd>, String)>> {
        let (dirs, last) = split(path);
        if last.is_empty() {
            bail!("{path}: not a path below the root");
        }
        let parent_key = format!("/{}", dirs.join("/"));
        if let Some(fd) = self
            .dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&parent_key)
        {
            return Ok(Some((fd.clone(), last.to_owned())));
        }
        let mut fd: Option<OwnedFd> = None;
        let mut walked = String::new();
        for d in dirs {
            walked.push('/');
            walked.push_str(d);
            let base = match &fd {
                Some(f) => f.as_fd(),
                None => self.root_fd()?.as_fd(),
            };
            match nix::fcntl::openat(
                base,
                d,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(next) => fd = Some(next),
                Err(Errno::ENOENT) => return Ok(None),
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    // O_NOFOLLOW|O_DIRECTORY on a symlink gives ENOTDIR: say which it is.
                    let is_link = nix::sys::stat::fstatat(base, d, AtFlags::AT_SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| meta_of(&st).kind == Kind::Symlink);
                    if is_link {
                        bail!("{walked} is a symlink; refusing to follow it on the way to {path}");
                    }
                    bail!("{walked} is not a directory, on the way to {path}");
                }
                Err(e) => return Err(e).with_context(|| format!("open directory {walked}")),
            }
        }
        let fd = Arc::new(match fd {
            Some(f) => f,
            None => self
                .root_fd()?
                .try_clone()
                .context("duplicate root descriptor")?,
        });
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(parent_key, fd.clone());
        Ok(Some((fd, last.to_owned())))
    }

    fn parent_required(&self, path: &str) -> anyhow::Result<(Arc<OwnedFd>, String)> {
        self.parent(path)?.with_context(|| {
            format!(
                "parent directory of {path} does not exist (manage it with a directories entry)"
            )
        })
    }

    /// What is at `path`, not following a final symlink; `None` when nothing.
    pub fn lstat(&self, path: &str) -> anyhow::Result<Option<Meta>> {
        let Some((dir, name)) = self.parent(path)? else {
            return Ok(None);
        };
        match nix::sys::stat::fstatat(&dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(meta_of(&st))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("stat {path}")),
        }
    }

    /// Reads a regular file (never through a symlink).
    pub fn read_file(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let (dir, name) = self.parent_required(path)?;
        let fd = nix::fcntl::openat(
            &dir,
            name.as_str(),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .with_context(|| format!("open {path}"))?;
        let mut f = File::from(fd);
        let mut buf = Vec::new();
        Read::by_ref(&mut f)
            .take(MAX_READ + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("read {path}"))?;
        if buf.len() as u64 > MAX_READ {
            bail!("{path} is larger than {MAX_READ} bytes");
        }
        Ok(buf)
    }

    /// Replaces (or creates) a regular file atomically: a temp file in the same
    /// directory gets the content, owner and mode, is fsynced and renamed over
    /// the target (the directory is fsynced at the end of the run, see
    /// [`Host::sync_dirs`]). A crash leaves old or new content, never a mix.
    pub fn write_file(
        &self,
        path: &str,
        content: &[u8],
        mode: u32,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> anyhow::Result<()> {
        let staged = self.stage_file(path, content, mode, uid, gid)?;
        self.commit_durable(staged)
    }

    /// Commits one staged file: fsync it, then rename it into place.
    pub fn commit_durable(&self, staged: Staged) -> anyhow::Result<()> {
        if let Err(e) = nix::unistd::fsync(&staged.fd) {
            let path = staged.path.clone();
            self.discard(staged);
            return Err(e).with_context(|| format!("fsync {path}"));
        }
        self.commit(staged)
    }

    /// The first half of an atomic write: the new content, owner and mode in
    /// a temp file beside `path`, not yet durable and not yet in place.
    pub fn stage_file(
        &self,
        path: &str,
        content: &[u8],
        mode: u32,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> anyhow::Result<Staged> {
        let (dir, name) = self.parent_required(path)?;
        let tmp = format!(".{name}.ballast-{}.tmp", random_suffix());
        let fd = nix::fcntl::openat(
            &dir,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .with_context(|| format!("create temp file for {path}"))?;
        let staged = Staged {
            path: path.to_owned(),
            dir,
            tmp,
            name,
            fd,
        };
        let result = (|| -> anyhow::Result<()> {
            let mut f = File::from(staged.fd.try_clone()?);
            f.write_all(content)
                .with_context(|| format!("write {path}"))?;
            if uid.is_some() || gid.is_some() {
                nix::unistd::fchown(
                    &f,
                    uid.map(nix::unistd::Uid::from_raw),
                    gid.map(nix::unistd::Gid::from_raw),
                )
                .with_context(|| format!("chown {path}"))?;
            }
            nix::sys::stat::fchmod(&f, Mode::from_bits_truncate(mode))
                .with_context(|| format!("chmod {path}"))?;
            Ok(())
        })();
        match result {
            Ok(()) => Ok(staged),
            Err(e) => {
                self.discard(staged);
                Err(e)
            }
        }
    }

    /// Makes every staged file durable at once (one `syncfs` instead of one
    /// fsync per file), then renames each into place. The content of every
    /// temp file is on disk before any rename, so a crash still leaves old or
    /// new content. Returns one result per staged file, in order.
    pub fn commit_all(&self, staged: Vec<Staged>) -> Vec<anyhow::Result<()>> {
        let Some(first) = staged.first() else {
            return Vec::new();
        };
        // A few files: fsync each rather than the whole filesystem.
        if staged.len() <= 16 {
            return staged.into_iter().map(|s| self.commit_durable(s)).collect();
        }
        let started = std::time::Instant::now();
        let synced = nix::unistd::syncfs(&first.fd);
        tracing::debug!(
            files = staged.len(),
            ms = started.elapsed().as_millis() as u64,
            "syncfs before renames"
        );
        if let Err(e) = synced {
            let msg = format!("syncfs before renaming {} files: {e}", staged.len());
            return staged
                .into_iter()
                .map(|s| {
                    self.discard(s);
                    Err(anyhow::anyhow!("{msg}"))
                })
                .collect();
        }
        staged.into_iter().map(|s| self.commit(s)).collect()
    }

    fn commit(&self, s: Staged) -> anyhow::Result<()> {
        if let Err(e) = nix::fcntl::renameat(&s.dir, s.tmp.as_str(), &s.dir, s.name.as_str()) {
            let path = s.path.clone();
            self.discard(s);
            return Err(e).with_context(|| format!("rename into {path}"));
        }
        self.mark_dirty(&s.path, &s.dir);
        Ok(())
    }

    fn discard(&self, s: Staged) {
        let _ = nix::unistd::unlinkat(
            &s.dir,
            s.tmp.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }

    /// Sets owner and/or mode of what is at `path` (a symlink's own owner; a
    /// symlink's mode is never changed).
    pub fn set_meta(
        &self,
        path: &str,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> anyhow::Result<()> {
        let (dir, name) = self.parent_required(path)?;
        if uid.is_some() || gid.is_some() {
            nix::unistd::fchownat(
                &dir,
                name.as_str(),
                uid.map(nix::unistd::Uid::from_raw),
                gid.map(nix::unistd::Gid::from_raw),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .with_context(|| format!("chown {path}"))?;
        }
        if let Some(mode) = mode {
            // Open the object itself (never through a symlink) and fchmod it.
            let fd = nix::fcntl::openat(
                &dir,
                name.as_str(),
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
                Mode::empty(),
            )
            .with_context(|| format!("open {path} to chmod"))?;
            nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))
                .with_context(|| format!("chmod {path}"))?;
        }
        Ok(())
    }

    /// Creates a directory; with `parents`, missing parents are created too (0755).
    pub fn mkdir(&self, path: &str, mode: u32, parents: bool) -> anyhow::Result<Vec<String>> {
        let mut created = Vec::new();
        if parents {
            let (dirs, _) = split(path);
            let mut walked = String::new();
            for d in dirs {
                walked.push('/');
                walked.push_str(d);
                if self.lstat(&walked)?.is_none() {
                    self.mkdir_one(&walked, 0o755)?;
                    created.push(walked.clone());
                }
            }
        }
        self.mkdir_one(path, mode)?;
        Ok(created)
    }

    fn mkdir_one(&self, path: &str, mode: u32) -> anyhow::Result<()> {
        let (dir, name) = self.parent_required(path)?;
        nix::sys::stat::mkdirat(&dir, name.as_str(), Mode::from_bits_truncate(mode))
            .with_context(|| format!("mkdir {path}"))?;
        // mkdir is subject to the umask; set the exact mode.
        let fd = nix::fcntl::openat(
            &dir,
            name.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("open {path}"))?;
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))
            .with_context(|| format!("chmod {path}"))?;
        self.mark_dirty(path, &dir);
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, path: &str) -> anyhow::Result<()> {
        let (dir, name) = self.parent_required(path)?;
        match nix::unistd::unlinkat(&dir, name.as_str(), nix::unistd::UnlinkatFlags::RemoveDir) {
            Ok(()) => {
                // Forget descriptors of the removed directory and below it.
                self.dirs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|k, _| k != path && !k.starts_with(&format!("{path}/")));
                self.mark_dirty(path, &dir);
                Ok(())
            }
            Err(Errno::ENOTEMPTY | Errno::EEXIST) => {
                bail!("directory {path} is not empty; only empty directories are removed")
            }
            Err(e) => Err(e).with_context(|| format!("rmdir {path}")),
        }
    }

    /// Removes a file or a symlink (never a directory).
    pub fn unlink(&self, path: &str) -> anyhow::Result<()> {
        let (dir, name) = self.parent_required(path)?;
        nix::unistd::unlinkat(&dir, name.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir)
            .with_context(|| format!("remove {path}"))?;
        self.mark_dirty(path, &dir);
        Ok(())
    }

    pub fn readlink(&self, path: &str) -> anyhow::Result<String> {
        let (dir, name) = self.parent_required(path)?;
        let t = nix::fcntl::readlinkat(&dir, name.as_str())
            .with_context(|| format!("readlink {path}"))?;
        Ok(t.to_string_lossy().into_owned())
    }

    /// Creates or atomically replaces a symlink (temp link, then rename).
    pub fn symlink(&self, path: &str, target: &str) -> anyhow::Result<()> {
        let (dir, name) = self.parent_required(path)?;
        let tmp = format!(".{name}.ballast-{}.tmp", random_suffix());
        nix::unistd::symlinkat(target, &dir, tmp.as_str())
            .with_context(|| format!("create symlink for {path}"))?;
        if let Err(e) = nix::fcntl::renameat(&dir, tmp.as_str(), &dir, name.as_str()) {
            let _ =
                nix::unistd::unlinkat(&dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
            return Err(e).with_context(|| format!("rename symlink into {path}"));
        }
        self.mark_dirty(path, &dir);
        Ok(())
    }

    /// The uid of a user (`group == false`) or gid of a group, on this host:
    /// through NSS for `/`, from ROOT/etc/passwd or ROOT/etc/group in a sandbox.
    pub fn lookup_id(&self, name: &str, group: bool) -> anyhow::Result<u32> {
        let key = (group, name.to_owned());
        if self
            .assumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key)
        {
            let cached = self
                .names
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .copied()
                .flatten();
            return Ok(cached.unwrap_or(PENDING_ID));
        }
        if let Some(v) = self
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return v.with_context(|| {
                format!(
                    "{} {name} does not exist",
                    if group { "group" } else { "user" }
                )
            });
        }
        let found = if self.is_system() {
            if group {
                nix::unistd::Group::from_name(name)
                    .context("look up group")?
                    .map(|g| g.gid.as_raw())
            } else {
                nix::unistd::User::from_name(name)
                    .context("look up user")?
                    .map(|u| u.uid.as_raw())
            }
        } else if group {
            self.groups()?
                .into_iter()
                .find(|g| g.name == name)
                .map(|g| g.gid)
        } else {
            self.passwd()?
                .into_iter()
                .find(|e| e.name == name)
                .map(|e| e.uid)
        };
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, found);
        found.with_context(|| {
            format!(
                "{} {name} does not exist on this host",
                if group { "group" } else { "user" }
            )
        })
    }
}

/// One entry of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// One entry of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Parses passwd lines (`name:x:uid:gid:gecos:home:shell`), skipping malformed ones.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    let entry = |line: &str| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0].into(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].into(),
            shell: f[6].into(),
        })
    };
    text.lines().filter_map(entry).collect()
}

/// Parses group lines (`name:x:gid:member,member`), skipping malformed ones.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    let entry = |line: &str| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        let members = f[3]
            .split(',')
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect();
        Some(GroupEntry {
            name: f[0].into(),
            gid: f[2].parse().ok()?,
            members,
        })
    };
    text.lines().filter_map(entry).collect()
}

impl Host {
    /// The local user database (`ROOT/etc/passwd`), as useradd maintains it.
    pub fn passwd(&self) -> anyhow::Result<Vec<PasswdEntry>> {
        Ok(parse_passwd(&String::from_utf8_lossy(
            &self.read_file("/etc/passwd")?,
        )))
    }

    /// The local group database (`ROOT/etc/group`).
    pub fn groups(&self) -> anyhow::Result<Vec<GroupEntry>> {
        Ok(parse_group(&String::from_utf8_lossy(
            &self.read_file("/etc/group")?,
        )))
    }

    /// In a dry run: a user (`group == false`) or group this run would create,
    /// so that what depends on it reports its changes rather than failing.
    pub fn assume_created(&self, name: &str, group: bool) {
        self.assumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((group, name.to_owned()));
    }

    /// In a dry run: a directory (and its ancestors) this run would create.
    pub fn assume_dir(&self, path: &str) {
        let mut dirs = self.assumed_dirs.lock().unwrap_or_else(|p| p.into_inner());
        let mut cur = path;
        while !cur.is_empty() {
            dirs.insert(cur.to_owned());
            cur = cur.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        }
    }

    /// Fails unless the parent directory of `path` exists (or, in a dry run,
    /// would have been created by now): a file cannot be created without it.
    pub fn require_parent(&self, path: &str) -> anyhow::Result<()> {
        let parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        if parent.is_empty()
            || self
                .assumed_dirs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(parent)
        {
            return Ok(());
        }
        match self.lstat(parent)? {
            Some(m) if m.kind == Kind::Dir => Ok(()),
            Some(m) => bail!(
                "{parent} is {}, not a directory, on the way to {path}",
                m.kind
            ),
            None => bail!(
                "parent directory {parent} of {path} does not exist (manage it with a directories entry)"
            ),
        }
    }

    /// Forgets cached name lookups (after users or groups changed).
    pub fn forget_names(&self) {
        self.names.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Runs a system command with a C locale; an error carries its stderr.
    /// `root_flag` adds `--root ROOT` for tools that support it when the host
    /// is a sandbox (useradd, groupadd and friends).
    pub fn command(&self, program: &str, args: &[&str], root_flag: bool) -> anyhow::Result<String> {
        let mut cmd = std::process::Command::new(program);
        if root_flag && !self.is_system() {
            cmd.arg("--root").arg(&self.root);
        }
        cmd.args(args)
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null());
        let out = cmd.output().with_context(|| format!("run {program}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = last[last.len().saturating_sub(3)..].join("; ");
            bail!(
                "{program} {} failed ({}): {tail}",
                args.join(" "),
                out.status
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Like [`Host::command`] but returns the exit code and stdout without
    /// treating a non-zero exit as an error (for queries like `systemctl is-active`).
    pub fn query(&self, program: &str, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let out = std::process::Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("run {program}"))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        ))
    }
}
