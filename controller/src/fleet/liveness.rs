//! Liveness shared among controllers without a store write per heartbeat.
//!
//! Heartbeats stay in the memory of the controller holding the node's
//! stream. Every `period` that controller writes one summary of the nodes it
//! holds (node → last seen, applied revision, failed count, drifted), in
//! chunks of at most [`CHUNK_NODES`] nodes under `controllers/{id}/{n}`, on
//! its store liveness lease (`Store::put_leased`): one write per chunk per
//! period, whatever the number of heartbeats. Peers follow `controllers/`
//! and merge: a node named in a live peer's summary is held, and its last
//! seen is the summary's. When the lease ends (the peer died), its keys
//! vanish and its nodes that nobody else holds are marked lost now: they show
//! `reconnecting` for the grace (see `view::status`). A controller's own
//! start is such a loss for every node (`Fleet::open`). A controller that
//! stops gracefully does not leave its peers waiting for the lease: it
//! withdraws its summary ([`Fleet::withdraw_liveness`]), so its nodes show
//! `reconnecting` at once.

use super::records::{self, ReportSummary};
use super::{Fleet, Result, decode_report, keys};
use crate::store::{Followed, Op};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often a controller rewrites its liveness summary.
pub const DEFAULT_LIVENESS_PERIOD: Duration = Duration::from_secs(5);
/// How long a node whose controller died shows `reconnecting`.
pub const DEFAULT_RECONNECT_GRACE: Duration = Duration::from_secs(60);
/// Most nodes in one summary key: with names of at most 63 bytes an entry
/// is under 110 bytes of JSON, so a chunk stays under 220 KiB, far below
/// etcd's 1.5 MiB request bound.
pub const CHUNK_NODES: usize = 2000;

/// The liveness settings (`liveness_period`, `reconnect_grace`).
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    pub period: Duration,
    pub grace: Duration,
}

impl Default for Liveness {
    fn default() -> Liveness {
        Liveness {
            period: DEFAULT_LIVENESS_PERIOD,
            grace: DEFAULT_RECONNECT_GRACE,
        }
    }
}

impl Liveness {
    /// The summary keys live on a lease of three periods: two summaries may
    /// be late before peers think the controller dead.
    pub(super) fn lease_ttl(&self) -> Duration {
        self.period * 3
    }
}

/// One node in a summary: last seen (ms), applied revision, failed count,
/// drifted (0 or 1). A JSON array, to stay compact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Seen(u64, u64, u64, u8);

impl Seen {
    fn verdict_of(r: Option<&ReportSummary>) -> (u64, u64, u8) {
        r.map_or((0, 0, 0), |r| {
            (r.revision, r.failed_count as u64, u8::from(r.drifted))
        })
    }
}

/// One stored summary chunk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Chunk {
    pub nodes: BTreeMap<String, Seen>,
}

/// A controller's id among its peers: random per process, so a restarted
/// controller never takes over its previous life's keys.
pub(super) fn new_id() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the system's random source works");
    hex::encode(b)
}

impl Fleet {
    pub(super) fn ages(&self) -> super::view::Ages {
        super::view::Ages {
            stale_after_ms: self.stale_after.as_millis() as u64,
            grace_ms: self.liveness.grace.as_millis() as u64,
        }
    }

    /// The summary chunks of the nodes this controller holds now.
    pub(super) fn own_chunks(&self) -> Vec<Chunk> {
        let inner = self.lock();
        let held: Vec<(String, Seen)> = inner
            .nodes
            .values()
            .filter(|n| n.held_here() && !n.record.revoked)
            .map(|n| {
                let (rev, failed, drifted) = Seen::verdict_of(n.report.as_ref());
                let seen = Seen(n.status.last_seen_ms, rev, failed, drifted);
                (n.record.name.clone(), seen)
            })
            .collect();
        held.chunks(CHUNK_NODES)
            .map(|c| Chunk {
                nodes: c.iter().cloned().collect(),
            })
            .collect()
    }

    /// Writes this controller's summary: one write per chunk, and the last
    /// one also deletes the chunks it no longer needs (of the `before` it
    /// wrote last time). Nothing when it held nothing then and now. Returns
    /// how many chunks it wrote.
    pub(super) fn publish_liveness(&self, before: usize) -> Result<usize> {
        // Held through the writes, so none lands after a withdrawal.
        let withdrawn = self
            .liveness_withdrawn
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *withdrawn {
            return Ok(0);
        }
        let chunks = self.own_chunks();
        if chunks.is_empty() && before == 0 {
            return Ok(0);
        }
        let ttl = self.liveness.lease_ttl();
        let stale: Vec<Op> = (chunks.len()..before)
            .map(|n| Op::Delete(keys::controller_chunk(&self.id, n)))
            .collect();
        if chunks.is_empty() {
            self.store.put_leased(&stale, ttl)?;
            return Ok(0);
        }
        let last = chunks.len() - 1;
        for (n, chunk) in chunks.iter().enumerate() {
            let mut ops = vec![Op::Put(
                keys::controller_chunk(&self.id, n),
                super::to_json(chunk),
            )];
            if n == last {
                ops.extend(stale.iter().cloned());
            }
            self.store.put_leased(&ops, ttl)?;
        }
        Ok(chunks.len())
    }

    /// At a graceful stop: deletes this controller's summary and writes it
    /// no more, so peers see its keys vanish now and show its nodes
    /// `reconnecting` at once, not when its liveness lease runs out (a
    /// lease with no keys left, which then expires unnoticed). Returns how
    /// many chunks it deleted.
    pub fn withdraw_liveness(&self) -> Result<usize> {
        let mut withdrawn = self
            .liveness_withdrawn
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *withdrawn = true;
        let mine = format!("{}{}/", keys::CONTROLLERS, self.id);
        let ops: Vec<Op> = self
            .store
            .list(&mine)?
            .into_iter()
            .map(|(key, _)| Op::Delete(key))
            .collect();
        // At most one chunk per `CHUNK_NODES` nodes: far under the bound.
        for batch in ops.chunks(super::MAX_TXN_OPS) {
            self.store.txn(&[], batch)?;
        }
        Ok(ops.len())
    }

    /// One followed event of `controllers/`: peers' chunks in, their nodes'
    /// last seen merged; a chunk gone marks its nodes nobody holds as lost.
    /// Store reads (reports that changed) happen here: a blocking thread.
    pub(super) fn apply_liveness(&self, event: Followed) -> Result<()> {
        let mine = format!("{}{}/", keys::CONTROLLERS, self.id);
        let mut puts: Vec<(String, Chunk)> = Vec::new();
        let mut gone: Vec<String> = Vec::new();
        match event {
            Followed::Reset(listing) => {
                let listed: std::collections::BTreeSet<&String> =
                    listing.entries.iter().map(|(k, _)| k).collect();
                gone.extend(
                    self.lock()
                        .remote
                        .keys()
                        .filter(|k| !listed.contains(k))
                        .cloned(),
                );
                for (key, entry) in &listing.entries {
                    puts.push((key.clone(), super::from_json(key, &entry.value)?));
                }
            }
            Followed::Changes { changes, .. } => {
                for c in changes {
                    match c.value {
                        Some(v) => puts.push((c.key.clone(), super::from_json(&c.key, &v)?)),
                        None => gone.push(c.key),
                    }
                }
            }
        }
        let now = self.now_ms();
        let mut refresh = Vec::new();
        {
            let mut inner = self.lock();
            for (key, chunk) in puts {
                if key.starts_with(&mine) {
                    continue;
                }
                for (name, seen) in &chunk.nodes {
                    if let Some(node) = inner.nodes.get_mut(name) {
                        node.status.last_seen_ms = node.status.last_seen_ms.max(seen.0);
                        if Seen::verdict_of(node.report.as_ref()) != (seen.1, seen.2, seen.3) {
                            refresh.push((name.clone(), node.record.cert_serial.clone()));
                        }
                    }
                }
                inner.remote.insert(key, chunk);
            }
            for key in gone {
                let Some(chunk) = inner.remote.remove(&key) else {
                    continue;
                };
                for name in chunk.nodes.keys() {
                    let elsewhere = inner.remote.values().any(|c| c.nodes.contains_key(name));
                    if let Some(node) = inner.nodes.get_mut(name)
                        && !elsewhere
                        && !node.held_here()
                    {
                        node.lost_ms = now;
                    }
                }
            }
        }
        // A peer took a new report: read it, so the verdict is not stale.
        for (name, serial) in refresh {
            let key = keys::report(&name);
            let Some(entry) = self.store.get(&key)? else {
                continue;
            };
            let summary = records::summarize(&decode_report(&key, &entry.value)?);
            let mut inner = self.lock();
            if let Some(node) = inner.nodes.get_mut(&name)
                && node.record.cert_serial == serial
            {
                node.report = Some(summary);
            }
        }
        Ok(())
    }
}

/// Publishes the summary every period for as long as the fleet lives.
pub(super) async fn publish(fleet: Weak<Fleet>) {
    let period = match fleet.upgrade() {
        Some(f) => f.liveness.period,
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written = 0;
    loop {
        tick.tick().await;
        let Some(f) = fleet.upgrade() else { return };
        let done = tokio::task::spawn_blocking(move || f.publish_liveness(written)).await;
        match done {
            Ok(Ok(n)) => written = n,
            Ok(Err(e)) => tracing::warn!(error = %e, "could not publish liveness; next period"),
            Err(_) => return,
        }
    }
}

/// Keeps `Arc` out of the signature callers see.
pub(super) fn spawn_publisher(fleet: &Arc<Fleet>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(publish(Arc::downgrade(fleet)))
}
