//! The redb backend of [`Store`]: one file in the data dir, one controller.
//! Watches are served from memory: a broadcast of each commit, and the last
//! few commits for watchers that start a little behind.
//!
//! Over 600 lines only with its tests (the code is under 500).

mod watch;

pub use watch::{WATCH_HISTORY_BYTES, WATCH_HISTORY_COMMITS};

use super::{Change, Compare, Entry, Leadership, Listing, Op, Store, StoreError, Watch};
use redb::{
    Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};
use watch::{Commit, History};

/// key → (version, value)
const KV: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("kv");
/// "revision" → the store revision counter
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// After a failed reopen, writes try again at most this often.
const REOPEN_EVERY: Duration = Duration::from_millis(500);

/// How an engine error affects the open database.
enum Failure {
    /// Nothing to do with the disk (a bug, corruption): report it.
    Other(String),
    /// An I/O error: redb refuses all further work until reopened.
    Io { no_space: bool, message: String },
    /// A write while only the read-only handle could be opened.
    ReadOnly,
}

fn classify(e: impl Into<redb::Error>) -> Failure {
    match e.into() {
        redb::Error::Io(io) => Failure::Io {
            no_space: io.kind() == std::io::ErrorKind::StorageFull
                || io.raw_os_error() == Some(nix::libc::EDQUOT),
            message: io.to_string(),
        },
        redb::Error::PreviousIo => Failure::Io {
            no_space: false,
            message: "previous I/O error".into(),
        },
        other => Failure::Other(other.to_string()),
    }
}

/// The open database: read-write, or read-only while writes cannot succeed.
enum Handle {
    Writable(Database),
    ReadOnly(ReadOnlyDatabase),
}

struct State {
    handle: Option<Handle>,
    /// Counts reopens, so that threads failing together reopen once.
    generation: u64,
    /// The disk filled up: writes are refused here, before they reach redb,
    /// until there is room for the reserve again.
    no_space: bool,
    last_reopen: Option<Instant>,
}

/// Space kept free for the store in a file beside it (`ballast.redb.reserve`):
/// when the disk fills, deleting it lets the store reopen (which writes) and
/// keep serving reads.
pub const RESERVE_BYTES: u64 = 8 << 20;
/// Free space, beyond the reserve, needed before writes resume.
const RESUME_MARGIN: u64 = 4 << 20;

/// The redb store. When the disk fills it gives up its reserve, reopens,
/// serves reads and refuses writes (`StoreError::NoSpace`) until space is
/// back, then writes again by itself. Other I/O errors reopen it too.
pub struct RedbStore {
    path: PathBuf,
    reserve: PathBuf,
    state: RwLock<State>,
    /// Held across each write and its publication, so that watchers see
    /// commits in revision order (redb serialises writers anyway).
    history: Mutex<History>,
}

fn revision_of(db: &Database) -> Result<u64, Failure> {
    let tx = db.begin_read().map_err(classify)?;
    let meta = tx.open_table(META).map_err(classify)?;
    Ok(meta
        .get("revision")
        .map_err(classify)?
        .map(|v| v.value())
        .unwrap_or(0))
}

fn open_writable(path: &Path) -> Result<Database, Failure> {
    let db = Database::create(path).map_err(classify)?;
    let mut tx = db.begin_write().map_err(classify)?;
    tx.set_quick_repair(true);
    tx.open_table(KV).map_err(classify)?;
    tx.open_table(META).map_err(classify)?;
    tx.commit().map_err(classify)?;
    Ok(db)
}

/// Writes the reserve file in full (real blocks, not a sparse file).
fn make_reserve(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    if std::fs::metadata(path).is_ok_and(|m| m.len() == RESERVE_BYTES) {
        return Ok(());
    }
    let result = (|| {
        let mut f = std::fs::File::create(path)?;
        let block = vec![0u8; 1 << 20];
        for _ in 0..RESERVE_BYTES / block.len() as u64 {
            f.write_all(&block)?;
        }
        f.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Bytes an unprivileged writer may still use on the filesystem of `path`.
fn available(path: &Path) -> u64 {
    let dir = path.parent().unwrap_or(Path::new("."));
    nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0)
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let db = open_writable(path).map_err(|f| match f {
            Failure::Io {
                no_space: true,
                message,
            } => StoreError::NoSpace(format!("{}: {message}", path.display())),
            Failure::Io { message, .. } | Failure::Other(message) => StoreError::Engine(message),
            Failure::ReadOnly => StoreError::Engine("read-only".into()),
        })?;
        let mut reserve = path.as_os_str().to_owned();
        reserve.push(".reserve");
        let reserve = PathBuf::from(reserve);
        let no_space = match make_reserve(&reserve) {
            Ok(()) => false,
            Err(e) => {
                tracing::warn!(path = %reserve.display(), error = %e, "cannot reserve space for the store; writes wait for free space");
                true
            }
        };
        let revision = revision_of(&db).map_err(|f| match f {
            Failure::Io { message, .. } | Failure::Other(message) => StoreError::Engine(message),
            Failure::ReadOnly => StoreError::Engine("read-only".into()),
        })?;
        Ok(RedbStore {
            path: path.to_owned(),
            reserve,
            state: RwLock::new(State {
                handle: Some(Handle::Writable(db)),
                generation: 0,
                no_space,
                last_reopen: None,
            }),
            history: Mutex::new(History::new(revision)),
        })
    }

    fn error(&self, f: &Failure, state: &State) -> StoreError {
        let path = self.path.display();
        match f {
            Failure::Io { no_space, message } if *no_space || state.no_space => {
                StoreError::NoSpace(format!("{path}: {message}"))
            }
            Failure::ReadOnly if state.no_space => {
                StoreError::NoSpace(format!("{path}: read-only until space is freed"))
            }
            Failure::Io { message, .. } => StoreError::Engine(format!("{path}: {message}")),
            Failure::ReadOnly => StoreError::Engine(format!("{path}: the store is read-only")),
            Failure::Other(message) => StoreError::Engine(message.clone()),
        }
    }

    /// Closes the database after an I/O failure and opens it again: read-write
    /// when that works, else read-only. On a full disk the reserve is given
    /// up first, so that reopening (which writes) succeeds. Does nothing when
    /// another thread reopened it since `seen` (a generation).
    fn reopen(&self, seen: u64, failure: Option<&Failure>) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if state.generation != seen {
            return;
        }
        state.generation += 1;
        if let Some(Failure::Io { no_space, message }) = failure {
            tracing::error!(path = %self.path.display(), error = %message, no_space, "store I/O failed; reopening");
            if *no_space {
                state.no_space = true;
            }
        }
        if state.no_space {
            let _ = std::fs::remove_file(&self.reserve);
        }
        state.last_reopen = Some(Instant::now());
        // redb allows one open handle per file: close the old one first.
        state.handle = None;
        match open_writable(&self.path) {
            Ok(db) => {
                state.handle = Some(Handle::Writable(db));
                return;
            }
            Err(Failure::Io { no_space, message }) => {
                state.no_space |= no_space;
                tracing::error!(path = %self.path.display(), error = %message, "reopen store read-write")
            }
            Err(Failure::ReadOnly) => {}
            Err(Failure::Other(e)) => {
                tracing::error!(path = %self.path.display(), error = %e, "reopen store read-write")
            }
        }
        match ReadOnlyDatabase::open(&self.path) {
            Ok(db) => state.handle = Some(Handle::ReadOnly(db)),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "reopen store read-only")
            }
        }
    }

    /// While the disk is full: is there room again? Then the reserve is
    /// taken back and writes may go on.
    fn space_is_back(&self) -> bool {
        if available(&self.path) < RESERVE_BYTES + RESUME_MARGIN {
            return false;
        }
        if let Err(e) = make_reserve(&self.reserve) {
            tracing::warn!(error = %e, "space came back but not enough for the reserve");
            return false;
        }
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if state.no_space {
            state.no_space = false;
            tracing::info!(path = %self.path.display(), "space is back; the store takes writes again");
        }
        true
    }

    /// Runs `f` on the open handle under the shared lock; on an I/O failure
    /// (or no handle) reopens and, when `retry`, runs it once more.
    fn with_handle<T>(
        &self,
        retry: bool,
        f: impl Fn(&Handle) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let mut failure = None;
        for attempt in 0..2 {
            let seen = {
                let state = self.state.read().unwrap_or_else(|p| p.into_inner());
                match state.handle.as_ref().map(&f) {
                    Some(Ok(v)) => return Ok(v),
                    Some(Err(Failure::Other(e))) => return Err(StoreError::Engine(e)),
                    Some(Err(io)) => failure = Some(io),
                    None => {}
                }
                if attempt == 1 || (!retry && failure.is_some()) {
                    let f = failure.take().unwrap_or(Failure::Other(format!(
                        "{}: the store could not be opened",
                        self.path.display()
                    )));
                    let err = self.error(&f, &state);
                    let seen = state.generation;
                    drop(state);
                    if attempt == 0 && matches!(f, Failure::Io { .. }) {
                        self.reopen(seen, Some(&f));
                    }
                    return Err(err);
                }
                state.generation
            };
            self.reopen(seen, failure.as_ref());
        }
        unreachable!("the second attempt returns")
    }

    /// Runs a read; on an I/O failure reopens once and tries again.
    fn read<T>(&self, f: impl Fn(&ReadTransaction) -> Result<T, Failure>) -> Result<T, StoreError> {
        self.with_handle(true, |h| {
            let tx = match h {
                Handle::Writable(db) => db.begin_read(),
                Handle::ReadOnly(db) => db.begin_read(),
            };
            f(&tx.map_err(classify)?)
        })
    }
}

impl Store for RedbStore {
    fn watch(&self, prefix: &str, from_revision: u64) -> Result<Watch, StoreError> {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        Ok(history.watch(prefix, from_revision))
    }

    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.read(|tx| {
            let table = tx.open_table(KV).map_err(classify)?;
            Ok(table.get(key).map_err(classify)?.map(|v| {
                let (version, value) = v.value();
                Entry {
                    value: value.to_vec(),
                    version,
                }
            }))
        })
    }

    fn list_at(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.read(|tx| {
            let meta = tx.open_table(META).map_err(classify)?;
            let revision = meta
                .get("revision")
                .map_err(classify)?
                .map(|v| v.value())
                .unwrap_or(0);
            let table = tx.open_table(KV).map_err(classify)?;
            let mut entries = Vec::new();
            for item in table.range(prefix..).map_err(classify)? {
                let (k, v) = item.map_err(classify)?;
                let key = k.value();
                if !key.starts_with(prefix) {
                    break;
                }
                let (version, value) = v.value();
                entries.push((
                    key.to_owned(),
                    Entry {
                        value: value.to_vec(),
                        version,
                    },
                ));
            }
            Ok(Listing { revision, entries })
        })
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<bool, StoreError> {
        let (no_space, writable, reopen_due, seen) = {
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            (
                state.no_space,
                matches!(state.handle, Some(Handle::Writable(_))),
                state
                    .last_reopen
                    .is_none_or(|t| t.elapsed() >= REOPEN_EVERY),
                state.generation,
            )
        };
        // A full disk: refuse here rather than let redb fail (which would
        // stop reads too), until there is room again.
        if no_space && !self.space_is_back() {
            return Err(StoreError::NoSpace(format!(
                "{}: still full",
                self.path.display()
            )));
        }
        // Read-only or closed after an error: try read-write again, not more
        // often than REOPEN_EVERY.
        if !writable && reopen_due {
            self.reopen(seen, None);
        }
        // A failed write is not retried: the caller hears of it.
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let commit = self.with_handle(false, |h| match h {
            Handle::Writable(db) => write(db, compares, ops),
            Handle::ReadOnly(_) => Err(Failure::ReadOnly),
        })?;
        let Some(commit) = commit else {
            return Ok(false);
        };
        history.publish(commit);
        Ok(true)
    }

    fn try_lead(
        &self,
        key: &str,
        holder: &str,
        _ttl: Duration,
    ) -> Result<Option<Leadership>, StoreError> {
        self.lead(key, holder)
    }

    fn put_leased(&self, _ops: &[Op], _ttl: Duration) -> Result<(), StoreError> {
        // One process: no other controller reads liveness, and a restart
        // must not find its previous life's keys.
        Ok(())
    }
}

impl RedbStore {
    /// One process owns the file, so leadership is always granted: the key
    /// is overwritten, which fences any earlier holder in this process.
    fn lead(&self, key: &str, holder: &str) -> Result<Option<Leadership>, StoreError> {
        self.txn(&[], &[Op::Put(key.to_owned(), holder.as_bytes().to_vec())])?;
        let version = self
            .get(key)?
            .map(|e| e.version)
            .ok_or_else(|| StoreError::Engine(format!("leader key {key} vanished")))?;
        // Held for as long as the value lives: nothing expires in one process.
        let (tx, held) = tokio::sync::watch::channel(true);
        Ok(Some(Leadership::new(
            key.to_owned(),
            version,
            held,
            Box::new(tx),
        )))
    }
}

/// One compare-and-swap write transaction; commits with Durability::Immediate
/// (the default) and quick repair, so a crash needs no long repair and the
/// file can be opened read-only after one.
/// Returns the commit, or `None` when a compare failed (nothing written).
fn write(db: &Database, compares: &[Compare], ops: &[Op]) -> Result<Option<Commit>, Failure> {
    let mut tx = db.begin_write().map_err(classify)?;
    tx.set_quick_repair(true);
    let commit;
    {
        let mut table = tx.open_table(KV).map_err(classify)?;
        for c in compares {
            let holds = match c {
                Compare::Absent(k) => table.get(k.as_str()).map_err(classify)?.is_none(),
                Compare::Version(k, v) => {
                    table
                        .get(k.as_str())
                        .map_err(classify)?
                        .map(|e| e.value().0)
                        == Some(*v)
                }
            };
            if !holds {
                return Ok(None);
            }
        }
        let mut meta = tx.open_table(META).map_err(classify)?;
        let revision = meta
            .get("revision")
            .map_err(classify)?
            .map(|v| v.value())
            .unwrap_or(0)
            + 1;
        meta.insert("revision", revision).map_err(classify)?;
        let mut changes = Vec::with_capacity(ops.len());
        let mut bytes = 0;
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    table
                        .insert(k.as_str(), (revision, v.as_slice()))
                        .map_err(classify)?;
                    bytes += k.len() + v.len();
                    changes.push(Change {
                        key: k.clone(),
                        value: Some(v.clone()),
                    });
                }
                Op::Delete(k) => {
                    // Deleting an absent key changes nothing (as in etcd).
                    if table.remove(k.as_str()).map_err(classify)?.is_some() {
                        bytes += k.len();
                        changes.push(Change {
                            key: k.clone(),
                            value: None,
                        });
                    }
                }
            }
        }
        commit = Commit {
            revision,
            changes,
            bytes,
        };
    }
    tx.commit().map_err(classify)?;
    Ok(Some(commit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::WatchEvent;

    fn store() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        (dir, s)
    }

    fn put(s: &RedbStore, k: &str, v: Vec<u8>) {
        assert!(s.txn(&[], &[Op::Put(k.into(), v)]).unwrap());
    }

    #[tokio::test]
    async fn a_watch_from_before_the_kept_history_is_told_to_relist() {
        use tokio_stream::StreamExt;
        let (_d, s) = store();
        put(&s, "w/first", b"1".to_vec());
        let first = s.get("w/first").unwrap().unwrap().version;
        // Push the first commit out of the kept history by its byte bound.
        let big = vec![0u8; 1 << 20];
        for i in 0..WATCH_HISTORY_BYTES / big.len() + 1 {
            put(&s, &format!("big/{i}"), big.clone());
        }
        let mut w = s.watch("w/", first).unwrap();
        assert_eq!(w.next().await, Some(WatchEvent::Relist));
        assert_eq!(w.next().await, None, "the watch ends after relist");
        // From a revision still kept: replayed, then live.
        let now = s.list_at("w/").unwrap().revision;
        let mut w = s.watch("w/", now).unwrap();
        put(&s, "w/second", b"2".to_vec());
        assert_eq!(
            w.next().await,
            Some(WatchEvent::Changes {
                revision: now + 1,
                changes: vec![Change {
                    key: "w/second".into(),
                    value: Some(b"2".to_vec())
                }]
            })
        );
    }

    #[test]
    fn a_second_leader_fences_the_first() {
        let (_d, s) = store();
        let first = s
            .try_lead("leader", "a", Duration::from_secs(2))
            .unwrap()
            .unwrap();
        assert!(first.is_held());
        assert!(
            s.txn(&[first.fence()], &[Op::Put("job".into(), vec![1])])
                .unwrap()
        );
        let second = s
            .try_lead("leader", "b", Duration::from_secs(2))
            .unwrap()
            .unwrap();
        assert!(
            !s.txn(&[first.fence()], &[Op::Put("job".into(), vec![2])])
                .unwrap()
        );
        assert!(
            s.txn(&[second.fence()], &[Op::Put("job".into(), vec![3])])
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_told_to_relist() {
        use tokio_stream::StreamExt;
        let (_d, s) = store();
        let mut w = s.watch("", 0).unwrap();
        for i in 0..WATCH_HISTORY_COMMITS + 2 {
            put(&s, &format!("k/{i}"), vec![]);
        }
        assert_eq!(w.next().await, Some(WatchEvent::Relist));
        assert_eq!(w.next().await, None);
    }

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            s.txn(&[], &[Op::Put("k".into(), b"v".to_vec())]).unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.get("k").unwrap().unwrap().value, b"v");
    }

    /// A small tmpfs, mounted for one test and unmounted when dropped.
    struct SmallFs(tempfile::TempDir);

    impl SmallFs {
        fn mount(size: &str) -> Option<SmallFs> {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("skipped: mounting a tmpfs needs root");
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "mount a tmpfs on {}", dir.path().display());
            Some(SmallFs(dir))
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    /// Fills the filesystem of `dir` with one file; returns its path.
    fn fill(dir: &Path) -> PathBuf {
        use std::io::Write;
        let path = dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&block[..512]).is_ok() {}
        path
    }

    #[test]
    fn a_full_disk_keeps_reads_and_writes_resume_by_themselves() {
        let Some(fs) = SmallFs::mount("32m") else {
            return;
        };
        let path = fs.0.path().join("s.redb");
        let s = RedbStore::open(&path).unwrap();
        let value = vec![7u8; 16 << 10];
        let mut acked = Vec::new();
        for i in 0..20 {
            let k = format!("k/{i:04}");
            assert!(s.txn(&[], &[Op::Put(k.clone(), value.clone())]).unwrap());
            acked.push(k);
        }
        let filler = fill(fs.0.path());
        let mut err = None;
        for i in 20..2000 {
            let k = format!("k/{i:04}");
            match s.txn(&[], &[Op::Put(k.clone(), value.clone())]) {
                Ok(true) => acked.push(k),
                Ok(false) => unreachable!("no compares"),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let err = err.expect("writes fail once the disk is full");
        assert!(
            matches!(err, StoreError::NoSpace(_)),
            "a full disk is reported as such: {err}"
        );
        assert!(
            err.to_string()
                .starts_with("no space left on the controller's data dir")
        );
        // Reads go on, and see everything acknowledged.
        for _ in 0..3 {
            assert_eq!(s.list("k/").unwrap().len(), acked.len());
            assert_eq!(s.get(&acked[0]).unwrap().unwrap().value, value);
            let again = s.txn(&[], &[Op::Put("x".into(), value.clone())]);
            assert!(matches!(again, Err(StoreError::NoSpace(_))), "{again:?}");
            std::thread::sleep(REOPEN_EVERY);
        }
        // Space is back: writes resume without a restart.
        std::fs::remove_file(filler).unwrap();
        std::thread::sleep(REOPEN_EVERY);
        assert!(
            s.txn(&[], &[Op::Put("after".into(), b"v".to_vec())])
                .unwrap()
        );
        assert_eq!(s.get("after").unwrap().unwrap().value, b"v");
        drop(s);
        let s = RedbStore::open(&path).unwrap();
        for k in &acked {
            assert_eq!(s.get(k).unwrap().unwrap().value, value, "{k} survives");
        }
    }
}
