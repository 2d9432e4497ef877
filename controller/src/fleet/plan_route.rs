//! Plans across controllers, through the store. A plan asked of one
//! controller whose selected nodes may be held by others is stored once as
//! `plans/{id}` (sources, filters, timeout; on the asker's liveness lease,
//! so it vanishes if the asker dies). Every controller follows `plans/`:
//! for a peer's plan it renders the sources for the selected nodes whose
//! plan stream it holds and queues them (`Hub::start_remote`); their answers
//! go, bounded, to `plan-answers/{id}/{node}` on its own lease. The asker
//! follows `plan-answers/{id}/` while it collects, and withdraws the record
//! when the plan ends; each controller then deletes the answers it wrote.
//!
//! Invariants: each key has one writer (the record its asker, an answer the
//! controller holding the node's stream); one task per controller writes
//! all its plan keys in order (`write_answers`), so an answer queued before
//! its plan ended is deleted with the others and none is written after; no
//! stored answer passes [`MAX_ANSWER_BYTES`], no request 1 MiB of answers.
//! On redb (one controller) nothing is written: the asker holds every
//! stream there is.

use super::plan::{Answered, Flight, Target};
use super::{Fleet, Result, keys, revisions, view};
use crate::store::{self, Followed, Op, Store};
use ballast_proto::enums::Outcome;
use ballast_proto::pb;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

/// The most one stored answer takes (a report may take 3 MiB): past it the
/// change texts are left out, then the change set, keeping the verdict.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// The most answers one store request carries (etcd takes 1.5 MiB).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Ended plans remembered, so late answers to them are dropped.
const ENDED_REMEMBERED: usize = 1024;

/// A plan asked of controller `asker`, for its peers (`plans/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PlanRecord {
    pub asker: String,
    pub sources: Vec<(String, String)>,
    pub filters: Vec<String>,
    pub timeout_ms: u64,
}

/// One stored resource of a change set: id, outcome, changes, error.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredItem(String, i32, Vec<String>, String);

/// One node's stored answer (`plan-answers/{id}/{node}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoredAnswer {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    items: Vec<StoredItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unsent: Option<String>,
}

/// What the plan writer does, in order.
#[derive(Debug)]
pub(super) enum Outgoing {
    /// Store a node's answer to a peer's plan.
    Answer {
        id: String,
        node: String,
        answered: Answered,
    },
    /// A peer's plan ended: delete the answers written to it.
    End(String),
    /// This controller's plan ended: delete its record.
    Withdraw(String),
}

fn stored(answered: &Answered) -> StoredAnswer {
    match answered {
        Answered::Changes(items) => StoredAnswer {
            items: items
                .iter()
                .map(|i| StoredItem(i.id.clone(), i.outcome, i.changes.clone(), i.error.clone()))
                .collect(),
            ..Default::default()
        },
        Answered::Refused(r) => StoredAnswer {
            refused: Some(r.clone()),
            ..Default::default()
        },
        Answered::Unsent(r) => StoredAnswer {
            unsent: Some(r.clone()),
            ..Default::default()
        },
    }
}

/// The stored form of an answer, within [`MAX_ANSWER_BYTES`]: first the
/// change texts give way to a note, then the change set to one item; the
/// verdict (changes, failures) stays.
pub(super) fn encode_answer(answered: &Answered) -> Vec<u8> {
    let mut a = stored(answered);
    let bytes = super::to_json(&a);
    if bytes.len() <= MAX_ANSWER_BYTES {
        return bytes;
    }
    let note = format!("changes left out: the answer passed {MAX_ANSWER_BYTES} bytes");
    for item in &mut a.items {
        if !item.2.is_empty() {
            item.2 = vec![note.clone()];
        }
        ballast_proto::limits::truncate(&mut item.3, 1024);
    }
    let bytes = super::to_json(&a);
    if bytes.len() <= MAX_ANSWER_BYTES {
        return bytes;
    }
    let failed = |o: i32| o == i32::from(Outcome::Failed) || o == i32::from(Outcome::Skipped);
    let fails = a.items.iter().any(|i| failed(i.1));
    let n = a.items.len();
    a.items = vec![StoredItem(
        "…".into(),
        i32::from(if fails {
            Outcome::Failed
        } else {
            Outcome::Changed
        }),
        vec![format!(
            "{n} resources; change set left out: the answer passed {MAX_ANSWER_BYTES} bytes"
        )],
        String::new(),
    )];
    super::to_json(&a)
}

pub(super) fn decode_answer(key: &str, bytes: &[u8]) -> Result<Answered> {
    let a: StoredAnswer = super::from_json(key, bytes)?;
    Ok(match (a.refused, a.unsent) {
        (Some(r), _) => Answered::Refused(r),
        (None, Some(r)) => Answered::Unsent(r),
        (None, None) => Answered::Changes(
            a.items
                .into_iter()
                .map(|StoredItem(id, outcome, changes, error)| pb::PlanItem {
                    id,
                    outcome,
                    changes,
                    error,
                })
                .collect(),
        ),
    })
}

impl Fleet {
    /// Waits for a plan's answers, from this controller's streams and,
    /// when the plan is stored, from peers' through the store.
    pub async fn collect_plan(&self, flight: Flight, timeout: Duration) -> pb::PlanResponse {
        let forward = flight.stored.then(|| {
            tokio::spawn(forward_answers(
                self.store.clone(),
                keys::plan_answers(&flight.id),
                flight.tx.clone(),
            ))
        });
        let resp = super::plan::collect(flight, timeout).await;
        if let Some(f) = forward {
            f.abort();
        }
        resp
    }

    /// One followed event of `plans/`: peers' plans begin and end here.
    /// Renders, so it runs on a blocking thread.
    pub(super) fn apply_plans(&self, event: Followed) -> Result<()> {
        let hub = self.plan_hub();
        let id_of = |key: &str| key.strip_prefix(keys::PLANS).map(str::to_owned);
        match event {
            Followed::Reset(listing) => {
                let listed: HashSet<String> = listing
                    .entries
                    .iter()
                    .filter_map(|(k, _)| id_of(k))
                    .collect();
                for id in hub.remote_ids() {
                    if !listed.contains(&id) {
                        hub.end_remote(&id);
                    }
                }
                for (key, entry) in listing.entries {
                    self.serve_plan(&key, &entry.value);
                }
            }
            Followed::Changes { changes, .. } => {
                for c in changes {
                    match (&c.value, id_of(&c.key)) {
                        (Some(v), _) => self.serve_plan(&c.key, v),
                        (None, Some(id)) => hub.end_remote(&id),
                        (None, None) => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Serves a peer's stored plan for the selected nodes whose plan stream
    /// this controller holds. Problems are logged: the asker names the
    /// nodes that did not answer.
    fn serve_plan(&self, key: &str, value: &[u8]) {
        let Some(id) = key.strip_prefix(keys::PLANS) else {
            return;
        };
        let record: PlanRecord = match super::from_json(key, value) {
            Ok(r) => r,
            Err(e) => return tracing::warn!(plan = %id, error = %e, "unreadable plan record"),
        };
        if record.asker == self.id {
            return;
        }
        let targets = match self.held_targets(&record) {
            Ok(t) => t,
            Err(e) => return tracing::warn!(plan = %id, error = %e, "cannot serve a peer's plan"),
        };
        let timeout = Duration::from_millis(record.timeout_ms).min(super::plan::MAX_PLAN_TIMEOUT);
        let nodes = targets.len();
        if self.plan_hub().start_remote(id, targets, timeout) {
            tracing::debug!(plan = %id, asker = %record.asker, nodes, "serving a peer's plan");
        }
    }

    /// The record's sources rendered for its selected nodes whose plan
    /// stream is here.
    fn held_targets(&self, record: &PlanRecord) -> Result<Vec<Target>> {
        let spec = revisions::parse_sources(&record.sources)?;
        let filters = view::parse_filters(&record.filters).map_err(super::FleetError::Invalid)?;
        let inner = self.lock();
        let here = self.plan_hub().streamed(inner.nodes.keys());
        let mut render = revisions::Desired::new(&spec, 0);
        let mut out = Vec::new();
        for name in here {
            let Some(node) = inner.nodes.get(&name) else {
                continue;
            };
            if node.record.revoked
                || !filters.iter().all(|(k, v)| {
                    view::matches_filter(&name, &node.record.labels, &node.facts, k, v)
                })
            {
                continue;
            }
            let d = render.of(&name, &node.record.labels);
            out.push((name, d.document, d.hash));
        }
        Ok(out)
    }
}

/// Sends every answer stored under `prefix` (now and later) to a flight.
async fn forward_answers(
    store: Arc<dyn Store>,
    prefix: String,
    tx: mpsc::UnboundedSender<(String, Answered)>,
) {
    let mut events = std::pin::pin!(store::follow(store, prefix.clone()));
    while let Some(event) = events.next().await {
        let entries: Vec<(String, Vec<u8>)> = match event {
            Followed::Reset(l) => l.entries.into_iter().map(|(k, e)| (k, e.value)).collect(),
            Followed::Changes { changes, .. } => changes
                .into_iter()
                .filter_map(|c| Some((c.key, c.value?)))
                .collect(),
        };
        for (key, value) in entries {
            let Some(node) = key.strip_prefix(&prefix) else {
                continue;
            };
            match decode_answer(&key, &value) {
                Ok(a) => {
                    if tx.send((node.to_owned(), a)).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unreadable plan answer"),
            }
        }
    }
}

#[derive(Default)]
struct Writer {
    /// Plan id → the answer keys written for it.
    written: HashMap<String, Vec<String>>,
    ended: VecDeque<String>,
    ops: Vec<Op>,
    pending: Vec<(String, String)>,
    bytes: usize,
}

impl Writer {
    fn flush(&mut self, store: &dyn Store, ttl: Duration) {
        if self.ops.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.ops);
        let pending = std::mem::take(&mut self.pending);
        self.bytes = 0;
        match store.put_leased(&ops, ttl) {
            Ok(()) => {
                for (id, key) in pending {
                    self.written.entry(id).or_default().push(key);
                }
            }
            Err(e) => {
                tracing::warn!(answers = ops.len(), error = %e, "could not store plan answers")
            }
        }
    }

    fn delete(store: &dyn Store, keys: Vec<String>, ttl: Duration) {
        let ops: Vec<Op> = keys.into_iter().map(Op::Delete).collect();
        for chunk in ops.chunks(super::MAX_TXN_OPS) {
            if let Err(e) = store.put_leased(chunk, ttl) {
                tracing::warn!(error = %e, "could not delete plan keys; they go with the lease");
            }
        }
    }

    fn run(&mut self, store: &dyn Store, batch: Vec<Outgoing>, ttl: Duration) {
        for o in batch {
            match o {
                Outgoing::Answer { id, node, answered } => {
                    if self.ended.contains(&id) {
                        continue;
                    }
                    let value = encode_answer(&answered);
                    if self.ops.len() >= super::MAX_TXN_OPS
                        || self.bytes + value.len() > MAX_BATCH_BYTES
                    {
                        self.flush(store, ttl);
                    }
                    let key = keys::plan_answer(&id, &node);
                    self.bytes += key.len() + value.len();
                    self.ops.push(Op::Put(key.clone(), value));
                    self.pending.push((id, key));
                }
                Outgoing::End(id) => {
                    self.flush(store, ttl);
                    if let Some(keys) = self.written.remove(&id) {
                        Self::delete(store, keys, ttl);
                    }
                    if !self.ended.contains(&id) {
                        if self.ended.len() >= ENDED_REMEMBERED {
                            self.ended.pop_front();
                        }
                        self.ended.push_back(id);
                    }
                }
                Outgoing::Withdraw(id) => {
                    self.flush(store, ttl);
                    Self::delete(store, vec![keys::plan(&id)], ttl);
                }
            }
        }
        self.flush(store, ttl);
    }
}

/// The one task that writes this controller's plan keys, in the order
/// they were queued, batching answers that arrive together.
pub(super) async fn write_answers(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    ttl: Duration,
) {
    let writer = Arc::new(Mutex::new(Writer::default()));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        let (store, writer) = (store.clone(), writer.clone());
        let done = tokio::task::spawn_blocking(move || {
            writer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .run(store.as_ref(), batch, ttl)
        })
        .await;
        if done.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, outcome: Outcome, change: String) -> pb::PlanItem {
        pb::PlanItem {
            id: id.into(),
            outcome: i32::from(outcome),
            changes: vec![change],
            error: String::new(),
        }
    }

    #[test]
    fn a_stored_plan_answer_stays_bounded_and_keeps_its_verdict() {
        let small = Answered::Changes(vec![item("file[/a]", Outcome::Changed, "x".into())]);
        assert_eq!(decode_answer("k", &encode_answer(&small)).unwrap(), small);
        for a in [
            Answered::Refused("bad".into()),
            Answered::Unsent("busy".into()),
        ] {
            assert_eq!(decode_answer("k", &encode_answer(&a)).unwrap(), a);
        }
        // A few large diffs: the texts give way, the items stay.
        let big = Answered::Changes(
            (0..100)
                .map(|i| item(&format!("file[/f{i}]"), Outcome::Changed, "d".repeat(8000)))
                .collect(),
        );
        let bytes = encode_answer(&big);
        assert!(bytes.len() <= MAX_ANSWER_BYTES, "{}", bytes.len());
        let Answered::Changes(items) = decode_answer("k", &bytes).unwrap() else {
            panic!("still a change set");
        };
        assert_eq!(items.len(), 100);
        assert!(items[0].changes[0].starts_with("changes left out"));
        // Very many resources with a failure: one item, still failed.
        let mut many: Vec<pb::PlanItem> = (0..20_000)
            .map(|i| {
                item(
                    &format!("file[/very/long/path/{i:08}]"),
                    Outcome::Changed,
                    "c".into(),
                )
            })
            .collect();
        many.push(item("user[x]", Outcome::Failed, String::new()));
        let bytes = encode_answer(&Answered::Changes(many));
        assert!(bytes.len() <= MAX_ANSWER_BYTES, "{}", bytes.len());
        let Answered::Changes(items) = decode_answer("k", &bytes).unwrap() else {
            panic!("still a change set");
        };
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].outcome, i32::from(Outcome::Failed));
        assert!(
            items[0].changes[0].starts_with("20001 resources"),
            "{items:?}"
        );
    }
}
