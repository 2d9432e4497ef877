//! Writing through the host: staged (atomic) file writes and their commit,
//! directory creation and metadata, orphaned temp files, and the open-file
//! limit.
//!
//! Invariants: a run holds a bounded number of descriptors whatever the
//! number of files ([`super::DIR_CACHE`] directories, [`super::HELD_FDS`]
//! staged files, one per worker); a temp file's content is durable before it
//! is renamed into place; ownership is set before mode (chown clears set-id
//! bits) on a file only the agent can open; the agent's temp files left by a
//! crash are removed the next time a run opens their directory.
//!
//! Just over 600 lines: staging and its commit share the check-and-change
//! descriptors, and splitting them would widen what must stay private.

use super::{Host, Kind, Meta, lock, meta_of, parent_key};
use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

/// A file written beside its target but not yet renamed into place (see
/// [`Host::stage_file`] and [`Host::commit_all`]). It holds no directory
/// descriptor, and its own descriptor only while few files are staged.
pub struct Staged {
    path: String,
    dir_key: String,
    /// The directory's (device, inode) when the temp file was made there.
    dir_id: (u64, u64),
    tmp: String,
    name: String,
    fd: Option<HeldFd>,
    /// The symlink or empty directory the file takes the place of (`replace: true`).
    replacing: Option<Meta>,
}

impl Staged {
    /// Commits this file in place of the symlink or empty directory `seen`
    /// (see [`Host::commit_durable`]): the two names are exchanged in one
    /// step, and the old object is removed only if it is still `seen` (and
    /// still empty); otherwise it is put back and the commit fails.
    pub fn replacing(mut self, seen: Meta) -> Staged {
        self.replacing = Some(seen);
        self
    }
}

/// A staged file's open descriptor, counted against [`super::HELD_FDS`].
struct HeldFd {
    fd: OwnedFd,
    count: Arc<AtomicUsize>,
}

impl Drop for HeldFd {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether `name` is one of the agent's temp files: `.NAME.ballast-HEX12.tmp`.
pub fn is_temp_name(name: &str) -> bool {
    let Some(inner) = name.strip_prefix('.').and_then(|s| s.strip_suffix(".tmp")) else {
        return false;
    };
    let Some((target, suffix)) = inner.rsplit_once(".ballast-") else {
        return false;
    };
    !target.is_empty()
        && suffix.len() == 12
        && suffix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Raises the soft open-file limit to the hard one (systemd gives services a
/// soft limit of 1024). Staging needs a bounded number of descriptors
/// anyway; this is headroom for everything else. Returns the new soft limit.
pub fn raise_nofile_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("read the open-file limit")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .with_context(|| format!("raise the open-file limit from {soft} to {hard}"))?;
    }
    Ok(hard.max(soft))
}

fn random_suffix() -> String {
    let mut b = [0u8; 6];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

/// chown, then chmod: chown clears set-id bits, so the mode comes last, and a
/// set-id mode is never on a file with the wrong owner.
fn chown_chmod(
    fd: &OwnedFd,
    path: &str,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
) -> anyhow::Result<()> {
    if uid.is_some() || gid.is_some() {
        nix::unistd::fchown(
            fd,
            uid.map(nix::unistd::Uid::from_raw),
            gid.map(nix::unistd::Gid::from_raw),
        )
        .with_context(|| format!("chown {path}"))?;
    }
    if let Some(mode) = mode {
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode))
            .with_context(|| format!("chmod {path}"))?;
    }
    Ok(())
}

impl Host {
    /// A fresh temp name beside `name` in directory `key`, recorded as live
    /// (never taken for an orphan) until committed or discarded.
    pub(super) fn new_temp_name(&self, key: &str, name: &str) -> String {
        let tmp = format!(".{name}.ballast-{}.tmp", random_suffix());
        lock(&self.live).insert((key.to_owned(), tmp.clone()));
        tmp
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
        self.stage_with(path, mode, uid, gid, |f| {
            f.write_all(content)
                .with_context(|| format!("write {path}"))
        })
    }

    /// Stages a copy of the regular file at `path` (which must still be the
    /// object `seen` describes) with a new owner and mode: how an owner or
    /// mode is changed when the content is not managed.
    pub fn stage_copy(
        &self,
        path: &str,
        seen: &Meta,
        mode: u32,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> anyhow::Result<Staged> {
        let mut src = File::from(self.open_same(path, seen)?);
        self.stage_with(path, mode, uid, gid, |f| {
            std::io::copy(&mut src, f)
                .map(|_| ())
                .with_context(|| format!("copy {path}"))
        })
    }

    fn stage_with(
        &self,
        path: &str,
        mode: u32,
        uid: Option<u32>,
        gid: Option<u32>,
        fill: impl FnOnce(&mut File) -> anyhow::Result<()>,
    ) -> anyhow::Result<Staged> {
        let (dir, name) = self.parent_required(path)?;
        let dir_st =
            nix::sys::stat::fstat(&dir).with_context(|| format!("stat the parent of {path}"))?;
        let key = parent_key(path);
        let tmp = self.new_temp_name(&key, &name);
        let created = nix::fcntl::openat(
            &dir,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        );
        let fd = match created {
            Ok(fd) => fd,
            Err(e) => {
                lock(&self.live).remove(&(key, tmp));
                return Err(e).with_context(|| format!("create temp file for {path}"));
            }
        };
        let mut staged = Staged {
            path: path.to_owned(),
            dir_key: key,
            dir_id: (dir_st.st_dev, dir_st.st_ino),
            tmp,
            name,
            fd: None,
            replacing: None,
        };
        let result = (|| -> anyhow::Result<OwnedFd> {
            let mut f = File::from(fd);
            fill(&mut f)?;
            let fd = OwnedFd::from(f);
            chown_chmod(&fd, path, Some(mode), uid, gid)?;
            Ok(fd)
        })();
        match result {
            Ok(fd) => {
                if self.held.fetch_add(1, Ordering::SeqCst) < super::HELD_FDS {
                    staged.fd = Some(HeldFd {
                        fd,
                        count: self.held.clone(),
                    });
                } else {
                    self.held.fetch_sub(1, Ordering::SeqCst);
                }
                Ok(staged)
            }
            Err(e) => {
                let _ = nix::unistd::unlinkat(
                    &dir,
                    staged.tmp.as_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
                lock(&self.live).remove(&(staged.dir_key, staged.tmp));
                Err(e)
            }
        }
    }

    /// The directory a staged file was written in, if it is still the same one.
    fn staged_dir(&self, s: &Staged) -> anyhow::Result<Arc<OwnedFd>> {
        let dir = self
            .open_dir(&s.dir_key, &s.path)?
            .with_context(|| format!("directory {} is gone; {} not changed", s.dir_key, s.path))?;
        let st = nix::sys::stat::fstat(&dir).with_context(|| format!("stat {}", s.dir_key))?;
        if (st.st_dev, st.st_ino) != s.dir_id {
            bail!(
                "directory {} was replaced during the run; {} not changed",
                s.dir_key,
                s.path
            );
        }
        Ok(dir)
    }

    /// Commits one staged file: make it durable, then rename it into place.
    pub fn commit_durable(&self, staged: Staged) -> anyhow::Result<()> {
        let synced = match &staged.fd {
            Some(h) => nix::unistd::fsync(&h.fd).with_context(|| format!("fsync {}", staged.path)),
            None => self.staged_dir(&staged).and_then(|d| {
                nix::unistd::syncfs(&d).with_context(|| format!("syncfs for {}", staged.path))
            }),
        };
        if let Err(e) = synced {
            self.discard(staged);
            return Err(e);
        }
        self.commit(staged)
    }

    /// Makes every staged file durable at once (one `syncfs` per filesystem
    /// instead of one fsync per file), then renames each into place. The
    /// content of every temp file is on disk before any rename, so a crash
    /// still leaves old or new content. Returns one result per staged file,
    /// in order.
    pub fn commit_all(&self, mut staged: Vec<Staged>) -> Vec<anyhow::Result<()>> {
        // A few files, each still open: fsync each rather than whole filesystems.
        if staged.len() <= super::HELD_FDS && staged.iter().all(|s| s.fd.is_some()) {
            return staged.into_iter().map(|s| self.commit_durable(s)).collect();
        }
        for s in &mut staged {
            s.fd = None;
        }
        let started = std::time::Instant::now();
        let mut synced: HashMap<u64, Result<(), String>> = HashMap::new();
        for s in &staged {
            if let std::collections::hash_map::Entry::Vacant(slot) = synced.entry(s.dir_id.0) {
                let r = self
                    .staged_dir(s)
                    .and_then(|d| {
                        nix::unistd::syncfs(&d).with_context(|| {
                            format!("syncfs before renaming {} files", staged.len())
                        })
                    })
                    .map_err(|e| format!("{e:#}"));
                slot.insert(r);
            }
        }
        tracing::debug!(
            files = staged.len(),
            filesystems = synced.len(),
            ms = started.elapsed().as_millis() as u64,
            "syncfs before renames"
        );
        staged
            .into_iter()
            .map(|s| match &synced[&s.dir_id.0] {
                Ok(()) => self.commit(s),
                Err(e) => {
                    let e = anyhow::anyhow!("{e}");
                    self.discard(s);
                    Err(e)
                }
            })
            .collect()
    }

    fn commit(&self, s: Staged) -> anyhow::Result<()> {
        let dir = match self.staged_dir(&s) {
            Ok(d) => d,
            Err(e) => {
                lock(&self.live).remove(&(s.dir_key, s.tmp));
                return Err(e);
            }
        };
        let moved = match &s.replacing {
            Some(seen) => self.exchange_into(&dir, &s, seen),
            None => nix::fcntl::renameat(&dir, s.tmp.as_str(), &dir, s.name.as_str())
                .with_context(|| format!("rename into {}", s.path)),
        };
        if let Err(e) = moved {
            self.discard(s);
            return Err(e);
        }
        self.mark_dir_dirty(&s.dir_key, &dir);
        lock(&self.live).remove(&(s.dir_key, s.tmp));
        Ok(())
    }

    /// Puts a staged file where the symlink or empty directory `seen` is, in
    /// one step: the temp name and the path are exchanged (`renameat2`
    /// `RENAME_EXCHANGE`), so the path never lacks an object; then the old
    /// object, now under the temp name, is removed if it is still the one
    /// observed and (a directory) still empty. If not, the exchange is undone
    /// and the temp name holds the staged file again, for the caller to
    /// discard.
    fn exchange_into(&self, dir: &OwnedFd, s: &Staged, seen: &Meta) -> anyhow::Result<()> {
        use nix::fcntl::{RenameFlags, renameat2};
        let path = &s.path;
        let swap = || {
            renameat2(
                dir,
                s.tmp.as_str(),
                dir,
                s.name.as_str(),
                RenameFlags::RENAME_EXCHANGE,
            )
        };
        match swap() {
            Ok(()) => {}
            // Gone since it was observed: nothing to replace any more.
            Err(Errno::ENOENT) => {
                return nix::fcntl::renameat(dir, s.tmp.as_str(), dir, s.name.as_str())
                    .with_context(|| format!("rename into {path}"));
            }
            Err(e @ (Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP)) => {
                return Err(e).with_context(|| {
                    format!(
                        "replace {} at {path}: its filesystem cannot exchange two names atomically; replace it by hand",
                        seen.kind
                    )
                });
            }
            Err(e) => return Err(e).with_context(|| format!("exchange {path} with the new file")),
        }
        let undo = |why: anyhow::Error| -> anyhow::Result<()> {
            match swap() {
                Ok(()) => Err(why),
                Err(e) => Err(why.context(format!(
                    "and putting it back failed ({e}): {path} now holds the new file, the old one is at {}",
                    s.tmp
                ))),
            }
        };
        let old = match nix::sys::stat::fstatat(dir, s.tmp.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => meta_of(&st),
            Err(e) => return undo(anyhow::Error::new(e).context(format!("stat the old {path}"))),
        };
        if (old.kind, old.dev, old.ino) != (seen.kind, seen.dev, seen.ino) {
            return undo(anyhow::anyhow!(
                "{path} changed while it was being checked; it is checked again next run"
            ));
        }
        let flag = if old.kind == Kind::Dir {
            nix::unistd::UnlinkatFlags::RemoveDir
        } else {
            nix::unistd::UnlinkatFlags::NoRemoveDir
        };
        match nix::unistd::unlinkat(dir, s.tmp.as_str(), flag) {
            Ok(()) => {}
            Err(Errno::ENOTEMPTY | Errno::EEXIST) => {
                return undo(anyhow::anyhow!(
                    "{path} is no longer an empty directory; not replaced"
                ));
            }
            Err(e) => return undo(anyhow::Error::new(e).context(format!("remove the old {path}"))),
        }
        if old.kind == Kind::Dir {
            lock(&self.dirs)
                .map
                .retain(|k, _| k != path && !k.starts_with(&format!("{path}/")));
        }
        Ok(())
    }

    /// Gives up a staged file: its temp file is removed.
    pub fn discard_staged(&self, s: Staged) {
        self.discard(s)
    }

    fn discard(&self, s: Staged) {
        if let Ok(dir) = self.staged_dir(&s) {
            let _ = nix::unistd::unlinkat(
                &dir,
                s.tmp.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        lock(&self.live).remove(&(s.dir_key, s.tmp));
    }

    /// Removes the agent's orphaned temp files (see [`is_temp_name`]) from
    /// directory `key`, once per run: those no thread of this process is
    /// writing and that are older than the run (a crash or a kill left them).
    pub(super) fn remove_orphans(&self, key: &str, dir: &OwnedFd) {
        if !lock(&self.scanned).insert(key.to_owned()) {
            return;
        }
        let started = *lock(&self.run_started);
        let names: Vec<String> = match nix::dir::Dir::openat(
            dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(mut d) => d
                .iter()
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
                .filter(|n| is_temp_name(n))
                .collect(),
            Err(e) => {
                tracing::warn!(dir = key, error = %e, "could not list directory for orphaned temp files");
                return;
            }
        };
        let mut removed = 0usize;
        for name in names {
            if lock(&self.live).contains(&(key.to_owned(), name.clone())) {
                continue;
            }
            let Ok(st) = nix::sys::stat::fstatat(dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            else {
                continue;
            };
            let mtime = UNIX_EPOCH
                + Duration::new(
                    st.st_mtime.max(0) as u64,
                    st.st_mtime_nsec.clamp(0, 999_999_999) as u32,
                );
            // An empty directory under a temp name is what a crash in the
            // middle of replacing one leaves (see `exchange_into`).
            let flag = match meta_of(&st).kind {
                Kind::File | Kind::Symlink => nix::unistd::UnlinkatFlags::NoRemoveDir,
                Kind::Dir => nix::unistd::UnlinkatFlags::RemoveDir,
                Kind::Other => continue,
            };
            if mtime >= started {
                continue;
            }
            if nix::unistd::unlinkat(dir, name.as_str(), flag).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(dir = key, removed, "removed orphaned temp files");
            self.mark_dir_dirty(key, dir);
        }
    }

    /// Sets owner and/or mode of the directory at `path` through one
    /// descriptor (opened without following symlinks). Only directories are
    /// changed in place; a regular file is replaced whole instead (see
    /// [`Host::stage_file`], [`Host::stage_copy`]).
    pub fn set_meta(
        &self,
        path: &str,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> anyhow::Result<()> {
        self.set_dir_meta(path, None, mode, uid, gid)
    }

    /// [`Host::set_meta`], and with `seen`, only if the directory is still the
    /// object that was observed (same device and inode).
    pub fn set_dir_meta(
        &self,
        path: &str,
        seen: Option<&Meta>,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> anyhow::Result<()> {
        let (dir, name) = self.parent_required(path)?;
        let fd = match nix::fcntl::openat(
            &dir,
            name.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOTDIR | Errno::ELOOP) => {
                bail!("{path} is not a directory; refusing to change its owner or mode in place")
            }
            Err(e) => return Err(e).with_context(|| format!("open {path}")),
        };
        if let Some(seen) = seen {
            let now = nix::sys::stat::fstat(&fd).with_context(|| format!("stat {path}"))?;
            if (now.st_dev, now.st_ino) != (seen.dev, seen.ino) {
                bail!("{path} changed while it was being checked; it is checked again next run");
            }
        }
        chown_chmod(&fd, path, mode, uid, gid)
    }

    /// Creates a directory owned by the agent; with `parents`, missing
    /// parents are created too (0755).
    pub fn mkdir(&self, path: &str, mode: u32, parents: bool) -> anyhow::Result<Vec<String>> {
        self.mkdir_owned(path, mode, parents, None, None)
    }

    /// [`Host::mkdir`] with an owner and group, set (before the mode) through
    /// the descriptor of the directory this call created.
    pub fn mkdir_owned(
        &self,
        path: &str,
        mode: u32,
        parents: bool,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> anyhow::Result<Vec<String>> {
        let mut created = Vec::new();
        if parents {
            let (dirs, _) = super::split(path);
            let mut walked = String::new();
            for d in dirs {
                walked.push('/');
                walked.push_str(d);
                if self.lstat(&walked)?.is_none() {
                    self.mkdir_one(&walked, 0o755, None, None)?;
                    created.push(walked.clone());
                }
            }
        }
        self.mkdir_one(path, mode, uid, gid)?;
        Ok(created)
    }

    fn mkdir_one(
        &self,
        path: &str,
        mode: u32,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> anyhow::Result<()> {
        let (dir, name) = self.parent_required(path)?;
        nix::sys::stat::mkdirat(&dir, name.as_str(), Mode::from_bits_truncate(0o700))
            .with_context(|| format!("mkdir {path}"))?;
        let fd = nix::fcntl::openat(
            &dir,
            name.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("open {path}"))?;
        // What was opened must be what this call created, not something put
        // in its place since: only then are owner and mode changed.
        let st = nix::sys::stat::fstat(&fd).with_context(|| format!("stat {path}"))?;
        if st.st_uid != nix::unistd::geteuid().as_raw() {
            bail!("{path} was replaced right after it was created; not changing its owner or mode");
        }
        // mkdir is subject to the umask; set the exact mode, after the owner.
        chown_chmod(&fd, path, Some(mode), uid, gid)?;
        self.mark_dirty(path, &dir);
        Ok(())
    }
}
