//! The fleet: revisions, tokens, nodes and their rendered desired state.
//!
//! Invariants:
//! - the store is the truth; memory holds a cache of it plus what is cheap to
//!   lose (heartbeat times), and every write goes to the store before memory;
//! - nothing invalid is stored: sources are parsed and validated, names and
//!   labels checked, before any transaction;
//! - a node's watch channel only ever carries that node's state.

use crate::ca::Ca;
use crate::store::{Compare, Op, Store};
use ballast_proto::pb;
use ballast_proto::spec::{self, Labels, NodeMeta, Spec};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
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
/// Timeline entries kept per node; older ones are dropped.
const TIMELINE_CAP: usize = 64;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RevisionRecord {
    number: u64,
    author: String,
    created_at_ms: u64,
    hash: String,
    message: String,
    restored_from: u64,
    sources: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    name: Option<String>,
    labels: Labels,
    created_at_ms: u64,
    expires_at_ms: u64,
    used_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub at_ms: u64,
    pub stage: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeRecord {
    name: String,
    labels: Labels,
    cert_serial: String,
    enrolled_at_ms: u64,
    revoked: bool,
    last_seen_ms: u64,
    timeline: Vec<Event>,
}

impl NodeRecord {
    fn push_event(&mut self, stage: &str, detail: impl Into<String>) {
        self.timeline.push(Event {
            at_ms: now_ms(),
            stage: stage.to_owned(),
            detail: detail.into(),
        });
        if self.timeline.len() > TIMELINE_CAP {
            let drop = self.timeline.len() - TIMELINE_CAP;
            self.timeline.drain(..drop);
        }
    }
}

/// A name a token was issued for, not (yet) enrolled: its bootstrap timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingRecord {
    name: String,
    labels: Labels,
    timeline: Vec<Event>,
}

fn pending_key(name: &str) -> String {
    format!("pending/{name}")
}

/// What a node's watch stream carries.
#[derive(Debug, Clone)]
pub enum Feed {
    State(Arc<pb::DesiredState>),
    /// The node was revoked: end the stream.
    Revoked,
}

/// The last report, reduced to what status needs.
#[derive(Debug, Clone, Default)]
struct ReportSummary {
    revision: u64,
    hash: String,
    failed: Vec<String>,
    /// The run repaired drift (changed something without a new desired state).
    drifted: bool,
}

struct Node {
    record: NodeRecord,
    desired: Arc<pb::DesiredState>,
    feed: watch::Sender<Feed>,
    report: Option<ReportSummary>,
    facts: serde_json::Value,
}

struct Current {
    number: u64,
    spec: Arc<Spec>,
    hash: String,
}

struct Inner {
    nodes: HashMap<String, Node>,
    pending: HashMap<String, PendingRecord>,
    current: Current,
}

/// The controller's fleet state over a [`Store`].
pub struct Fleet {
    store: Arc<dyn Store>,
    inner: Mutex<Inner>,
    /// Serialises applies so revision numbers are dense; the store's compare
    /// on `meta/current` still guards against another controller.
    apply_lock: Mutex<()>,
    stale_after: Duration,
}

fn revision_key(n: u64) -> String {
    format!("revisions/{n:020}")
}

fn node_key(name: &str) -> String {
    format!("nodes/{name}")
}

fn token_key(hash: &str) -> String {
    format!("tokens/{hash}")
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

fn parse_sources(sources: &[(String, String)]) -> Result<Spec> {
    let sources: Vec<spec::Source> = sources
        .iter()
        .map(|(name, text)| spec::Source {
            name: name.clone(),
            text: text.clone(),
        })
        .collect();
    spec::parse(&sources).map_err(|e| FleetError::Invalid(e.to_string()))
}

fn desired_for(spec: &Spec, record: &NodeRecord, revision: u64) -> pb::DesiredState {
    let state = spec.render(&NodeMeta {
        name: record.name.clone(),
        labels: record.labels.clone(),
    });
    let document = state.to_document();
    pb::DesiredState {
        revision,
        hash: ballast_proto::sha256_tag(&document),
        document,
    }
}

impl Fleet {
    /// Loads the fleet from the store and renders every node's desired state.
    pub fn open(store: Arc<dyn Store>, stale_after: Duration) -> anyhow::Result<Arc<Fleet>> {
        let current = match store.get("meta/current")? {
            None => Current {
                number: 0,
                spec: Arc::new(Spec::default()),
                hash: Spec::default().content_hash(),
            },
            Some(entry) => {
                let number: u64 = from_json("meta/current", &entry.value)?;
                let key = revision_key(number);
                let rec: RevisionRecord =
                    from_json(&key, &store.get(&key)?.map(|e| e.value).unwrap_or_default())?;
                let spec = parse_sources(&rec.sources).map_err(|e| {
                    anyhow::anyhow!("stored revision {number} no longer parses: {e}")
                })?;
                Current {
                    number,
                    spec: Arc::new(spec),
                    hash: rec.hash,
                }
            }
        };
        let mut nodes = HashMap::new();
        for (key, entry) in store.list("nodes/")? {
            let record: NodeRecord = from_json(&key, &entry.value)?;
            let report = match store.get(&format!("reports/{}", record.name))? {
                Some(e) => Some(
                    <pb::RunReport as prost::Message>::decode(e.value.as_slice())
                        .map_err(|e| anyhow::anyhow!("decode {key} report: {e}"))?,
                ),
                None => None,
            };
            let facts = match store.get(&format!("facts/{}", record.name))? {
                Some(e) => serde_json::from_slice(&e.value).unwrap_or(serde_json::Value::Null),
                None => serde_json::Value::Null,
            };
            let mut desired = desired_for(&current.spec, &record, current.number);
            let summary = report.as_ref().map(summarize);
            // A node that already runs this exact state keeps the revision it applied.
            if let Some(s) = &summary
                && s.hash == desired.hash
            {
                desired.revision = s.revision;
            }
            let desired = Arc::new(desired);
            let feed = if record.revoked {
                Feed::Revoked
            } else {
                Feed::State(desired.clone())
            };
            let (tx, _) = watch::channel(feed);
            nodes.insert(
                record.name.clone(),
                Node {
                    record,
                    desired,
                    feed: tx,
                    report: summary,
                    facts,
                },
            );
        }
        let mut pending = HashMap::new();
        for (key, entry) in store.list("pending/")? {
            let rec: PendingRecord = from_json(&key, &entry.value)?;
            pending.insert(rec.name.clone(), rec);
        }
        Ok(Arc::new(Fleet {
            store,
            inner: Mutex::new(Inner {
                nodes,
                pending,
                current,
            }),
            apply_lock: Mutex::new(()),
            stale_after,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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

    // ---- tokens and enrollment ----

    /// Creates a one-time token; only its hash is stored.
    pub fn create_token(
        &self,
        labels: Labels,
        ttl: Duration,
        name: Option<String>,
    ) -> Result<(String, u64)> {
        validate_labels(&labels)?;
        if let Some(n) = &name {
            spec::validate::node_name(n).map_err(FleetError::Invalid)?;
        }
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(FleetError::Invalid(format!(
                "token ttl must be between 1s and {}s",
                MAX_TOKEN_TTL.as_secs()
            )));
        }
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw)
            .map_err(|e| FleetError::Internal(anyhow::anyhow!("random token: {e}")))?;
        let token = format!("blt_{}", hex::encode(raw));
        let now = now_ms();
        let expires_at_ms = now + ttl.as_millis() as u64;
        let rec = TokenRecord {
            name: name.clone(),
            labels: labels.clone(),
            created_at_ms: now,
            expires_at_ms,
            used_by: None,
        };
        let key = token_key(&token_hash(&token));
        if !self.store.txn(
            &[Compare::Absent(key.clone())],
            &[Op::Put(key, to_json(&rec))],
        )? {
            return Err(FleetError::Internal(anyhow::anyhow!("token collision")));
        }
        if let Some(name) = name {
            let expires = humantime_secs(ttl);
            self.record_bootstrap(
                &name,
                &labels,
                "token-issued",
                format!("one-time token issued, expires in {expires}"),
            )?;
        }
        Ok((token, expires_at_ms))
    }

    /// Spends a token and signs the node's CSR. Exactly one of any number of
    /// concurrent enrollments with one token succeeds (compare on the token's
    /// version in the same transaction that marks it used).
    pub fn enroll(
        &self,
        ca: &Ca,
        token: &str,
        requested_name: &str,
        csr_der: &[u8],
    ) -> Result<pb::EnrollResponse> {
        let denied =
            || FleetError::Denied("enrollment token is invalid, expired or already used".into());
        if !token.starts_with("blt_") || token.len() != 68 {
            return Err(denied());
        }
        let key = token_key(&token_hash(token));
        let entry = self.store.get(&key)?.ok_or_else(denied)?;
        let mut rec: TokenRecord = from_json(&key, &entry.value)?;
        if rec.used_by.is_some() || rec.expires_at_ms <= now_ms() {
            // A real token, spent or expired: make the failed bootstrap visible
            // on the controller under the name it was meant for.
            let why = if rec.used_by.is_some() {
                "token already used"
            } else {
                "token expired"
            };
            let target = rec
                .name
                .clone()
                .unwrap_or_else(|| requested_name.to_owned());
            if spec::validate::node_name(&target).is_ok() {
                let detail = format!("enrollment refused: {why}");
                if let Err(e) = self.record_bootstrap(&target, &rec.labels, "enroll-failed", detail)
                {
                    tracing::warn!(error = %e, node = %target, "could not record the failed enrollment");
                }
            }
            return Err(denied());
        }
        let name = rec
            .name
            .clone()
            .unwrap_or_else(|| requested_name.to_owned());
        spec::validate::node_name(&name).map_err(FleetError::Invalid)?;
        let nkey = node_key(&name);
        let existing = self.store.get(&nkey)?;
        let node_compare = match &existing {
            None => Compare::Absent(nkey.clone()),
            Some(e) => {
                let old: NodeRecord = from_json(&nkey, &e.value)?;
                if !old.revoked {
                    return Err(FleetError::Conflict(format!(
                        "node {name} is already enrolled; revoke it first (ballast node revoke {name})"
                    )));
                }
                Compare::Version(nkey.clone(), e.version)
            }
        };
        let issued = ca
            .sign_node_csr(csr_der, &name, NODE_CERT_VALIDITY)
            .map_err(|e| FleetError::Invalid(format!("certificate signing request: {e:#}")))?;
        rec.used_by = Some(name.clone());
        let mut record = NodeRecord {
            name: name.clone(),
            labels: rec.labels.clone(),
            cert_serial: issued.serial.clone(),
            enrolled_at_ms: now_ms(),
            revoked: false,
            last_seen_ms: now_ms(),
            timeline: self
                .lock()
                .pending
                .get(&name)
                .map(|p| p.timeline.clone())
                .unwrap_or_default(),
        };
        record.push_event("enrolled", format!("certificate serial {}", issued.serial));
        let ok = self.store.txn(
            &[Compare::Version(key.clone(), entry.version), node_compare],
            &[
                Op::Put(key, to_json(&rec)),
                Op::Put(nkey, to_json(&record)),
                Op::Delete(format!("reports/{name}")),
                Op::Delete(pending_key(&name)),
            ],
        )?;
        if !ok {
            return Err(denied());
        }
        let mut inner = self.lock();
        inner.pending.remove(&name);
        let desired = Arc::new(desired_for(
            &inner.current.spec,
            &record,
            inner.current.number,
        ));
        let labels = record.labels.clone();
        match inner.nodes.get_mut(&name) {
            Some(node) => {
                node.record = record;
                node.desired = desired.clone();
                node.report = None;
                node.feed.send_replace(Feed::State(desired));
            }
            None => {
                let (tx, _) = watch::channel(Feed::State(desired.clone()));
                inner.nodes.insert(
                    name.clone(),
                    Node {
                        record,
                        desired,
                        feed: tx,
                        report: None,
                        facts: serde_json::Value::Null,
                    },
                );
            }
        }
        Ok(pb::EnrollResponse {
            name,
            labels: labels.into_iter().collect(),
            certificate_pem: issued.cert_pem,
            ca_pem: ca.cert_pem().to_owned(),
        })
    }

    /// Adds a bootstrap event to a name: to the node when it exists, else to
    /// its pending record (created on first use).
    fn record_bootstrap(
        &self,
        name: &str,
        labels: &Labels,
        stage: &str,
        detail: String,
    ) -> Result<()> {
        if self.lock().nodes.contains_key(name) {
            let record = self.update_node(name, |r| r.push_event(stage, detail.clone()))?;
            if let Some(n) = self.lock().nodes.get_mut(name) {
                n.record.timeline = record.timeline;
            }
            return Ok(());
        }
        let key = pending_key(name);
        let existing = self.store.get(&key)?;
        let mut rec = match &existing {
            Some(e) => from_json::<PendingRecord>(&key, &e.value)?,
            None => PendingRecord {
                name: name.to_owned(),
                labels: labels.clone(),
                timeline: Vec::new(),
            },
        };
        rec.timeline.push(Event {
            at_ms: now_ms(),
            stage: stage.to_owned(),
            detail,
        });
        if rec.timeline.len() > TIMELINE_CAP {
            let drop = rec.timeline.len() - TIMELINE_CAP;
            rec.timeline.drain(..drop);
        }
        let compare = match &existing {
            Some(e) => Compare::Version(key.clone(), e.version),
            None => Compare::Absent(key.clone()),
        };
        if !self.store.txn(&[compare], &[Op::Put(key, to_json(&rec))])? {
            return Err(FleetError::Conflict(format!(
                "bootstrap record of {name} changed meanwhile; retry"
            )));
        }
        self.lock().pending.insert(name.to_owned(), rec);
        Ok(())
    }

    // ---- node-facing ----

    /// The node's feed: its current desired state now and on every change.
    pub fn subscribe(&self, name: &str) -> Result<watch::Receiver<Feed>> {
        let mut inner = self.lock();
        let node = inner
            .nodes
            .get_mut(name)
            .ok_or_else(|| FleetError::NotFound(format!("node {name} is not enrolled")))?;
        node.record.last_seen_ms = now_ms();
        Ok(node.feed.subscribe())
    }

    /// Cheap: memory only. `last_seen` reaches the store with the next report.
    pub fn heartbeat(&self, name: &str) {
        if let Some(node) = self.lock().nodes.get_mut(name) {
            node.record.last_seen_ms = now_ms();
        }
    }

    pub fn put_facts(&self, name: &str, json: &str) -> Result<()> {
        let facts: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| FleetError::Invalid(format!("facts: not valid JSON: {e}")))?;
        if !facts.is_object() {
            return Err(FleetError::Invalid("facts: expected a JSON object".into()));
        }
        self.store.txn(
            &[],
            &[Op::Put(format!("facts/{name}"), json.as_bytes().to_vec())],
        )?;
        if let Some(node) = self.lock().nodes.get_mut(name) {
            node.facts = facts;
            node.record.last_seen_ms = now_ms();
        }
        Ok(())
    }

    /// Records a run's outcome and moves the node's timeline when its stage changes.
    pub fn report(&self, name: &str, report: pb::RunReport) -> Result<()> {
        if report.resources.len() > 100_000 {
            return Err(FleetError::Invalid(
                "report: more than 100000 resources".into(),
            ));
        }
        let summary = summarize(&report);
        let mut record = {
            let inner = self.lock();
            let node = inner
                .nodes
                .get(name)
                .ok_or_else(|| FleetError::NotFound(format!("node {name} is not enrolled")))?;
            node.record.clone()
        };
        let first = !record.timeline.iter().any(|e| e.stage == "first-report");
        if first {
            record.push_event("first-report", format!("revision {}", report.revision));
        }
        if !report.noop {
            let (stage, detail) = if !summary.failed.is_empty() {
                (
                    "failing",
                    format!(
                        "revision {}: failing at {}",
                        report.revision,
                        summary.failed.join(", ")
                    ),
                )
            } else if summary.drifted {
                (
                    "drifted",
                    format!("revision {}: repaired drift", report.revision),
                )
            } else {
                ("converged", format!("revision {}", report.revision))
            };
            // Only stage changes enter the timeline, not every run.
            let last = record.timeline.iter().rev().find(|e| e.stage != "labels");
            if last.map(|e| (e.stage.as_str(), e.detail.as_str())) != Some((stage, detail.as_str()))
            {
                record.push_event(stage, detail);
            }
        }
        record.last_seen_ms = now_ms();
        self.store.txn(
            &[],
            &[
                Op::Put(
                    format!("reports/{name}"),
                    prost::Message::encode_to_vec(&report),
                ),
                Op::Put(node_key(name), to_json(&record)),
            ],
        )?;
        let mut inner = self.lock();
        if let Some(node) = inner.nodes.get_mut(name) {
            // Keep the in-memory labels/revocation, which may have changed meanwhile.
            node.record.timeline = record.timeline;
            node.record.last_seen_ms = record.last_seen_ms;
            if !report.noop {
                node.report = Some(summary);
            }
        }
        Ok(())
    }

    // ---- revisions ----

    /// Validates sources and stores them as a new revision, then pushes each
    /// node whose rendered state changed. Content equal to the current
    /// revision's stores nothing (`created: false`).
    pub fn apply(
        &self,
        sources: Vec<(String, String)>,
        author: &str,
        message: &str,
        restored_from: u64,
    ) -> Result<pb::ApplyResponse> {
        if sources.is_empty() {
            return Err(FleetError::Invalid(
                "no sources given: pass YAML files with -f FILE or -f DIR".into(),
            ));
        }
        let spec = parse_sources(&sources)?;
        let hash = spec.content_hash();
        let _apply = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (current_number, current_hash) = {
            let inner = self.lock();
            (inner.current.number, inner.current.hash.clone())
        };
        if current_number > 0 && hash == current_hash {
            return Ok(pb::ApplyResponse {
                revision: current_number,
                hash,
                created: false,
                affected_nodes: Vec::new(),
            });
        }
        let number = current_number + 1;
        let rec = RevisionRecord {
            number,
            author: author.to_owned(),
            created_at_ms: now_ms(),
            hash: hash.clone(),
            message: message.to_owned(),
            restored_from,
            sources,
        };
        let compare = match self.store.get("meta/current")? {
            None => Compare::Absent("meta/current".into()),
            Some(e) => Compare::Version("meta/current".into(), e.version),
        };
        let ok = self.store.txn(
            &[compare, Compare::Absent(revision_key(number))],
            &[
                Op::Put(revision_key(number), to_json(&rec)),
                Op::Put("meta/current".into(), to_json(&number)),
            ],
        )?;
        if !ok {
            return Err(FleetError::Conflict(
                "another apply stored a revision at the same time; retry".into(),
            ));
        }
        let spec = Arc::new(spec);
        let mut inner = self.lock();
        inner.current = Current {
            number,
            spec: spec.clone(),
            hash: hash.clone(),
        };
        let mut affected = Vec::new();
        for node in inner.nodes.values_mut() {
            let desired = desired_for(&spec, &node.record, number);
            if desired.hash != node.desired.hash {
                affected.push(node.record.name.clone());
                node.desired = Arc::new(desired);
                if !node.record.revoked {
                    node.feed.send_replace(Feed::State(node.desired.clone()));
                }
            }
        }
        affected.sort();
        Ok(pb::ApplyResponse {
            revision: number,
            hash,
            created: true,
            affected_nodes: affected,
        })
    }

    /// Per node, the resource ids an apply of these sources would add, change or remove.
    pub fn diff(&self, sources: Vec<(String, String)>) -> Result<pb::DiffResponse> {
        let spec = parse_sources(&sources)?;
        let inner = self.lock();
        let mut nodes = Vec::new();
        let mut names: Vec<&String> = inner.nodes.keys().collect();
        names.sort();
        for name in names {
            let node = &inner.nodes[name];
            if node.record.revoked {
                continue;
            }
            let meta = NodeMeta {
                name: name.clone(),
                labels: node.record.labels.clone(),
            };
            let d = spec::diff_states(&inner.current.spec.render(&meta), &spec.render(&meta));
            if !d.is_empty() {
                nodes.push(pb::NodeChange {
                    node: name.clone(),
                    added: d.added,
                    changed: d.changed,
                    removed: d.removed,
                });
            }
        }
        Ok(pb::DiffResponse {
            current_revision: inner.current.number,
            nodes,
        })
    }

    pub fn history(&self, limit: usize) -> Result<Vec<pb::Revision>> {
        let mut out = Vec::new();
        for (key, entry) in self
            .store
            .list("revisions/")?
            .into_iter()
            .rev()
            .take(limit.max(1))
        {
            let r: RevisionRecord = from_json(&key, &entry.value)?;
            out.push(pb::Revision {
                number: r.number,
                author: r.author,
                created_at_ms: r.created_at_ms,
                hash: r.hash,
                message: r.message,
                restored_from: r.restored_from,
            });
        }
        Ok(out)
    }

    /// A new revision with the content of revision `number`.
    pub fn rollback(&self, number: u64, author: &str) -> Result<pb::ApplyResponse> {
        let key = revision_key(number);
        let entry = self.store.get(&key)?.ok_or_else(|| {
            FleetError::NotFound(format!(
                "revision {number} does not exist (see ballast history)"
            ))
        })?;
        let rec: RevisionRecord = from_json(&key, &entry.value)?;
        self.apply(
            rec.sources,
            author,
            &format!("rollback to revision {number}"),
            number,
        )
    }

    // ---- nodes ----

    fn status(&self, node: &Node, now: u64) -> &'static str {
        if node.record.revoked {
            return "revoked";
        }
        if now.saturating_sub(node.record.last_seen_ms) > self.stale_after.as_millis() as u64 {
            return "stale";
        }
        match &node.report {
            Some(r) if r.hash == node.desired.hash => {
                if !r.failed.is_empty() {
                    "failed"
                } else if r.drifted {
                    "drifted"
                } else {
                    "converged"
                }
            }
            _ => "converging",
        }
    }

    fn summary(&self, node: &Node, now: u64) -> pb::NodeSummary {
        pb::NodeSummary {
            name: node.record.name.clone(),
            labels: node.record.labels.clone().into_iter().collect(),
            status: self.status(node, now).to_owned(),
            desired_revision: node.desired.revision,
            applied_revision: node.report.as_ref().map(|r| r.revision).unwrap_or(0),
            last_seen_ms: node.record.last_seen_ms,
            failed_resources: node
                .report
                .as_ref()
                .map(|r| r.failed.clone())
                .unwrap_or_default(),
        }
    }

    /// Nodes matching every `key=value` filter (label, or fact by dotted path).
    pub fn list_nodes(&self, filters: &[String]) -> Result<pb::ListNodesResponse> {
        let filters: Vec<(&str, &str)> = filters
            .iter()
            .map(|f| {
                f.split_once('=').ok_or_else(|| {
                    FleetError::Invalid(format!(
                        "filter {f:?}: expected key=value, such as role=web or os.id=debian"
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let now = now_ms();
        let inner = self.lock();
        let mut nodes: Vec<pb::NodeSummary> = inner
            .nodes
            .values()
            .filter(|n| {
                filters
                    .iter()
                    .all(|(k, v)| matches_filter(&n.record.name, &n.record.labels, &n.facts, k, v))
            })
            .map(|n| self.summary(n, now))
            .collect();
        // Names still bootstrapping: a token was issued, no enrollment yet.
        nodes.extend(
            inner
                .pending
                .values()
                .filter(|p| {
                    filters.iter().all(|(k, v)| {
                        matches_filter(&p.name, &p.labels, &serde_json::Value::Null, k, v)
                    })
                })
                .map(pending_summary),
        );
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pb::ListNodesResponse {
            nodes,
            current_revision: inner.current.number,
            next_page_token: String::new(),
        })
    }

    pub fn get_node(&self, name: &str) -> Result<pb::NodeDetail> {
        let (summary, facts, timeline) = {
            let inner = self.lock();
            match (inner.nodes.get(name), inner.pending.get(name)) {
                (Some(node), _) => (
                    self.summary(node, now_ms()),
                    node.facts.to_string(),
                    node.record.timeline.clone(),
                ),
                (None, Some(p)) => (pending_summary(p), "{}".to_owned(), p.timeline.clone()),
                (None, None) => {
                    return Err(FleetError::NotFound(format!(
                        "node {name} does not exist (see ballast nodes)"
                    )));
                }
            }
        };
        let last_report = match self.store.get(&format!("reports/{name}"))? {
            Some(e) => Some(
                prost::Message::decode(e.value.as_slice())
                    .map_err(|e| anyhow::anyhow!("decode report of {name}: {e}"))?,
            ),
            None => None,
        };
        Ok(pb::NodeDetail {
            summary: Some(summary),
            facts_json: facts,
            last_report,
            timeline: timeline
                .into_iter()
                .map(|e| pb::TimelineEvent {
                    at_ms: e.at_ms,
                    stage: e.stage,
                    detail: e.detail,
                })
                .collect(),
        })
    }

    fn update_node(&self, name: &str, change: impl FnOnce(&mut NodeRecord)) -> Result<NodeRecord> {
        let key = node_key(name);
        let entry = self.store.get(&key)?.ok_or_else(|| {
            FleetError::NotFound(format!("node {name} does not exist (see ballast nodes)"))
        })?;
        let mut record: NodeRecord = from_json(&key, &entry.value)?;
        if let Some(n) = self.lock().nodes.get(name) {
            record.last_seen_ms = n.record.last_seen_ms;
        }
        change(&mut record);
        if !self.store.txn(
            &[Compare::Version(key.clone(), entry.version)],
            &[Op::Put(key, to_json(&record))],
        )? {
            return Err(FleetError::Conflict(format!(
                "node {name} changed meanwhile; retry"
            )));
        }
        Ok(record)
    }

    /// The node's next call fails, and its open watch ends, without a restart.
    pub fn revoke(&self, name: &str) -> Result<()> {
        let record = self.update_node(name, |r| {
            r.revoked = true;
            r.push_event("revoked", "certificate revoked by an operator");
        })?;
        let mut inner = self.lock();
        if let Some(node) = inner.nodes.get_mut(name) {
            node.record = record;
            node.feed.send_replace(Feed::Revoked);
        }
        Ok(())
    }

    /// Sets labels (an empty value removes one) and pushes the re-rendered state.
    pub fn label(&self, name: &str, labels: &Labels) -> Result<()> {
        for (k, v) in labels {
            spec::validate::label_key(k).map_err(FleetError::Invalid)?;
            if !v.is_empty() {
                spec::validate::label_value(v).map_err(FleetError::Invalid)?;
            }
        }
        let record = self.update_node(name, |r| {
            for (k, v) in labels {
                if v.is_empty() {
                    r.labels.remove(k);
                } else {
                    r.labels.insert(k.clone(), v.clone());
                }
            }
            let text: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            r.push_event("labels", text.join(","));
        })?;
        let mut inner = self.lock();
        let number = inner.current.number;
        let spec = inner.current.spec.clone();
        if let Some(node) = inner.nodes.get_mut(name) {
            node.record = record;
            let desired = desired_for(&spec, &node.record, number);
            if desired.hash != node.desired.hash {
                node.desired = Arc::new(desired);
                if !node.record.revoked {
                    node.feed.send_replace(Feed::State(node.desired.clone()));
                }
            }
        }
        Ok(())
    }
}

fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn summarize(report: &pb::RunReport) -> ReportSummary {
    let failed = report
        .resources
        .iter()
        .filter(|r| r.outcome == pb::Outcome::Failed as i32)
        .map(|r| r.id.clone())
        .collect();
    let changed = report
        .resources
        .iter()
        .any(|r| r.outcome == pb::Outcome::Changed as i32);
    ReportSummary {
        revision: report.revision,
        hash: report.state_hash.clone(),
        failed,
        drifted: changed && report.trigger != "change",
    }
}

/// A bootstrapping name: `pending` until it enrolls, `bootstrap-failed` when
/// its last attempt was refused.
fn pending_summary(p: &PendingRecord) -> pb::NodeSummary {
    let failed = p
        .timeline
        .last()
        .is_some_and(|e| e.stage == "enroll-failed");
    pb::NodeSummary {
        name: p.name.clone(),
        labels: p.labels.clone().into_iter().collect(),
        status: if failed {
            "bootstrap-failed"
        } else {
            "pending"
        }
        .to_owned(),
        ..Default::default()
    }
}

fn humantime_secs(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn matches_filter(
    name: &str,
    labels: &Labels,
    facts: &serde_json::Value,
    key: &str,
    want: &str,
) -> bool {
    if let Some(v) = labels.get(key) {
        return v == want;
    }
    if key == "name" {
        return name == want;
    }
    let mut cur = facts;
    for part in key.split('.') {
        cur = match cur {
            serde_json::Value::Object(m) => match m.get(part) {
                Some(v) => v,
                None => return false,
            },
            serde_json::Value::Array(a) => {
                match part.parse::<usize>().ok().and_then(|i| a.get(i)) {
                    Some(v) => v,
                    None => return false,
                }
            }
            _ => return false,
        };
    }
    match cur {
        serde_json::Value::String(s) => s == want,
        serde_json::Value::Number(n) => n.to_string() == want,
        serde_json::Value::Bool(b) => b.to_string() == want,
        _ => false,
    }
}
