//! Watches of the redb store, served from memory: a broadcast of each
//! commit, and the last few commits for watchers that start a little behind.

use crate::store::{Change, Watch, WatchEvent};
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

/// Commits kept in memory for watchers that start behind the newest one.
pub const WATCH_HISTORY_COMMITS: usize = 1024;
/// ... and at most this many bytes of their keys and values.
pub const WATCH_HISTORY_BYTES: usize = 16 << 20;

/// One committed transaction, as watchers see it.
#[derive(Debug)]
pub(super) struct Commit {
    pub(super) revision: u64,
    pub(super) changes: Vec<Change>,
    pub(super) bytes: usize,
}

/// What watchers need: the newest revision, recent commits, live commits.
pub(super) struct History {
    /// The newest committed revision.
    pub(super) revision: u64,
    /// Consecutive recent commits, oldest first, ending at `revision`.
    recent: VecDeque<Arc<Commit>>,
    bytes: usize,
    live: broadcast::Sender<Arc<Commit>>,
}

impl History {
    pub(super) fn new(revision: u64) -> History {
        History {
            revision,
            recent: VecDeque::new(),
            bytes: 0,
            live: broadcast::channel(WATCH_HISTORY_COMMITS).0,
        }
    }

    /// A watch of `prefix` from `from_revision` (0: the next commit):
    /// replays kept commits, then live ones; `Relist` when older.
    pub(super) fn watch(&self, prefix: &str, from_revision: u64) -> Watch {
        let from = if from_revision == 0 {
            self.revision + 1
        } else {
            from_revision
        };
        let oldest = self
            .recent
            .front()
            .map_or(self.revision + 1, |c| c.revision);
        let mut replay = VecDeque::new();
        if from < oldest {
            replay.push_back(WatchEvent::Relist);
        } else {
            replay.extend(
                self.recent
                    .iter()
                    .filter(|c| c.revision >= from)
                    .filter_map(|c| event(c, prefix)),
            );
        }
        let done = from < oldest;
        Box::pin(LocalWatch {
            prefix: prefix.to_owned(),
            from,
            replay,
            live: BroadcastStream::new(self.live.subscribe()),
            done,
        })
    }

    /// Makes a commit known to watchers, live and later ones.
    pub(super) fn publish(&mut self, commit: Commit) {
        let commit = Arc::new(commit);
        if self
            .recent
            .back()
            .is_some_and(|c| c.revision + 1 != commit.revision)
        {
            // Not consecutive (cannot happen under the lock): start afresh.
            self.recent.clear();
            self.bytes = 0;
        }
        self.revision = commit.revision;
        self.bytes += commit.bytes;
        self.recent.push_back(commit.clone());
        while self.recent.len() > WATCH_HISTORY_COMMITS || self.bytes > WATCH_HISTORY_BYTES {
            if let Some(old) = self.recent.pop_front() {
                self.bytes -= old.bytes;
            }
        }
        // No receivers is fine: nobody watches.
        let _ = self.live.send(commit);
    }
}

/// The changes of `commit` under `prefix`, if any.
fn event(commit: &Commit, prefix: &str) -> Option<WatchEvent> {
    let changes: Vec<Change> = commit
        .changes
        .iter()
        .filter(|c| c.key.starts_with(prefix))
        .cloned()
        .collect();
    (!changes.is_empty()).then_some(WatchEvent::Changes {
        revision: commit.revision,
        changes,
    })
}

/// A watch of the redb store: recent commits first, then live ones; a
/// watcher that falls more than the broadcast's capacity behind is told to
/// relist.
struct LocalWatch {
    prefix: String,
    from: u64,
    replay: VecDeque<WatchEvent>,
    live: BroadcastStream<Arc<Commit>>,
    done: bool,
}

impl Stream for LocalWatch {
    type Item = WatchEvent;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<WatchEvent>> {
        let this = &mut *self;
        if let Some(e) = this.replay.pop_front() {
            return Poll::Ready(Some(e));
        }
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match std::pin::Pin::new(&mut this.live).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(_)))) => {
                    this.done = true;
                    return Poll::Ready(Some(WatchEvent::Relist));
                }
                Poll::Ready(Some(Ok(c))) if c.revision >= this.from => {
                    if let Some(e) = event(&c, &this.prefix) {
                        return Poll::Ready(Some(e));
                    }
                }
                Poll::Ready(Some(Ok(_))) => {}
            }
        }
    }
}
