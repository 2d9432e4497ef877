//! One etcd watch as a task: reconnects with jittered backoff to the
//! current member, resumes from the revision after the last one delivered,
//! and ends with `Relist` when etcd compacted that history. It keeps its
//! [`Progress`] (how far it has delivered) for the watch-lag figure.

use super::{BACKOFF_MIN, Backoff, Members, WATCH_LAG_WAIT, key_str, prefix_end};
use crate::store::{Change, StoreError, WatchEvent, WatchLag};
use etcd_client::{EventType, WatchOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;
use tokio::sync::mpsc;

/// How far one watch has delivered: every change under its prefix up to
/// `through` has been handed to the watcher. Changes advance it, and so do
/// etcd's progress notifications (asked for through `poke`), which say
/// that nothing more up to their revision is coming.
#[derive(Debug, Default)]
pub(super) struct Progress {
    through: AtomicU64,
    poke: tokio::sync::Notify,
}

impl Progress {
    pub(super) fn starting_at(next: u64) -> Progress {
        Progress {
            through: AtomicU64::new(next.saturating_sub(1)),
            poke: tokio::sync::Notify::new(),
        }
    }

    pub(super) fn through(&self) -> u64 {
        self.through.load(Ordering::SeqCst)
    }

    fn advance(&self, revision: u64) {
        self.through.fetch_max(revision, Ordering::SeqCst);
    }

    /// Asks the watch to request a progress notification (once, however
    /// often it is asked before it gets to it).
    pub(super) fn poke(&self) {
        self.poke.notify_one();
    }
}

/// The progress of every watch a store made, and the last lag measured.
pub(super) struct Lag {
    watches: Mutex<Vec<Weak<Progress>>>,
    /// When the live watches were last confirmed current, and the last
    /// lag measured in revisions.
    last: Mutex<(Instant, u64)>,
}

impl Default for Lag {
    fn default() -> Lag {
        Lag {
            watches: Mutex::default(),
            last: Mutex::new((Instant::now(), 0)),
        }
    }
}

impl Lag {
    /// The progress of a new watch starting at revision `next`.
    pub(super) fn track(&self, next: u64) -> Arc<Progress> {
        let progress = Arc::new(Progress::starting_at(next));
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        watches.retain(|w| w.strong_count() > 0);
        watches.push(Arc::downgrade(&progress));
        progress
    }

    /// The newest revision (`head`, a linearizable read), compared with
    /// each live watch's progress; those behind are asked for a progress
    /// notification and waited for up to [`WATCH_LAG_WAIT`]. When the
    /// cluster cannot be read, the last lag measured stands and the seconds
    /// run on. `None` without a live watch.
    pub(super) fn measure(
        &self,
        head: impl FnOnce() -> Result<u64, StoreError>,
    ) -> Option<WatchLag> {
        let live: Vec<Arc<Progress>> = {
            let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
            watches.retain(|w| w.strong_count() > 0);
            watches.iter().filter_map(Weak::upgrade).collect()
        };
        if live.is_empty() {
            return None;
        }
        let behind = |head: u64| {
            live.iter()
                .map(|p| head.saturating_sub(p.through()))
                .max()
                .unwrap_or(0)
        };
        let measured = head().map(|head| {
            live.iter()
                .filter(|p| p.through() < head)
                .for_each(|p| p.poke());
            let deadline = Instant::now() + WATCH_LAG_WAIT;
            let mut lag = behind(head);
            while lag > 0 && Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
                lag = behind(head);
            }
            lag
        });
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match &measured {
            Ok(0) => *last = (Instant::now(), 0),
            Ok(lag) => last.1 = *lag,
            Err(e) => tracing::warn!(error = %e, "watch lag: could not read the newest revision"),
        }
        let current = matches!(measured, Ok(0));
        Some(WatchLag {
            revisions: last.1,
            seconds: if current {
                0.0
            } else {
                last.0.elapsed().as_secs_f64()
            },
        })
    }
}

/// One watch: reconnects until the watcher is dropped or history is gone.
pub(super) struct WatchTask {
    pub(super) members: Arc<Members>,
    pub(super) key: Vec<u8>,
    pub(super) strip: usize,
    /// The next revision to deliver.
    pub(super) next: u64,
    pub(super) endpoints: String,
    pub(super) progress: Arc<Progress>,
}

enum Outcome {
    /// The watcher is gone, or told to relist: stop.
    Stop,
    /// The stream broke: connect again from `next`.
    Reconnect,
}

impl WatchTask {
    pub(super) async fn run(mut self, tx: mpsc::Sender<WatchEvent>) {
        let mut backoff = Backoff(BACKOFF_MIN);
        loop {
            match self.stream(&tx, &mut backoff).await {
                Outcome::Stop => return,
                Outcome::Reconnect => {}
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = backoff.wait() => {}
            }
        }
    }

    /// One etcd watch stream, from `self.next` until it breaks.
    async fn stream(&mut self, tx: &mpsc::Sender<WatchEvent>, backoff: &mut Backoff) -> Outcome {
        let opts = WatchOptions::new()
            .with_range(prefix_end(&self.key))
            .with_start_revision(self.next as i64);
        let (member, mut client) = self.members.watch();
        let (mut requests, mut stream) = match client.watch(self.key.clone(), Some(opts)).await {
            Ok(s) => s.split(),
            Err(e) => {
                tracing::warn!(endpoints = %self.endpoints, member, error = %e, next = self.next, "etcd watch failed; reconnecting");
                self.members.failed(member);
                return Outcome::Reconnect;
            }
        };
        loop {
            let msg = tokio::select! {
                _ = tx.closed() => return Outcome::Stop,
                _ = self.progress.poke.notified() => {
                    if let Err(e) = requests.request_progress().await {
                        tracing::warn!(endpoints = %self.endpoints, member, error = %e, next = self.next, "etcd watch progress request failed; reconnecting");
                        self.members.failed(member);
                        return Outcome::Reconnect;
                    }
                    continue;
                }
                m = stream.message() => m,
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) => {
                    tracing::warn!(endpoints = %self.endpoints, member, next = self.next, "etcd watch ended; reconnecting");
                    self.members.failed(member);
                    return Outcome::Reconnect;
                }
                Err(e) => {
                    tracing::warn!(endpoints = %self.endpoints, member, error = %e, next = self.next, "etcd watch broke; reconnecting");
                    self.members.failed(member);
                    return Outcome::Reconnect;
                }
            };
            if resp.compact_revision() > 0 {
                tracing::info!(
                    next = self.next,
                    compacted = resp.compact_revision(),
                    "etcd compacted the watched history; relist"
                );
                let _ = tx.send(WatchEvent::Relist).await;
                return Outcome::Stop;
            }
            if resp.canceled() {
                tracing::warn!(endpoints = %self.endpoints, member, reason = resp.cancel_reason(), "etcd canceled the watch; reconnecting");
                self.members.failed(member);
                return Outcome::Reconnect;
            }
            if resp.created() {
                *backoff = Backoff(BACKOFF_MIN);
            } else if resp.events().is_empty() {
                // A progress notification: nothing up to its revision is
                // still to come. (etcd before 3.4.26 may send it ahead of
                // events in flight: the lag then reads low for a moment.)
                if let Some(h) = resp.header() {
                    self.progress.advance(h.revision() as u64);
                }
                continue;
            }
            // Group the events by revision: one transaction, one event.
            let mut current: Option<(u64, Vec<Change>)> = None;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let rev = kv.mod_revision() as u64;
                if rev < self.next {
                    continue;
                }
                let key = match key_str(self.strip, kv.key()) {
                    Ok(k) => k,
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping a watched key");
                        continue;
                    }
                };
                let change = Change {
                    key,
                    value: match ev.event_type() {
                        EventType::Put => Some(kv.value().to_vec()),
                        EventType::Delete => None,
                    },
                };
                match &mut current {
                    Some((r, changes)) if *r == rev => changes.push(change),
                    _ => {
                        if let Some((revision, changes)) = current.take()
                            && !self.deliver(tx, revision, changes).await
                        {
                            return Outcome::Stop;
                        }
                        current = Some((rev, vec![change]));
                    }
                }
            }
            if let Some((revision, changes)) = current
                && !self.deliver(tx, revision, changes).await
            {
                return Outcome::Stop;
            }
        }
    }

    async fn deliver(
        &mut self,
        tx: &mpsc::Sender<WatchEvent>,
        revision: u64,
        changes: Vec<Change>,
    ) -> bool {
        self.next = revision + 1;
        let sent = tx
            .send(WatchEvent::Changes { revision, changes })
            .await
            .is_ok();
        self.progress.advance(revision);
        sent
    }
}
