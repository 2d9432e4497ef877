//! Plans (`ballast plan`): the proposed desired state rendered for every
//! selected node, stored nowhere, sent to each agent's plan stream (never its
//! watch), and the agents' dry runs grouped by identical change set.
//!
//! Invariants: a plan's document never reaches a node's `Feed` (a round-1
//! agent would apply it); a node answers only plans sent to it (the name is
//! the certificate's); every answer is bounded like a report.
//!
//! Routing is in this controller's memory (`Hub`): a node whose plan stream
//! is held by another controller (several controllers on etcd) is listed as
//! unanswered, with that reason. Routing through the store is later work.

use super::{Fleet, FleetError, Result, revisions, view};
use ballast_proto::enums::Outcome;
use ballast_proto::pb;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long `ballast plan` waits for the agents when the request says 0.
pub const DEFAULT_PLAN_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait a request may ask for.
pub const MAX_PLAN_TIMEOUT: Duration = Duration::from_secs(600);
/// Plans queued to one node's stream at once; past it the node is busy.
pub const PLAN_QUEUE: usize = 4;
/// Plans waiting for answers on this controller at once.
pub const MAX_PLANS_IN_FLIGHT: usize = 16;
/// The groups of a plan's answer stop before their encoding passes this
/// (node names are always all there: the counts and the exit code hold).
pub const MAX_PLAN_GROUP_BYTES: usize = 3 * 1024 * 1024;

/// One node's share of a plan: name, document, its hash.
pub type Target = (String, Vec<u8>, String);

/// One node's answer to a plan.
#[derive(Debug, Clone)]
pub enum Answer {
    /// The dry run's report (already checked against the report bounds).
    Report(pb::RunReport),
    /// The agent refused or could not run the document, and why.
    Refused(String),
}

struct Waiting {
    /// Node → the hash of the document it was sent.
    nodes: HashMap<String, String>,
    tx: mpsc::UnboundedSender<(String, Answer)>,
}

#[derive(Default)]
struct HubInner {
    /// Node → its open plan stream (the newest; a new one replaces it).
    streams: HashMap<String, mpsc::Sender<pb::PlanRequest>>,
    /// Plan id → the nodes that have not answered yet.
    waiting: HashMap<String, Waiting>,
    /// The server is stopping: streams end, none open.
    closed: bool,
}

/// Routes plan requests to nodes' plan streams and their answers back.
#[derive(Default)]
pub struct Hub {
    inner: Mutex<HubInner>,
}

/// One plan in flight: its answers arrive on `answers`; dropping it forgets
/// the plan (late answers are then refused).
pub struct Flight<'a> {
    hub: &'a Hub,
    pub id: String,
    pub answers: mpsc::UnboundedReceiver<(String, Answer)>,
    /// Nodes the plan could not be sent to, and why.
    pub unsent: Vec<(String, String)>,
    /// Nodes sent the plan.
    pub sent: usize,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.hub.lock().waiting.remove(&self.id);
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

    /// Sends each node its document; nodes without a stream here are `unsent`.
    pub fn start(&self, targets: Vec<Target>) -> Result<Flight<'_>> {
        let id = super::liveness::new_id();
        let (tx, answers) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        if inner.waiting.len() >= MAX_PLANS_IN_FLIGHT {
            return Err(FleetError::Conflict(format!(
                "{MAX_PLANS_IN_FLIGHT} plans are already waiting for answers on this controller; retry when one ends"
            )));
        }
        let mut nodes = HashMap::new();
        let mut unsent = Vec::new();
        for (name, document, hash) in targets {
            let req = pb::PlanRequest {
                id: id.clone(),
                document,
                hash: hash.clone(),
            };
            let reason = match inner.streams.get(&name).map(|s| s.try_send(req)) {
                Some(Ok(())) => {
                    nodes.insert(name, hash);
                    continue;
                }
                Some(Err(mpsc::error::TrySendError::Full(_))) => {
                    "busy: earlier plans are still queued for it"
                }
                Some(Err(mpsc::error::TrySendError::Closed(_))) => {
                    inner.streams.remove(&name);
                    "its plan stream closed"
                }
                None => {
                    "no plan stream to this controller (not connected, connected to another controller, or an agent without plans)"
                }
            };
            unsent.push((name, reason.to_owned()));
        }
        let sent = nodes.len();
        inner.waiting.insert(id.clone(), Waiting { nodes, tx });
        drop(inner);
        Ok(Flight {
            hub: self,
            id,
            answers,
            unsent,
            sent,
        })
    }

    /// A node's answer to plan `id`: accepted once, only from a node the
    /// plan was sent to, and only for the document it was sent.
    pub fn answer(&self, node: &str, id: &str, answer: Answer) -> Result<()> {
        let mut inner = self.lock();
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
        let _ = w.tx.send((node.to_owned(), answer));
        Ok(())
    }
}

impl Fleet {
    /// Renders `sources` for every unrevoked node matching `filters` (as
    /// `ballast nodes --where`): node, document, hash. Stores nothing.
    pub fn plan_targets(
        &self,
        sources: Vec<(String, String)>,
        filters: &[String],
    ) -> Result<(u64, Vec<Target>)> {
        if sources.is_empty() {
            return Err(FleetError::Invalid(
                "no sources given: pass YAML files with -f FILE or -f DIR".into(),
            ));
        }
        let spec = revisions::parse_sources(&sources)?;
        let filters = view::parse_filters(filters).map_err(FleetError::Invalid)?;
        let inner = self.lock();
        let mut render = revisions::Desired::new(&spec, 0);
        let mut out = Vec::new();
        for (name, node) in &inner.nodes {
            if node.record.revoked
                || !filters.iter().all(|(k, v)| {
                    view::matches_filter(name, &node.record.labels, &node.facts, k, v)
                })
            {
                continue;
            }
            let d = render.of(name, &node.record.labels);
            out.push((name.clone(), d.document, d.hash));
        }
        Ok((inner.current.number, out))
    }
}

/// Groups answers by identical change set (what would change, fail or be
/// skipped), largest group first; unanswered and refused nodes by name.
pub fn group(
    current_revision: u64,
    answers: Vec<(String, Answer)>,
    mut unanswered: Vec<(String, String)>,
) -> pb::PlanResponse {
    use prost::Message;
    let mut groups: BTreeMap<Vec<u8>, pb::PlanGroup> = BTreeMap::new();
    let mut refused = Vec::new();
    for (node, answer) in answers {
        match answer {
            Answer::Refused(reason) => refused.push(pb::PlanUnanswered { node, reason }),
            Answer::Report(r) => {
                let items: Vec<pb::PlanItem> = r
                    .resources
                    .into_iter()
                    .filter(|res| res.outcome != i32::from(Outcome::Unchanged))
                    .map(|res| pb::PlanItem {
                        id: res.id,
                        outcome: res.outcome,
                        changes: res.changes,
                        error: res.error,
                    })
                    .collect();
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

/// Waits for a flight's answers until all came or `timeout` passed; the
/// rest are unanswered.
pub async fn collect(
    mut flight: Flight<'_>,
    current_revision: u64,
    timeout: Duration,
) -> pb::PlanResponse {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut answers = Vec::new();
    while answers.len() < flight.sent {
        match tokio::time::timeout_at(deadline, flight.answers.recv()).await {
            Ok(Some(a)) => answers.push(a),
            _ => break,
        }
    }
    let answered: HashSet<&String> = answers.iter().map(|(n, _)| n).collect();
    let mut unanswered = std::mem::take(&mut flight.unsent);
    if let Some(w) = flight.hub.lock().waiting.get(&flight.id) {
        unanswered.extend(
            w.nodes
                .keys()
                .filter(|n| !answered.contains(n))
                .map(|n| (n.clone(), format!("no answer within {timeout:?}"))),
        );
    }
    drop(flight);
    group(current_revision, answers, unanswered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(hash: &str, items: &[(&str, Outcome, &str)]) -> Answer {
        Answer::Report(pb::RunReport {
            state_hash: hash.into(),
            noop: true,
            resources: items
                .iter()
                .map(|(id, o, c)| pb::ResourceOutcome {
                    id: (*id).into(),
                    outcome: i32::from(*o),
                    changes: if c.is_empty() {
                        vec![]
                    } else {
                        vec![(*c).into()]
                    },
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    #[test]
    fn plan_groups_nodes_by_identical_change_set() {
        let same = [
            (
                "file[/a]",
                Outcome::Changed,
                "replace content (1 -> 2 bytes)",
            ),
            ("user[x]", Outcome::Unchanged, ""),
        ];
        let resp = group(
            3,
            vec![
                ("n2".into(), report("h", &same)),
                ("n1".into(), report("h", &same)),
                (
                    "n3".into(),
                    report("h", &[("user[x]", Outcome::Unchanged, "")]),
                ),
                (
                    "n4".into(),
                    report("h", &[("package[p]", Outcome::Failed, "")]),
                ),
                ("n5".into(), Answer::Refused("bad document".into())),
            ],
            vec![("n6".into(), "no answer within 1s".into())],
        );
        assert_eq!(resp.groups[0].nodes, vec!["n1", "n2"]);
        assert_eq!(
            resp.groups[0].items.len(),
            1,
            "unchanged resources left out"
        );
        assert_eq!(
            (resp.changed_nodes, resp.unchanged_nodes, resp.failed_nodes),
            (2, 1, 1)
        );
        assert_eq!(resp.refused[0].node, "n5");
        assert_eq!(resp.unanswered[0].node, "n6");
    }

    #[test]
    fn plan_answers_only_from_nodes_sent_the_plan_once() {
        let hub = Hub::default();
        let mut rx = hub.open("a");
        let flight = hub
            .start(vec![
                ("a".into(), b"{}".to_vec(), "h".into()),
                ("b".into(), b"{}".to_vec(), "h".into()),
            ])
            .unwrap();
        assert_eq!(flight.sent, 1);
        assert_eq!(flight.unsent[0].0, "b");
        let req = rx.try_recv().unwrap();
        assert!(matches!(
            hub.answer("b", &req.id, report("h", &[])),
            Err(FleetError::Denied(_))
        ));
        assert!(matches!(
            hub.answer("a", &req.id, report("other", &[])),
            Err(FleetError::Invalid(_))
        ));
        hub.answer("a", &req.id, report("h", &[])).unwrap();
        assert!(matches!(
            hub.answer("a", &req.id, report("h", &[])),
            Err(FleetError::Denied(_))
        ));
        drop(flight);
        assert!(matches!(
            hub.answer("a", &req.id, report("h", &[])),
            Err(FleetError::NotFound(_))
        ));
    }
}
