//! The agent's state dir: the one module that knows its layout, its file
//! modes and how each record is read and written.
//!
//! ```text
//! STATE/                       0700
//!   agent.json  node.pem  ca.pem   0644   enrollment (controller, name, pin), certificates
//!   node.key                       0600   the node's private key (never leaves the node)
//!   desired.json                   0600   the last valid desired state (`cache`)
//!   managed.json                   0600   what the engine created and may remove
//!   pending-restarts.json          0600   restarts owed to services
//!   run.lock  agent.lock           0600   one reconcile at a time; one daemon
//!   backups/  outbox/              0700   `backup`, `outbox` (files 0600)
//! ```
//!
//! Invariants: every file is replaced atomically ([`write_atomic`]: temp
//! file, fsync, rename, directory fsync), so a crash leaves the old record or
//! the new one, never half of one; file names never change (agents upgrade
//! in place).

use anyhow::Context;
use ballast_proto::spec::Kind;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A file of the state dir, with its name on disk and its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFile {
    /// What `enroll` leaves beside the key and certificates ([`AgentConfig`]).
    Config,
    Key,
    Cert,
    Ca,
    /// The last valid desired state (see `cache`).
    Desired,
    /// What the engine created and may therefore remove ([`Managed`]).
    Managed,
    /// Services with a restart owed: a notifier changed and the restart has
    /// not happened yet (kept so a failed run does not lose it).
    PendingRestarts,
}

impl StateFile {
    pub const ALL: [StateFile; 7] = [
        StateFile::Config,
        StateFile::Key,
        StateFile::Cert,
        StateFile::Ca,
        StateFile::Desired,
        StateFile::Managed,
        StateFile::PendingRestarts,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StateFile::Config => "agent.json",
            StateFile::Key => "node.key",
            StateFile::Cert => "node.pem",
            StateFile::Ca => "ca.pem",
            StateFile::Desired => "desired.json",
            StateFile::Managed => "managed.json",
            StateFile::PendingRestarts => "pending-restarts.json",
        }
    }

    /// Public certificates and settings are readable; the key and what the
    /// node was told to do are the agent's alone.
    pub fn mode(self) -> u32 {
        match self {
            StateFile::Config | StateFile::Cert | StateFile::Ca => 0o644,
            StateFile::Key
            | StateFile::Desired
            | StateFile::Managed
            | StateFile::PendingRestarts => 0o600,
        }
    }
}

/// The two locks of the state dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// One reconcile at a time (daemon and `ballast-agent apply`): waits.
    Run,
    /// One daemon per state dir: refuses at once.
    Agent,
}

impl Lock {
    pub fn name(self) -> &'static str {
        match self {
            Lock::Run => "run.lock",
            Lock::Agent => "agent.lock",
        }
    }
}

/// What `enroll` leaves in the state dir, beside the key and certificates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentConfig {
    /// The controllers, comma-separated, in the order they are tried.
    pub controller: String,
    pub name: String,
    pub ca_fingerprint: String,
}

/// The enrolled identity as kept on disk (PEM).
pub struct Enrollment {
    pub config: AgentConfig,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// What the engine created and may therefore remove, kept in the state dir.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Managed {
    pub format: u32,
    /// id → (kind, key). Services are recorded once the agent has run them,
    /// created or not: one that leaves the desired state is stopped and
    /// disabled.
    pub resources: BTreeMap<String, (Kind, String)>,
    /// Services whose unit file the agent wrote where none was: removed
    /// with the service.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub units: BTreeSet<String>,
}

/// A state dir: a path whose layout this module owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir(PathBuf);

impl AsRef<Path> for StateDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl StateDir {
    /// The state dir at `path` (no I/O).
    pub fn new(path: impl Into<PathBuf>) -> StateDir {
        StateDir(path.into())
    }

    /// The state dir at `path`, created (with missing parents) 0700.
    pub fn create(path: impl Into<PathBuf>) -> anyhow::Result<StateDir> {
        let dir = StateDir::new(path);
        create_private_dir(&dir.0)?;
        Ok(dir)
    }

    /// `/var/lib/ballast-agent` for root, `~/.local/state/ballast-agent` otherwise.
    pub fn default_path() -> PathBuf {
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/ballast-agent");
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into()))
                    .join(".local/state")
            });
        base.join("ballast-agent")
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn file(&self, f: StateFile) -> PathBuf {
        self.0.join(f.name())
    }

    /// `backups/` (see `backup`).
    pub fn backups(&self) -> PathBuf {
        self.0.join("backups")
    }

    /// `outbox/` (see `outbox`).
    pub fn outbox(&self) -> PathBuf {
        self.0.join("outbox")
    }

    /// Replaces `f` atomically, with its mode.
    pub fn write(&self, f: StateFile, bytes: &[u8]) -> anyhow::Result<()> {
        write_atomic(&self.file(f), bytes, f.mode())
    }

    /// The content of `f`, or `None` if there is none.
    pub fn read(&self, f: StateFile) -> anyhow::Result<Option<Vec<u8>>> {
        let path = self.file(f);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// Takes `lock`: [`Lock::Run`] waits for the holder, [`Lock::Agent`] refuses.
    pub fn lock(&self, lock: Lock) -> anyhow::Result<Flock<std::fs::File>> {
        let path = self.0.join(lock.name());
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("open lock {}", path.display()))?;
        let arg = match lock {
            Lock::Run => FlockArg::LockExclusive,
            Lock::Agent => FlockArg::LockExclusiveNonblock,
        };
        Flock::lock(file, arg).map_err(|(_, e)| {
            anyhow::anyhow!(
                "lock {}: {e} (is another ballast-agent running with this state dir?)",
                path.display()
            )
        })
    }

    /// The enrolled identity; an error that says to enroll if a file is missing.
    pub fn load_enrollment(&self) -> anyhow::Result<Enrollment> {
        let read = |f: StateFile| {
            let p = self.file(f);
            std::fs::read_to_string(&p).with_context(|| {
                format!(
                    "read {} (has this node enrolled? run `ballast-agent enroll` first)",
                    p.display()
                )
            })
        };
        let config: AgentConfig = serde_json::from_str(&read(StateFile::Config)?)
            .with_context(|| format!("parse {}", self.file(StateFile::Config).display()))?;
        Ok(Enrollment {
            config,
            ca_pem: read(StateFile::Ca)?,
            cert_pem: read(StateFile::Cert)?,
            key_pem: read(StateFile::Key)?,
        })
    }

    /// Keeps an enrollment: the key first, the settings last, so a node with
    /// settings has everything.
    pub fn store_enrollment(&self, e: &Enrollment) -> anyhow::Result<()> {
        self.write(StateFile::Key, e.key_pem.as_bytes())?;
        self.write(StateFile::Cert, e.cert_pem.as_bytes())?;
        self.write(StateFile::Ca, e.ca_pem.as_bytes())?;
        self.write(StateFile::Config, &serde_json::to_vec_pretty(&e.config)?)
    }

    /// The managed record and its bytes as stored (to skip writing it back
    /// unchanged). An unreadable record is logged and taken as empty:
    /// nothing is removed that run.
    pub fn load_managed(&self) -> (Managed, Vec<u8>) {
        match std::fs::read(self.file(StateFile::Managed)) {
            Ok(bytes) => {
                let managed = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "ignoring an unreadable managed record; nothing will be removed this run");
                    Managed::default()
                });
                (managed, bytes)
            }
            Err(_) => (Managed::default(), Vec::new()),
        }
    }

    /// Saves the managed record if it differs from `stored`: a no-change run
    /// does no disk writes. Errors are logged.
    pub fn store_managed(&self, managed: &mut Managed, stored: &[u8]) {
        managed.format = 1;
        let bytes = serde_json::to_vec(&managed).expect("managed record serializes");
        if bytes != stored
            && let Err(e) = self.write(StateFile::Managed, &bytes)
        {
            tracing::error!(error = %format!("{e:#}"), "could not save the managed record");
        }
    }

    /// Restarts owed; none if the record is missing or unreadable.
    pub fn load_pending(&self) -> BTreeSet<String> {
        std::fs::read(self.file(StateFile::PendingRestarts))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Saves the restarts owed. Errors are logged.
    pub fn store_pending(&self, pending: &BTreeSet<String>) {
        let bytes = serde_json::to_vec(pending).expect("pending restarts serialize");
        if let Err(e) = self.write(StateFile::PendingRestarts, &bytes) {
            tracing::error!(error = %format!("{e:#}"), "could not save pending restarts");
        }
    }

    /// Removes orphaned temp files of [`write_atomic`] from the state dir.
    pub fn remove_orphans(&self) {
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name();
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > ORPHAN_AGE);
            if name.to_str().is_some_and(is_temp_name) && old {
                match std::fs::remove_file(e.path()) {
                    Ok(()) => {
                        tracing::info!(file = %e.path().display(), "removed an orphaned temp file")
                    }
                    Err(err) => {
                        tracing::warn!(file = %e.path().display(), error = %err, "could not remove an orphaned temp file")
                    }
                }
            }
        }
    }
}

/// Creates `dir` (and missing parents) 0700.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create directory {}", dir.display()))
}

/// Temp file in the same directory (O_EXCL, `mode`), write, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("file name")?;
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(r)));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("write {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("fsync {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("fsync {}", dir.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Whether `name` is a temp file of [`write_atomic`]: `.NAME.HEX16.tmp`.
fn is_temp_name(name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|s| s.strip_suffix(".tmp"))
        .and_then(|s| s.rsplit_once('.'))
        .is_some_and(|(target, hex)| {
            !target.is_empty()
                && hex.len() == 16
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// Temp files of [`write_atomic`] older than this are orphans: no write
/// takes that long, so a crash or a kill left them.
pub const ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(60);

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
