//! The only module that knows the storage engine: a small etcd-shaped `Store`
//! trait (get, list by prefix, compare-and-swap transactions, watch) and its
//! two backends, [`RedbStore`] (one machine, the default) and [`EtcdStore`]
//! (several controllers on one etcd cluster).
//!
//! Invariant: a key's version is the store revision of its last modification,
//! and revisions only grow; a watch delivers every committed change under its
//! prefix once, in revision order, or says `Relist`. [`follow`] turns list,
//! watch and relist into one stream for consumers.

mod etcd;
mod redb;

pub use etcd::{
    DEFAULT_PREFIX, EtcdOptions, EtcdStore, EtcdTls, LIST_PAGE_KEYS, MAX_RESPONSE_BYTES,
    MIN_LEADER_TTL, WATCH_LAG_WAIT,
};
pub use redb::{RESERVE_BYTES, RedbStore, WATCH_HISTORY_BYTES, WATCH_HISTORY_COMMITS};

use std::pin::Pin;
use tokio_stream::Stream;

/// A stored value and the store revision of its last modification (> 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub version: u64,
}

/// A precondition of a transaction.
#[derive(Debug, Clone)]
pub enum Compare {
    Absent(String),
    Version(String, u64),
}

#[derive(Debug, Clone)]
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store engine: {0}")]
    Engine(String),
    /// The data dir's filesystem is full: writes fail until space is freed;
    /// reads are still served.
    #[error(
        "no space left on the controller's data dir ({0}); free space there, writes resume by themselves"
    )]
    NoSpace(String),
    /// A request over the store's size bound (etcd: 1.5 MiB per request by
    /// default); nothing was written.
    #[error("store request too large ({0}); nothing was written")]
    TooLarge(String),
    /// The store refuses writes for want of space (etcd's NOSPACE alarm).
    /// The write was not made: one that etcd applied while raising the
    /// alarm is found by reading it back and reported made.
    #[error("the store is full ({0}); nothing was written")]
    Full(String),
}

/// Every key under a prefix, sorted by key, as of one store revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The store revision the listing reflects: watch from `revision + 1`
    /// to miss nothing after it.
    pub revision: u64,
    pub entries: Vec<(String, Entry)>,
}

/// One key's change within a committed revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    /// The new value; `None` when the key was deleted.
    pub value: Option<Vec<u8>>,
}

/// What a watch yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Every change under the prefix committed at `revision`, in the order
    /// the transaction made them. Revisions strictly grow along a watch.
    Changes { revision: u64, changes: Vec<Change> },
    /// The history from the requested revision is gone (etcd compacted it,
    /// or this watcher fell too far behind): re-read the prefix with
    /// [`Store::list_at`] and watch again from its revision + 1. The stream
    /// ends after this.
    Relist,
}

/// How far this process's watches are behind the store ([`Store::watch_lag`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatchLag {
    /// Revisions committed that some live watch has not delivered yet.
    pub revisions: u64,
    /// Seconds since every live watch was last confirmed to have delivered
    /// everything; 0 when they are now.
    pub seconds: f64,
}

/// A live watch: ends after `Relist`, or when the store is dropped.
pub type Watch = Pin<Box<dyn Stream<Item = WatchEvent> + Send>>;

/// The storage engine. Calls block (the redb backend fsyncs, the etcd one
/// waits for a quorum): callers run them on blocking threads
/// (`tokio::task::spawn_blocking`) or at startup.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;
    /// Every key starting with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<(String, Entry)>, StoreError> {
        Ok(self.list_at(prefix)?.entries)
    }
    /// Every key starting with `prefix`, sorted by key, read at one revision.
    fn list_at(&self, prefix: &str) -> Result<Listing, StoreError>;
    /// Applies `ops` atomically iff every compare holds; `Ok(false)` when one
    /// does not (nothing written). `Ok(true)` only once the commit is durable.
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<bool, StoreError>;
    /// Every change under `prefix` committed at `from_revision` or later
    /// (0: from the next commit on). Yields `Relist` at once when that
    /// history is no longer kept.
    fn watch(&self, prefix: &str, from_revision: u64) -> Result<Watch, StoreError>;
    /// Becomes the leader named by `key` (writing `holder` there) unless
    /// another holder has it: `Ok(None)`. On etcd the key lives on a lease of
    /// `ttl`, kept alive (across member failures) while the `Leadership`
    /// lives; it is lost when the lease cannot be renewed within `ttl`.
    fn try_lead(
        &self,
        key: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<Leadership>, StoreError>;

    /// Drops the history older than the newest `keep` revisions (etcd's
    /// compaction, for the whole cluster); the revision compacted to, or 0
    /// when there was nothing to drop. Watches that were behind it are told
    /// to relist. redb keeps no history beyond a bounded window in memory:
    /// nothing to do.
    fn compact(&self, keep: u64) -> Result<u64, StoreError> {
        let _ = keep;
        Ok(0)
    }

    /// Writes `ops` in one request, every `Put` attached to this process's
    /// liveness lease of `ttl` (created on first use, kept alive while the
    /// store lives): on etcd those keys vanish, for every watcher, once the
    /// process stops renewing it (it died). redb serves one process, which
    /// has nobody to share liveness with: nothing is written.
    fn put_leased(&self, ops: &[Op], ttl: std::time::Duration) -> Result<(), StoreError>;

    /// How far this process's live watches are behind the store's newest
    /// revision: each behind is asked to confirm its progress, within a
    /// bounded wait. `None` when there is nothing to measure: no live
    /// watch, or redb, whose watches carry this process's own commits.
    fn watch_lag(&self) -> Option<WatchLag> {
        None
    }
}

/// Leadership of a single-owner job (compaction, token expiry). Every write
/// the job makes carries [`Leadership::fence`]: once another holder has
/// taken the key, those writes are refused, so a deposed leader that has not
/// noticed yet still cannot write.
pub struct Leadership {
    pub key: String,
    /// The key's version when this leadership began.
    pub version: u64,
    held: tokio::sync::watch::Receiver<bool>,
    /// What keeps it: dropping it ends the keep-alive and resigns.
    _guard: Box<dyn std::any::Any + Send + Sync>,
}

impl Leadership {
    fn new(
        key: String,
        version: u64,
        held: tokio::sync::watch::Receiver<bool>,
        guard: Box<dyn std::any::Any + Send + Sync>,
    ) -> Leadership {
        Leadership {
            key,
            version,
            held,
            _guard: guard,
        }
    }

    /// The compare that fences a write to this leadership.
    pub fn fence(&self) -> Compare {
        Compare::Version(self.key.clone(), self.version)
    }

    /// False once the store said (or could not confirm in time) that the
    /// lease is gone. A write is only safe with [`Leadership::fence`].
    pub fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    /// Resolves when leadership is lost.
    pub async fn lost(&mut self) {
        let _ = self.held.wait_for(|held| !held).await;
    }

    /// Gives the leadership up and waits, at most `wait`, until the store
    /// has released it (on etcd: the lease revoked, so the key is gone for
    /// every peer now rather than when the lease would have run out).
    /// Dropping a `Leadership` resigns too, but without waiting: a process
    /// about to exit calls this.
    pub async fn resign(self, wait: std::time::Duration) {
        let Leadership {
            mut held, _guard, ..
        } = self;
        drop(_guard);
        // What keeps the leadership owns the other end, and lets it go
        // once it has released the key.
        let _ = tokio::time::timeout(wait, async { while held.changed().await.is_ok() {} }).await;
    }
}

/// What [`follow`] yields: the whole prefix, then each change after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// Everything under the prefix at one revision: replace what you hold.
    /// Comes first, and again whenever the watch had to relist.
    Reset(Listing),
    /// The changes of one committed revision after the last `Reset`.
    Changes { revision: u64, changes: Vec<Change> },
}

/// Follows a prefix for as long as the stream is held: lists it, watches
/// from the listing's revision + 1, and lists again whenever the watch says
/// `Relist` (or ends), so the consumer never misses a change; it only sees a
/// fresh `Reset`. Failed reads are tried again with backoff (and logged).
/// Runs on the current tokio runtime.
pub fn follow(store: std::sync::Arc<dyn Store>, prefix: String) -> impl Stream<Item = Followed> {
    use tokio_stream::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut delay = std::time::Duration::from_millis(50);
        loop {
            let (s, p) = (store.clone(), prefix.clone());
            let listed = tokio::task::spawn_blocking(move || {
                let listing = s.list_at(&p)?;
                let watch = s.watch(&p, listing.revision + 1)?;
                Ok::<_, StoreError>((listing, watch))
            })
            .await;
            let (listing, mut watch) = match listed {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    tracing::warn!(%prefix, error = %e, "follow: list failed; trying again");
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                    continue;
                }
                Err(_) => return,
            };
            delay = std::time::Duration::from_millis(50);
            if tx.send(Followed::Reset(listing)).await.is_err() {
                return;
            }
            loop {
                let event = tokio::select! {
                    _ = tx.closed() => return,
                    e = watch.next() => e,
                };
                match event {
                    Some(WatchEvent::Changes { revision, changes }) => {
                        if tx
                            .send(Followed::Changes { revision, changes })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Some(WatchEvent::Relist) | None => break,
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
