//! Plans (`ballast plan`): the proposed desired state rendered for every
//! selected node, stored nowhere as a revision, sent to each agent's plan
//! stream (never its watch), and the agents' dry runs grouped by identical
//! change set.
//!
//! Invariants: a plan's document never reaches a node's `Feed` (a round-1
//! agent would apply it); a node answers only plans sent to it (the name is
//! the certificate's), once, and only for the hash it was sent; every
//! answer is bounded like a report.
//!
//! The asking controller sends to the plan streams it holds itself (`Hub`,
//! its memory); with several controllers, the others learn of the plan
//! through the store and answer for the streams they hold (`plan_route`).

use super::plan_route::{Outgoing, PlanRecord};
use super::{Fleet, FleetError, Result, keys, revisions, view};
use crate::store::Op;
use ballast_proto::enums::Outcome;
use ballast_proto::pb;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long `ballast plan` waits for the agents when the request says 0.
pub const DEFAULT_PLAN_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait a request may ask for.
pub const MAX_PLAN_TIMEOUT: Duration = Duration::from_secs(600);
/// Plans queued to one node's stream at once; past it the node is busy.
pub const PLAN_QUEUE: usize = 4;
/// Plans waiting for answers on this controller at once.
pub const MAX_PLANS_IN_FLIGHT: usize = 16;
/// Plans asked of other controllers that this one serves at once (its
/// streams' share); past it a peer's plan is left unanswered here.
pub const MAX_REMOTE_PLANS: usize = 64;
/// The groups of a plan's answer stop before their encoding passes this
/// (node names are always all there: the counts and the exit code hold).
pub const MAX_PLAN_GROUP_BYTES: usize = 3 * 1024 * 1024;

/// One node's share of a plan: name, document, its hash.
pub type Target = (String, Vec<u8>, String);

/// What an agent sent for a plan.
#[derive(Debug, Clone)]
pub enum Answer {
    /// The dry run's report (already checked against the report bounds).
    Report(pb::RunReport),
    /// The agent refused or could not run the document, and why.
    Refused(String),
}

/// One node's answer as the asking controller takes it, wherever the
/// node's stream is: what travels through the store between controllers.
#[derive(Debug, Clone, PartialEq)]
pub enum Answered {
    /// What the dry run would change, fail or skip (unchanged left out).
    Changes(Vec<pb::PlanItem>),
    /// The agent refused the document, and why.
    Refused(String),
    /// The controller holding the node's stream could not send it the plan.
    Unsent(String),
}

/// The change set of a dry run: its resources that are not unchanged.
pub fn changes_of(report: pb::RunReport) -> Vec<pb::PlanItem> {
    report
        .resources
        .into_iter()
        .filter(|res| res.outcome != i32::from(Outcome::Unchanged))
        .map(|res| pb::PlanItem {
            id: res.id,
            outcome: res.outcome,
            changes: res.changes,
            error: res.error,
        })
        .collect()
}

/// Nodes a plan was not sent to, and why (`None`: no open stream here).
type NotSent = Vec<(String, Option<&'static str>)>;
/// A plan's answers by node, on their way to its flight.
pub(super) type AnswerTx = mpsc::UnboundedSender<(String, Answered)>;
type AnswerRx = mpsc::UnboundedReceiver<(String, Answered)>;

/// Where a selected node's plan stream may be, as the asker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Held by a peer, or here while peers exist: wait for the store.
    Elsewhere,
    /// Its watch is here and this controller has no peers.
    HereOnly,
    /// No controller holds its watch.
    Nowhere,
}

/// Where a plan's answers go.
enum Sink {
    /// A plan asked of this controller: to its flight.
    Local(AnswerTx),
    /// A plan asked of another controller: to the store, by the writer.
    Remote { expires: Instant },
}

struct Waiting {
    /// Node → the hash of the document it was sent.
    nodes: HashMap<String, String>,
    sink: Sink,
}

#[derive(Default)]
struct HubInner {
    /// Node → its open plan stream (the newest; a new one replaces it).
    streams: HashMap<String, mpsc::Sender<pb::PlanRequest>>,
    /// Plan id → the nodes that have not answered yet.
    waiting: HashMap<String, Waiting>,
    /// The server is stopping: streams end, none open.
    closed: bool,
    /// The task that writes answers to peers' plans (`plan_route`).
    writer: Option<mpsc::UnboundedSender<Outgoing>>,
}

impl HubInner {
    /// Queues each target on its stream; the nodes sent, then those not sent
    /// with why (`None`: no open stream here).
    fn send(&mut self, id: &str, targets: Vec<Target>) -> (HashMap<String, String>, NotSent) {
        let mut nodes = HashMap::new();
        let mut unsent = Vec::new();
        for (name, document, hash) in targets {
            let req = pb::PlanRequest {
                id: id.to_owned(),
                document,
                hash: hash.clone(),
            };
            let reason = match self.streams.get(&name).map(|s| s.try_send(req)) {
                Some(Ok(())) => {
                    nodes.insert(name, hash);
                    continue;
                }
                Some(Err(mpsc::error::TrySendError::Full(_))) => {
                    Some("busy: earlier plans are still queued for it")
                }
                Some(Err(mpsc::error::TrySendError::Closed(_))) => {
                    self.streams.remove(&name);
                    None
                }
                None => None,
            };
            unsent.push((name, reason));
        }
        (nodes, unsent)
    }

    /// Forgets peers' plans past their deadline (their records normally
    /// go first).
    fn expire(&mut self, now: Instant) {
        self.waiting
            .retain(|_, w| !matches!(w.sink, Sink::Remote { expires } if expires <= now));
    }

    fn remote_count(&self) -> usize {
        self.waiting
            .values()
            .filter(|w| matches!(w.sink, Sink::Remote { .. }))
            .count()
    }
}

/// Routes plan requests to nodes' plan streams and their answers back.
#[derive(Default)]
pub struct Hub {
    inner: Mutex<HubInner>,
}

/// One plan asked of this controller: its answers arrive on `answers`;
/// dropping it forgets the plan (late answers are then refused) and
/// withdraws its store record.
pub struct Flight {
    hub: Arc<Hub>,
    pub id: String,
    pub current_revision: u64,
    answers: AnswerRx,
    /// For answers that come through the store.
    pub(super) tx: AnswerTx,
    /// Every node selected: answers from others are ignored.
    selected: HashSet<String>,
    /// The nodes whose answers the plan waits for: sent here, or held by
    /// another controller.
    awaited: HashSet<String>,
    /// Nodes known unreachable at the start, and why.
    unsent: Vec<(String, String)>,
    /// Whether the plan's record is in the store (peers serve it).
    pub(super) stored: bool,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        inner.waiting.remove(&self.id);
        if self.stored
            && let Some(w) = &inner.writer
        {
            let _ = w.send(Outgoing::Withdraw(self.id.clone()));
        }
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A node opened its plan stream: plans for it go there from now on.
    pub fn open(&self, node: &str) -> mpsc::Receiver<pb::PlanRequest> {
        let (tx, rx) = mpsc::channel(PLAN_QUEUE);
        let mut inner = self.lock();
        if !inner.closed {
            inner.streams.insert(node.to_owned(), tx);
        }
        rx
    }

    /// Ends every plan stream (and any opened later), so that a server's
    /// graceful stop does not wait on them forever.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.streams.clear();
    }

    /// Where answers to peers' plans and withdrawals go (`plan_route`).
    pub(super) fn set_writer(&self, tx: mpsc::UnboundedSender<Outgoing>) {
        self.lock().writer = Some(tx);
    }

    pub(super) fn outgoing(&self, o: Outgoing) {
        if let Some(w) = &self.lock().writer {
            let _ = w.send(o);
        }
    }

    /// Of `names`, those with an open plan stream here.
    pub(super) fn streamed<'a>(&self, names: impl Iterator<Item = &'a String>) -> HashSet<String> {
        let inner = self.lock();
        names
            .filter(|n| inner.streams.get(*n).is_some_and(|s| !s.is_closed()))
            .cloned()
            .collect()
    }

    /// Starts a plan asked of this controller: sends each target its
    /// document. Returns the sink's receiver, the nodes sent, and those not
    /// sent with why (`None`: no open stream here).
    fn start_local(
        &self,
        id: &str,
        targets: Vec<Target>,
    ) -> Result<(AnswerRx, AnswerTx, HashSet<String>, NotSent)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        let local = inner.waiting.len() - inner.remote_count();
        if local >= MAX_PLANS_IN_FLIGHT {
            return Err(FleetError::Conflict(format!(
                "{MAX_PLANS_IN_FLIGHT} plans are already waiting for answers on this controller; retry when one ends"
            )));
        }
        let (nodes, unsent) = inner.send(id, targets);
        let sent = nodes.keys().cloned().collect();
        inner.waiting.insert(
            id.to_owned(),
            Waiting {
                nodes,
                sink: Sink::Local(tx.clone()),
            },
        );
        Ok((rx, tx, sent, unsent))
    }

    /// Serves a peer's plan `id` for this controller's streams; its answers
    /// go to the store. Nodes found busy are answered so at once. False when
    /// the plan is known already or too many are being served.
    pub(super) fn start_remote(&self, id: &str, targets: Vec<Target>, timeout: Duration) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire(now);
        if inner.waiting.contains_key(id) {
            return false;
        }
        if inner.remote_count() >= MAX_REMOTE_PLANS {
            tracing::warn!(plan = %id, "too many peers' plans in flight; this controller's nodes are left out");
            return false;
        }
        let (nodes, unsent) = inner.send(id, targets);
        inner.waiting.insert(
            id.to_owned(),
            Waiting {
                nodes,
                sink: Sink::Remote {
                    expires: now + timeout,
                },
            },
        );
        if let Some(w) = &inner.writer {
            for (node, reason) in unsent {
                if let Some(reason) = reason {
                    let _ = w.send(Outgoing::Answer {
                        id: id.to_owned(),
                        node,
                        answered: Answered::Unsent(reason.to_owned()),
                    });
                }
            }
        }
        true
    }

    /// Stops serving a peer's plan (its record is gone); its answers here
    /// are deleted by the writer.
    pub(super) fn end_remote(&self, id: &str) {
        let mut inner = self.lock();
        if inner
            .waiting
            .get(id)
            .is_some_and(|w| matches!(w.sink, Sink::Remote { .. }))
        {
            inner.waiting.remove(id);
        }
        if let Some(w) = &inner.writer {
            let _ = w.send(Outgoing::End(id.to_owned()));
        }
    }

    /// The peers' plans being served here.
    pub(super) fn remote_ids(&self) -> HashSet<String> {
        self.lock()
            .waiting
            .iter()
            .filter(|(_, w)| matches!(w.sink, Sink::Remote { .. }))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A node's answer to plan `id`: accepted once, only from a node the
    /// plan was sent to, and only for the document it was sent.
    pub fn answer(&self, node: &str, id: &str, answer: Answer) -> Result<()> {
        let mut inner = self.lock();
        inner.expire(Instant::now());
        let writer = inner.writer.clone();
        let Some(w) = inner.waiting.get_mut(id) else {
            return Err(FleetError::NotFound(format!(
                "plan {id:?} is not waiting for answers (it ended, or is not on this controller)"
            )));
        };
        let Some(hash) = w.nodes.get(node) else {
            return Err(FleetError::Denied(format!(
                "plan {id:?} was not sent to node {node}, or it answered already"
            )));
        };
        if let Answer::Report(r) = &answer
            && &r.state_hash != hash
        {
            return Err(FleetError::Invalid(format!(
                "plan {id:?}: the report is of state {:?}, not of the plan's {hash:?}",
                r.state_hash
            )));
        }
        w.nodes.remove(node);
        let answered = match answer {
            Answer::Report(r) => Answered::Changes(changes_of(r)),
            Answer::Refused(reason) => Answered::Refused(reason),
        };
        match &w.sink {
            Sink::Local(tx) => {
                let _ = tx.send((node.to_owned(), answered));
            }
            Sink::Remote { .. } => {
                if let Some(writer) = writer {
                    let _ = writer.send(Outgoing::Answer {
                        id: id.to_owned(),
                        node: node.to_owned(),
                        answered,
                    });
                }
            }
        }
        Ok(())
    }
}

impl Fleet {
    /// This controller's plan routing (the server closes it at stop).
    pub fn plan_hub(&self) -> Arc<Hub> {
        self.plans.clone()
    }

    /// Starts a plan: renders `sources` for every unrevoked node matching
    /// `filters` (as `ballast nodes --where`) whose plan stream this
    /// controller holds and sends it; when other selected nodes are held by
    /// another controller, stores the plan (`plans/{id}`, on this process's
    /// lease) for the others to serve. Stores no revision.
    pub fn start_plan(
        &self,
        sources: Vec<(String, String)>,
        filters: Vec<String>,
        timeout: Duration,
    ) -> Result<Flight> {
        if sources.is_empty() {
            return Err(FleetError::Invalid(
                "no sources given: pass YAML files with -f FILE or -f DIR".into(),
            ));
        }
        let spec = revisions::parse_sources(&sources)?;
        let parsed = view::parse_filters(&filters).map_err(FleetError::Invalid)?;
        // Selected node → whether another controller may hold its plan
        // stream: a peer holds its watch, or it watches here while peers
        // exist (an agent's plan stream and watch may be on different ones).
        let (current, selected): (u64, BTreeMap<String, Reach>) = {
            let inner = self.lock();
            let peers = !inner.remote.is_empty();
            let selected = inner
                .nodes
                .iter()
                .filter(|(name, node)| {
                    !node.record.revoked
                        && parsed.iter().all(|(k, v)| {
                            view::matches_filter(name, &node.record.labels, &node.facts, k, v)
                        })
                })
                .map(|(name, node)| {
                    let by_peer = inner.remote.values().any(|c| c.nodes.contains_key(name));
                    let reach = match (by_peer, node.held_here()) {
                        (true, _) | (false, true) if peers || by_peer => Reach::Elsewhere,
                        (_, true) => Reach::HereOnly,
                        _ => Reach::Nowhere,
                    };
                    (name.clone(), reach)
                })
                .collect();
            (inner.current.number, selected)
        };
        let here = self.plans.streamed(selected.keys());
        let elsewhere = selected
            .iter()
            .any(|(name, reach)| *reach == Reach::Elsewhere && !here.contains(name));
        let id = super::liveness::new_id();
        if elsewhere {
            let record = PlanRecord {
                asker: self.id.clone(),
                sources,
                filters,
                timeout_ms: timeout.as_millis() as u64,
            };
            self.store.put_leased(
                &[Op::Put(keys::plan(&id), super::to_json(&record))],
                self.liveness.lease_ttl(),
            )?;
        }
        let targets = {
            let inner = self.lock();
            let mut render = revisions::Desired::new(&spec, 0);
            here.iter()
                .filter_map(|name| {
                    let node = inner.nodes.get(name)?;
                    let d = render.of(name, &node.record.labels);
                    Some((name.clone(), d.document, d.hash))
                })
                .collect()
        };
        let started = self.plans.start_local(&id, targets);
        let (answers, tx, sent, unsent_here) = match started {
            Ok(s) => s,
            Err(e) => {
                if elsewhere {
                    self.plans.outgoing(Outgoing::Withdraw(id));
                }
                return Err(e);
            }
        };
        let mut awaited = sent;
        let mut unsent = Vec::new();
        let not_here = selected
            .iter()
            .filter(|(name, _)| !here.contains(*name))
            .map(|(name, _)| (name.clone(), None));
        for (name, reason) in unsent_here.into_iter().chain(not_here) {
            let reason = match (reason, selected[&name]) {
                (Some(r), _) => r,
                (None, Reach::Elsewhere) if elsewhere => {
                    awaited.insert(name);
                    continue;
                }
                (None, Reach::Nowhere) => "not connected to any controller",
                (None, _) => "no plan stream to this controller (an agent without plans?)",
            };
            unsent.push((name, reason.to_owned()));
        }
        Ok(Flight {
            hub: self.plans.clone(),
            id,
            current_revision: current,
            answers,
            tx,
            selected: selected.into_keys().collect(),
            awaited,
            unsent,
            stored: elsewhere,
        })
    }
}

/// Groups answers by identical change set (what would change, fail or be
/// skipped), largest group first; unanswered and refused nodes by name.
pub fn group(
    current_revision: u64,
    answers: Vec<(String, Answered)>,
    mut unanswered: Vec<(String, String)>,
) -> pb::PlanResponse {
    use prost::Message;
    let mut groups: BTreeMap<Vec<u8>, pb::PlanGroup> = BTreeMap::new();
    let mut refused = Vec::new();
    for (node, answer) in answers {
        match answer {
            Answered::Refused(reason) => refused.push(pb::PlanUnanswered { node, reason }),
            Answered::Unsent(reason) => unanswered.push((node, reason)),
            Answered::Changes(items) => {
                let key = pb::PlanGroup {
                    nodes: Vec::new(),
                    items,
                };
                groups
                    .entry(key.encode_to_vec())
                    .or_insert(key)
                    .nodes
                    .push(node);
            }
        }
    }
    let mut groups: Vec<pb::PlanGroup> = groups.into_values().collect();
    groups.sort_by(|a, b| {
        b.nodes
            .len()
            .cmp(&a.nodes.len())
            .then(a.nodes.cmp(&b.nodes))
    });
    let mut resp = pb::PlanResponse {
        current_revision,
        ..Default::default()
    };
    let mut bytes = 0;
    for mut g in groups {
        g.nodes.sort();
        let fails = g.items.iter().any(|i| is_failure(i.outcome));
        let n = g.nodes.len() as u32;
        match (fails, g.items.is_empty()) {
            (true, _) => resp.failed_nodes += n,
            (false, true) => resp.unchanged_nodes += n,
            (false, false) => resp.changed_nodes += n,
        }
        bytes += g.encoded_len();
        if bytes > MAX_PLAN_GROUP_BYTES {
            // Keep who is in the group; say its change set was left out.
            resp.groups_left_out += 1;
            g.items = vec![pb::PlanItem {
                id: "…".into(),
                outcome: i32::from(if fails {
                    Outcome::Failed
                } else {
                    Outcome::Changed
                }),
                changes: vec![format!(
                    "change set left out: the answer passed {MAX_PLAN_GROUP_BYTES} bytes"
                )],
                error: String::new(),
            }];
        }
        resp.groups.push(g);
    }
    refused.sort_by(|a, b| a.node.cmp(&b.node));
    unanswered.sort();
    resp.refused = refused;
    resp.unanswered = unanswered
        .into_iter()
        .map(|(node, reason)| pb::PlanUnanswered { node, reason })
        .collect();
    resp
}

fn is_failure(outcome: i32) -> bool {
    outcome == i32::from(Outcome::Failed) || outcome == i32::from(Outcome::Skipped)
}

/// Waits for a flight's answers (from here or, through `tx`, from the
/// store) until every awaited node answered or `timeout` passed; the rest
/// are unanswered. The first answer of a node counts.
pub async fn collect(mut flight: Flight, timeout: Duration) -> pb::PlanResponse {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut answers: BTreeMap<String, Answered> = BTreeMap::new();
    let mut left = flight.awaited.len();
    while left > 0 {
        match tokio::time::timeout_at(deadline, flight.answers.recv()).await {
            Ok(Some((node, answered))) => {
                if !flight.selected.contains(&node) || answers.contains_key(&node) {
                    continue;
                }
                if flight.awaited.contains(&node) {
                    left -= 1;
                }
                answers.insert(node, answered);
            }
            _ => break,
        }
    }
    // Answers already queued count too (a node thought unreachable).
    while let Ok((node, answered)) = flight.answers.try_recv() {
        if flight.selected.contains(&node) && !answers.contains_key(&node) {
            answers.insert(node, answered);
        }
    }
    let mut unanswered: Vec<(String, String)> = std::mem::take(&mut flight.unsent)
        .into_iter()
        .filter(|(n, _)| !answers.contains_key(n))
        .collect();
    unanswered.extend(
        flight
            .awaited
            .iter()
            .filter(|n| !answers.contains_key(*n))
            .map(|n| (n.clone(), format!("no answer within {timeout:?}"))),
    );
    let current = flight.current_revision;
    drop(flight);
    group(current, answers.into_iter().collect(), unanswered)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
