//! The only module that touches the operating system for the engine: files,
//! directories, symlinks, ownership, and name lookups.
//!
//! Invariant: no symlink is ever followed on the way to a managed path. Every
//! path is walked component by component from the root's file descriptor with
//! `O_NOFOLLOW | O_DIRECTORY`, and every operation is relative to the parent's
//! descriptor (`*at` calls). With `--root DIR`, nothing outside DIR is touched.
//!
//! Invariant: an existing regular file is never chowned or chmodded in place.
//! Content, owner and mode are checked through one descriptor, and a file
//! whose owner or mode differ is replaced whole by a new file that the agent
//! created (see `host_stage.rs`), so no other name of the old inode (a hard
//! link) and no descriptor someone else holds on it gains an owner or mode.

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

#[path = "host_stage.rs"]
mod stage;
pub use stage::{Staged, is_temp_name, raise_nofile_limit};
#[path = "host_sys.rs"]
mod sys;
pub use sys::{GroupEntry, PasswdEntry, parse_group, parse_passwd};

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
    /// Which object this is (device, inode): what was checked is what is changed.
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
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
    dirs: Mutex<DirCache>,
    /// Directories whose entries changed and still need an fsync, with their device.
    dirty: Mutex<HashMap<String, u64>>,
    /// Directories already cleared of orphaned temp files this run.
    scanned: Mutex<HashSet<String>>,
    /// Temp files this process created and has not renamed or removed yet:
    /// (directory, name). Never taken for orphans.
    live: Mutex<HashSet<(String, String)>>,
    /// When this run started: only temp files older than this are orphans.
    run_started: Mutex<SystemTime>,
    /// Staged temp files whose descriptor is still open (at most [`HELD_FDS`]).
    held: Arc<AtomicUsize>,
    /// The backup index, loaded once per run (see [`crate::backup`]).
    pub(crate) backups: Mutex<Option<crate::backup::Index>>,
}

/// Directory descriptors kept open at once (least recently used are closed
/// first), so a run holds a bounded number of descriptors whatever the
/// number of directories and files.
pub const DIR_CACHE: usize = 128;

/// Staged files that keep their descriptor until commit (to fsync each
/// alone); beyond this a commit makes them durable with one `syncfs` per
/// filesystem instead.
pub const HELD_FDS: usize = 16;

#[derive(Default)]
struct DirCache {
    map: HashMap<String, (Arc<OwnedFd>, u64)>,
    tick: u64,
}

impl DirCache {
    fn get(&mut self, key: &str) -> Option<Arc<OwnedFd>> {
        self.tick += 1;
        let now = self.tick;
        self.map.get_mut(key).map(|(fd, used)| {
            *used = now;
            fd.clone()
        })
    }

    fn insert(&mut self, key: String, fd: Arc<OwnedFd>) {
        if self.map.len() >= DIR_CACHE && !self.map.contains_key(&key) {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.map.remove(&k);
            }
        }
        self.tick += 1;
        self.map.insert(key, (fd, self.tick));
    }
}

/// Reads an open file to its end, refusing more than [`MAX_READ`] bytes.
fn read_capped(fd: OwnedFd, path: &str) -> anyhow::Result<Vec<u8>> {
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn split(path: &str) -> (Vec<&str>, &str) {
    let mut parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let last = parts.pop().unwrap_or("");
    (parts, last)
}

/// The directory part of `path` as a cache key (`/` for the root).
fn parent_key(path: &str) -> String {
    let (dirs, _) = split(path);
    format!("/{}", dirs.join("/"))
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
        dev: st.st_dev,
        ino: st.st_ino,
        nlink: st.st_nlink,
    }
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
            dirs: Mutex::new(DirCache::default()),
            dirty: Mutex::new(HashMap::new()),
            scanned: Mutex::new(HashSet::new()),
            live: Mutex::new(HashSet::new()),
            run_started: Mutex::new(SystemTime::now()),
            held: Arc::new(AtomicUsize::new(0)),
            backups: Mutex::new(None),
        }
    }

    /// Starts a run: forgets directory descriptors, name lookups and the
    /// backup index from earlier runs (the host may have changed in between).
    pub fn begin_run(&self) {
        lock(&self.dirs).map.clear();
        lock(&self.scanned).clear();
        lock(&self.assumed).clear();
        *lock(&self.backups) = None;
        *lock(&self.run_started) = SystemTime::now();
        self.forget_names();
    }

    /// Ends a run: fsyncs every directory whose entries changed (or, when
    /// many did, syncs each filesystem once). Each write was already atomic
    /// (a crash leaves old or new content); this makes the renames durable
    /// once per directory instead of once per file.
    pub fn sync_dirs(&self) -> anyhow::Result<()> {
        let dirty: Vec<(String, u64)> = lock(&self.dirty).drain().collect();
        if dirty.len() <= HELD_FDS {
            for (path, _) in dirty {
                if let Some(fd) = self.open_dir(&path, &path)? {
                    nix::unistd::fsync(&fd).with_context(|| format!("fsync directory {path}"))?;
                }
            }
            return Ok(());
        }
        let mut devices: HashMap<u64, String> = HashMap::new();
        for (path, dev) in dirty {
            devices.entry(dev).or_insert(path);
        }
        for (_, path) in devices {
            if let Some(fd) = self.open_dir(&path, &path)? {
                nix::unistd::syncfs(&fd)
                    .with_context(|| format!("syncfs the filesystem of {path}"))?;
            }
        }
        Ok(())
    }

    fn mark_dirty(&self, path: &str, dir: &OwnedFd) {
        self.mark_dir_dirty(&parent_key(path), dir);
    }

    fn mark_dir_dirty(&self, key: &str, dir: &OwnedFd) {
        let mut dirty = lock(&self.dirty);
        if !dirty.contains_key(key) {
            let dev = nix::sys::stat::fstat(dir).map(|st| st.st_dev).unwrap_or(0);
            dirty.insert(key.to_owned(), dev);
        }
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

    /// Opens the directory `key` (`/a/b`) without following symlinks (kept
    /// in a bounded cache for the run). `Ok(None)` when a component does not
    /// exist. The first time a run opens a directory, orphaned temp files of
    /// the agent in it are removed (see [`Host::remove_orphans`]).
    fn open_dir(&self, key: &str, for_path: &str) -> anyhow::Result<Option<Arc<OwnedFd>>> {
        if let Some(fd) = lock(&self.dirs).get(key) {
            return Ok(Some(fd));
        }
        let mut fd: Option<OwnedFd> = None;
        let mut walked = String::new();
        for d in key.split('/').filter(|s| !s.is_empty()) {
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
                        bail!(
                            "{walked} is a symlink; refusing to follow it on the way to {for_path}"
                        );
                    }
                    bail!("{walked} is not a directory, on the way to {for_path}");
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
        self.remove_orphans(key, &fd);
        lock(&self.dirs).insert(key.to_owned(), fd.clone());
        Ok(Some(fd))
    }

    /// Opens the parent directory of `path` without following symlinks.
    /// `Ok(None)` when a parent component does not exist.
    fn parent(&self, path: &str) -> anyhow::Result<Option<(Arc<OwnedFd>, String)>> {
        let (_, last) = split(path);
        if last.is_empty() {
            bail!("{path}: not a path below the root");
        }
        Ok(self
            .open_dir(&parent_key(path), path)?
            .map(|fd| (fd, last.to_owned())))
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
        read_capped(fd, path)
    }

    /// What is at `path` and, for a regular file whose size `read_if`
    /// accepts, its content, both through one descriptor opened without
    /// following symlinks: the metadata and the content are of the same file.
    pub fn observe_file(
        &self,
        path: &str,
        read_if: impl Fn(u64) -> bool,
    ) -> anyhow::Result<Option<(Meta, Option<Vec<u8>>)>> {
        let Some(seen) = self.lstat(path)? else {
            return Ok(None);
        };
        if seen.kind != Kind::File {
            // Never opened: a device or FIFO could react to an open.
            return Ok(Some((seen, None)));
        }
        let fd = self.open_same(path, &seen)?;
        let meta = meta_of(&nix::sys::stat::fstat(&fd).with_context(|| format!("stat {path}"))?);
        let content = match read_if(meta.size) {
            true => Some(read_capped(fd, path)?),
            false => None,
        };
        Ok(Some((meta, content)))
    }

    /// Opens the regular file at `path` (no symlink followed) and checks that
    /// it is the object `seen` describes (same device and inode).
    pub(crate) fn open_same(&self, path: &str, seen: &Meta) -> anyhow::Result<OwnedFd> {
        let (dir, name) = self.parent_required(path)?;
        let fd = nix::fcntl::openat(
            &dir,
            name.as_str(),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .with_context(|| format!("open {path}"))?;
        let now = meta_of(&nix::sys::stat::fstat(&fd).with_context(|| format!("stat {path}"))?);
        if now.kind != Kind::File || (now.dev, now.ino) != (seen.dev, seen.ino) {
            bail!("{path} changed while it was being checked; it is checked again next run");
        }
        Ok(fd)
    }

    /// Whether the directory at `path`, still the object `seen` describes,
    /// has no entries (opened without following symlinks).
    pub fn dir_is_empty(&self, path: &str, seen: &Meta) -> anyhow::Result<bool> {
        let (dir, name) = self.parent_required(path)?;
        let fd = nix::fcntl::openat(
            &dir,
            name.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("open directory {path}"))?;
        let now = meta_of(&nix::sys::stat::fstat(&fd).with_context(|| format!("stat {path}"))?);
        if (now.dev, now.ino) != (seen.dev, seen.ino) {
            bail!("{path} changed while it was being checked; it is checked again next run");
        }
        let mut entries = nix::dir::Dir::from_fd(fd).with_context(|| format!("list {path}"))?;
        for e in entries.iter() {
            let e = e.with_context(|| format!("list {path}"))?;
            if !matches!(e.file_name().to_bytes(), b"." | b"..") {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, path: &str) -> anyhow::Result<()> {
        let (dir, name) = self.parent_required(path)?;
        match nix::unistd::unlinkat(&dir, name.as_str(), nix::unistd::UnlinkatFlags::RemoveDir) {
            Ok(()) => {
                // Forget descriptors of the removed directory and below it.
                lock(&self.dirs)
                    .map
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
        let key = parent_key(path);
        let tmp = self.new_temp_name(&key, &name);
        let result = nix::unistd::symlinkat(target, &dir, tmp.as_str())
            .with_context(|| format!("create symlink for {path}"))
            .and_then(|()| {
                nix::fcntl::renameat(&dir, tmp.as_str(), &dir, name.as_str()).map_err(|e| {
                    let _ = nix::unistd::unlinkat(
                        &dir,
                        tmp.as_str(),
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    );
                    anyhow::Error::new(e).context(format!("rename symlink into {path}"))
                })
            });
        lock(&self.live).remove(&(key, tmp));
        result?;
        self.mark_dirty(path, &dir);
        Ok(())
    }
}

#[cfg(test)]
#[path = "host_tests.rs"]
mod tests;
