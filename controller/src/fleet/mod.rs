//! The fleet: revisions, tokens, nodes and their rendered desired state.
//!
//! Invariants:
//! - the store is the truth; memory holds a cache of it plus what is cheap to
//!   lose (heartbeat times), and every write goes to the store before memory;
//! - memory learns of operator state (`meta/current`, `nodes/`, `pending/`)
//!   from the store's watch (`follow`), whoever wrote it; this controller's
//!   own writes apply the same change at once through the same functions,
//!   ordered by store version, so both paths agree;
//! - nothing invalid is stored: sources are parsed and validated, names and
//!   labels checked, reports and facts bounded, before any transaction;
//! - what operators decide about a node (`nodes/`) and what the node reports
//!   (`status/`, `reports/`, `facts/`) are separate keys with separate
//!   writers: no node call ever rewrites an operator's record (see `keys`);
//! - a node's watch channel only ever carries that node's state.
//!
//! Jobs: `keys` (every store key), `records` (stored types, bounded
//! timelines), `enroll` (tokens, reserved names, enrollment), `revisions`
//! (apply, diff, history, rollback), `rollout` (waves, gates, the
//! target revision of each node), `precheck` (templates rendered
//! at apply for nodes whose facts are known), `prune` (what an apply does
//! per node and whether it needs consent to prune), `content` (the content
//! diffs `diff` shows), `nodes` (reports, facts, revoke, label,
//! list, show), `view` (pure status, filters, paging), `clock` (the one
//! source of time: tests move a manual clock instead of sleeping).

mod clock;
mod content;
mod enroll;
mod follow;
mod keys;
mod liveness;
mod nodes;
pub mod plan;
mod plan_route;
mod precheck;
mod prune;
mod records;
mod revisions;
mod rollout;
mod rollout_record;
mod rollout_view;
mod sweep;
#[cfg(test)]
mod tests;
mod view;

use crate::metrics::{MeteredStore, Metrics};
use crate::store::{Compare, Op, Store};
use ballast_proto::pb;
use ballast_proto::spec::{self, Labels, Spec};
pub use clock::Clock;
pub use keys::LEADER as LEADER_KEY;
pub use liveness::{CHUNK_NODES, DEFAULT_LIVENESS_PERIOD, DEFAULT_RECONNECT_GRACE, Liveness};
pub use prune::{describe as describe_changes, describe_bounded, prune_reasons, refusal_message};
use records::{NodeRecord, NodeStatus, PendingRecord, ReportSummary};
pub use records::{RUNS_KEPT, RunPoint};
pub use rollout::{Phase as RolloutPhase, RolloutRecord};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
pub use sweep::{TOKEN_GRACE, sweep_expired_tokens};
use tokio::sync::watch;

/// Errors a caller can act on; `api` maps each variant to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Denied(String),
    /// The apply needs the operator's consent to prune (see `prune`):
    /// nothing was stored; the summary says what it would do.
    #[error("{}", prune::refusal_message(&prune::prune_reasons(.0)))]
    NeedsPrune(Box<pb::DiffResponse>),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<crate::store::StoreError> for FleetError {
    fn from(e: crate::store::StoreError) -> Self {
        FleetError::Internal(anyhow::Error::new(e).context("store"))
    }
}

type Result<T> = std::result::Result<T, FleetError>;

/// Longest token lifetime an operator can ask for.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 86400);
/// Default token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// How long node certificates are valid.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 86400);
/// How long a reserved name stays listed after its last token expired, so a
/// failed bootstrap stays visible for a while, then goes away by itself.
pub const PENDING_GRACE: Duration = Duration::from_secs(86400);
/// Tries of an operator write whose store compare failed: only another
/// controller writing the same record at once can make one fail.
const OPERATOR_TRIES: usize = 5;
/// Most operations in one store transaction the fleet builds (etcd refuses
/// more than 128 by default). Only transactions that need no atomicity are
/// split to fit; the atomic ones are small and fixed: apply (2 ops),
/// enrollment (6), a bootstrap event with its token (2), a report (2).
pub const MAX_TXN_OPS: usize = 100;

/// What a node's watch stream carries.
#[derive(Debug, Clone)]
pub enum Feed {
    State(Arc<pb::DesiredState>),
    /// The node was revoked: end the stream.
    Revoked,
}

struct Node {
    record: NodeRecord,
    /// A lower bound of the store version of `record`: older news is ignored.
    record_version: u64,
    status: NodeStatus,
    desired: Arc<pb::DesiredState>,
    feed: watch::Sender<Feed>,
    report: Option<ReportSummary>,
    facts: serde_json::Value,
    /// When this controller last stored the node's host figures (0: never).
    host_stored_ms: u64,
    /// Serialises this node's own status writes (concurrent reports).
    status_lock: Arc<Mutex<()>>,
    /// When its link was last lost without its doing (its controller died,
    /// or this one started): see `view::status`.
    lost_ms: u64,
}

impl Node {
    fn new(record: NodeRecord, desired: Arc<pb::DesiredState>) -> Node {
        let feed = if record.revoked {
            Feed::Revoked
        } else {
            Feed::State(desired.clone())
        };
        let (tx, _) = watch::channel(feed);
        Node {
            status: NodeStatus {
                cert_serial: record.cert_serial.clone(),
                ..Default::default()
            },
            record,
            record_version: 0,
            desired,
            feed: tx,
            report: None,
            facts: serde_json::Value::Null,
            host_stored_ms: 0,
            status_lock: Arc::new(Mutex::new(())),
            lost_ms: 0,
        }
    }

    /// Whether this controller holds a watch stream of the node.
    fn held_here(&self) -> bool {
        self.feed.receiver_count() > 0
    }
}

struct Current {
    number: u64,
    spec: Arc<Spec>,
    hash: String,
}

struct Inner {
    nodes: BTreeMap<String, Node>,
    pending: BTreeMap<String, PendingRecord>,
    current: Current,
    /// The rollout of the current revision, when its spec has a policy.
    rollout: Option<rollout::Active>,
    /// The nodes the last installed revision pushed, for its apply's answer.
    last_affected: (u64, Vec<String>),
    /// Token hash → when its last refused enrollment was logged.
    refusals: HashMap<String, u64>,
    /// Peers' liveness chunks by key (`controllers/{id}/{n}`), from the watch.
    remote: BTreeMap<String, liveness::Chunk>,
}

impl Inner {
    /// What status reads of one node: held by this controller or a live peer.
    fn view_of<'a>(&'a self, node: &'a Node) -> view::NodeView<'a> {
        let name = &node.record.name;
        view::NodeView {
            record: &node.record,
            last_seen_ms: node.status.last_seen_ms,
            report: node.report.as_ref(),
            desired: &node.desired,
            held: node.held_here() || self.remote.values().any(|c| c.nodes.contains_key(name)),
            lost_ms: node.lost_ms,
            rollout: self.rollout.as_ref(),
        }
    }
}

/// The controller's fleet state over a [`Store`].
pub struct Fleet {
    store: Arc<dyn Store>,
    inner: Mutex<Inner>,
    /// Serialises applies so revision numbers are dense; the store's compare
    /// on `meta/current` still guards against another controller.
    apply_lock: Mutex<()>,
    /// Serialises this controller's writes of operator records (`nodes/`,
    /// `pending/`, `tokens/`), so memory takes them in store order; the
    /// store's version compares still guard against another controller.
    operator_lock: Mutex<()>,
    stale_after: Duration,
    liveness: Liveness,
    /// This controller's id among its peers (random per process).
    id: String,
    /// Held while the liveness summary is written; true once it was
    /// withdrawn at a graceful stop (`liveness::withdraw_liveness`).
    liveness_withdrawn: Mutex<bool>,
    clock: Clock,
    /// This controller's metrics; `store` is metered into them.
    metrics: Arc<Metrics>,
    /// Plan routing: this controller's plan streams and plans in flight.
    plans: Arc<plan::Hub>,
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

fn from_json<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| FleetError::Internal(anyhow::anyhow!("decode stored {key}: {e}")))
}

fn validate_labels(labels: &Labels) -> Result<()> {
    for (k, v) in labels {
        spec::validate::label_key(k).map_err(FleetError::Invalid)?;
        spec::validate::label_value(v).map_err(FleetError::Invalid)?;
    }
    Ok(())
}

fn decode_report(key: &str, bytes: &[u8]) -> Result<pb::RunReport> {
    <pb::RunReport as prost::Message>::decode(bytes)
        .map_err(|e| FleetError::Internal(anyhow::anyhow!("decode stored {key}: {e}")))
}

impl Fleet {
    /// Loads the fleet from the store and renders every node's desired state.
    pub fn open(
        store: Arc<dyn Store>,
        stale_after: Duration,
        liveness: Liveness,
        clock: Clock,
    ) -> anyhow::Result<Arc<Fleet>> {
        let metrics = Arc::new(Metrics::new());
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(store, metrics.clone()));
        let current = revisions::load_current(store.as_ref())?;
        let now = clock.now_ms();
        let mut nodes = BTreeMap::new();
        let active = rollout::load_active(store.as_ref(), current.number)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut render = rollout::TargetRender::new(&current.spec, current.number, active.as_ref());
        for (key, entry) in store.list(keys::NODES)? {
            let record: NodeRecord = from_json(&key, &entry.value)?;
            let name = record.name.clone();
            let report = match store.get(&keys::report(&name))? {
                Some(e) => Some(decode_report(&key, &e.value)?),
                None => None,
            };
            let status = match store.get(&keys::status(&name))? {
                Some(e) => Some(from_json::<NodeStatus>(&keys::status(&name), &e.value)?),
                None => None,
            }
            .filter(|s| s.cert_serial == record.cert_serial)
            // Stored before `status/` existed: last seen and stages were in the record.
            .unwrap_or_else(|| NodeStatus {
                cert_serial: record.cert_serial.clone(),
                last_seen_ms: record.last_seen_ms,
                reported: record
                    .timeline
                    .iter()
                    .any(|e| e.stage == records::Stage::FirstReport),
                timeline: Vec::new(),
                runs: Vec::new(),
            });
            let facts = match store.get(&keys::facts(&name))? {
                Some(e) => serde_json::from_slice(&e.value).unwrap_or(serde_json::Value::Null),
                None => serde_json::Value::Null,
            };
            let mut desired = render.of(&name, &record.labels);
            let summary = report.as_ref().map(records::summarize);
            // A node that already runs this exact state keeps the revision it applied.
            if let Some(s) = &summary
                && s.hash == desired.hash
            {
                desired.revision = s.revision;
            }
            let mut node = Node::new(record, Arc::new(desired));
            node.record_version = entry.version;
            node.status = status;
            node.report = summary;
            node.facts = facts;
            // Not heard from since this start: reconnecting, not its stored verdict.
            node.lost_ms = now;
            nodes.insert(name, node);
        }
        let mut pending = BTreeMap::new();
        let mut expired = Vec::new();
        for (key, entry) in store.list(keys::PENDING)? {
            let mut rec: PendingRecord = from_json(&key, &entry.value)?;
            if rec.expires_at_ms == 0 {
                // Stored before expiry existed: give it one grace period from now.
                rec.expires_at_ms = now + PENDING_GRACE.as_millis() as u64;
            }
            if rec.expires_at_ms <= now || nodes.contains_key(&rec.name) {
                expired.push((key, entry.version));
            } else {
                pending.insert(rec.name.clone(), rec);
            }
        }
        // Each reservation is deleted on its own terms: no atomicity needed,
        // so in transactions small enough for etcd's per-transaction bound.
        for chunk in expired.chunks(MAX_TXN_OPS) {
            let compares: Vec<Compare> = chunk
                .iter()
                .map(|(k, v)| Compare::Version(k.clone(), *v))
                .collect();
            let ops: Vec<Op> = chunk.iter().map(|(k, _)| Op::Delete(k.clone())).collect();
            if !store.txn(&compares, &ops)? {
                tracing::warn!("expired reservations changed while loading; kept for now");
            }
        }
        Ok(Arc::new(Fleet {
            store,
            inner: Mutex::new(Inner {
                nodes,
                pending,
                current,
                rollout: active,
                last_affected: (0, Vec::new()),
                refusals: HashMap::new(),
                remote: BTreeMap::new(),
            }),
            apply_lock: Mutex::new(()),
            operator_lock: Mutex::new(()),
            stale_after,
            liveness,
            id: liveness::new_id(),
            liveness_withdrawn: Mutex::new(false),
            clock,
            metrics,
            plans: Arc::new(plan::Hub::default()),
        }))
    }

    /// The fleet's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The number of the current revision (0: none yet).
    pub fn current_revision(&self) -> u64 {
        self.lock().current.number
    }

    /// This controller's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The store, as the fleet uses it (metered): for the single-owner jobs.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Now, by the fleet's clock (the only one it reads).
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Taken before `lock`, never while holding it.
    fn operator_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.operator_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a node certificate is still good: the node exists, is not
    /// revoked, and the certificate is the one issued at its enrollment.
    pub fn check_node(&self, name: &str, serial: &str) -> std::result::Result<(), String> {
        let inner = self.lock();
        match inner.nodes.get(name) {
            None => Err(format!("node {name} is not enrolled")),
            Some(n) if n.record.revoked => Err(format!("node {name} is revoked")),
            Some(n) if n.record.cert_serial != serial => {
                Err(format!("certificate of node {name} was superseded"))
            }
            Some(_) => Ok(()),
        }
    }

    /// The node's feed: its current desired state now and on every change.
    pub fn subscribe(&self, name: &str) -> Result<watch::Receiver<Feed>> {
        let mut inner = self.lock();
        let node = inner
            .nodes
            .get_mut(name)
            .ok_or_else(|| FleetError::NotFound(format!("node {name} is not enrolled")))?;
        node.status.last_seen_ms = self.now_ms();
        Ok(node.feed.subscribe())
    }

    /// Cheap: memory only. `last_seen` reaches the store with the next report.
    pub fn heartbeat(&self, name: &str) {
        if let Some(node) = self.lock().nodes.get_mut(name) {
            node.status.last_seen_ms = self.now_ms();
        }
    }
}
