//! Pure views of the fleet: node status, summaries, `--where` filters and
//! `ListNodes` paging. Time comes in as `now`, so nothing here reads a clock.

use super::records::{Event, NodeRecord, PendingRecord, ReportSummary, Stage};
use ballast_proto::enums::NodeStatus;
use ballast_proto::limits::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use ballast_proto::pb;
use ballast_proto::spec::{self, Labels};

/// What status and summary read of one enrolled node.
pub struct NodeView<'a> {
    pub record: &'a NodeRecord,
    /// The newest last seen known: this controller's, or a live peer's summary.
    pub last_seen_ms: u64,
    pub report: Option<&'a ReportSummary>,
    pub desired: &'a pb::DesiredState,
    /// A live controller holds the node's stream: this one, or a peer whose
    /// liveness summary names it.
    pub held: bool,
    /// When the node's link was last lost without its doing: the controller
    /// holding it died, or this controller (re)started.
    pub lost_ms: u64,
    /// The current revision's rollout, if it has one.
    pub rollout: Option<&'a super::rollout::Active>,
}

/// The ages status compares with.
#[derive(Debug, Clone, Copy)]
pub struct Ages {
    pub stale_after_ms: u64,
    /// How long a node whose link was lost shows `reconnecting`.
    pub grace_ms: u64,
}

/// A node's status. Reconnecting: not held by any live controller, its link
/// lost (at `lost_ms`, after it was last seen and while it was not stale yet)
/// within the grace. Then, or otherwise, stale past `stale_after`.
pub fn status(n: &NodeView<'_>, now: u64, ages: Ages) -> NodeStatus {
    if n.record.revoked {
        return NodeStatus::Revoked;
    }
    let lost_while_fresh = n.lost_ms >= n.last_seen_ms
        && n.last_seen_ms > 0
        && n.lost_ms - n.last_seen_ms <= ages.stale_after_ms;
    if !n.held && lost_while_fresh && now.saturating_sub(n.lost_ms) <= ages.grace_ms {
        return NodeStatus::Reconnecting;
    }
    if now.saturating_sub(n.last_seen_ms) > ages.stale_after_ms {
        return NodeStatus::Stale;
    }
    match n.report {
        Some(r) if r.hash == n.desired.hash => {
            if r.failed_count > 0 {
                NodeStatus::Failed
            } else if r.drifted {
                NodeStatus::Drifted
            } else {
                NodeStatus::Converged
            }
        }
        _ => NodeStatus::Converging,
    }
}

pub fn summary(n: &NodeView<'_>, now: u64, ages: Ages) -> pb::NodeSummary {
    pb::NodeSummary {
        name: n.record.name.clone(),
        labels: n.record.labels.clone().into_iter().collect(),
        status: status(n, now, ages).into(),
        desired_revision: n.desired.revision,
        applied_revision: n.report.map(|r| r.revision).unwrap_or(0),
        last_seen_ms: n.last_seen_ms,
        failed_resources: n.report.map(|r| r.failed.clone()).unwrap_or_default(),
        failed_count: n.report.map(|r| r.failed_count as u32).unwrap_or(0),
        rollout: n
            .rollout
            .map(|a| super::rollout_view::placement(a, &n.record.name)),
    }
}

/// A reserved name: `pending` until it enrolls, `bootstrap-failed` when its
/// last attempt was refused.
pub fn pending_summary(p: &PendingRecord) -> pb::NodeSummary {
    let failed = p
        .timeline
        .last()
        .is_some_and(|e| e.stage == Stage::EnrollFailed);
    pb::NodeSummary {
        name: p.name.clone(),
        labels: p.labels.clone().into_iter().collect(),
        status: if failed {
            NodeStatus::BootstrapFailed
        } else {
            NodeStatus::Pending
        }
        .into(),
        ..Default::default()
    }
}

/// Operator and node timelines as one, in time order (operator events first
/// on equal times: enrollment comes before the first report).
pub fn merge_timelines(operator: &[Event], node: &[Event]) -> Vec<Event> {
    let mut all: Vec<Event> = operator.iter().chain(node).cloned().collect();
    all.sort_by_key(|e| e.at_ms);
    all
}

/// `key=value` filters, checked once.
pub fn parse_filters(filters: &[String]) -> Result<Vec<(&str, &str)>, String> {
    filters
        .iter()
        .map(|f| {
            f.split_once('=').ok_or_else(|| {
                format!("filter {f:?}: expected key=value, such as role=web or os.id=debian")
            })
        })
        .collect()
}

/// Whether a node matches `key=value`: a label, `name`, or a fact by dotted path.
pub fn matches_filter(
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

/// The page size a request gets: the default for 0, at most the cap.
pub fn page_size(asked: u32) -> usize {
    match asked {
        0 => DEFAULT_PAGE_SIZE as usize,
        n => n.min(MAX_PAGE_SIZE) as usize,
    }
}

const PAGE_TOKEN_PREFIX: &str = "after:";

/// The token that continues after node `last`. Clients treat it as opaque.
pub fn page_token(last: &str) -> String {
    format!("{PAGE_TOKEN_PREFIX}{last}")
}

/// The name a page token continues after; `None` for the first page.
pub fn parse_page_token(token: &str) -> Result<Option<&str>, String> {
    if token.is_empty() {
        return Ok(None);
    }
    match token.strip_prefix(PAGE_TOKEN_PREFIX) {
        Some(name) if spec::validate::node_name(name).is_ok() => Ok(Some(name)),
        _ => Err(format!(
            "page_token {token:?} is not one this controller issued: pass the previous \
             page's next_page_token, or nothing for the first page"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn record(revoked: bool) -> NodeRecord {
        NodeRecord {
            name: "web-1".into(),
            labels: BTreeMap::new(),
            cert_serial: "01".into(),
            enrolled_at_ms: 0,
            revoked,
            timeline: Vec::new(),
            last_seen_ms: 0,
        }
    }

    #[test]
    fn status_follows_revocation_staleness_and_the_report() {
        let desired = pb::DesiredState {
            revision: 3,
            hash: "sha256:a".into(),
            document: Vec::new(),
        };
        let ok = ReportSummary {
            revision: 3,
            hash: "sha256:a".into(),
            ..Default::default()
        };
        let failed = ReportSummary {
            failed: vec!["file[/x]".into()],
            failed_count: 40,
            ..ok.clone()
        };
        let rec = record(false);
        let view = |report, last_seen_ms| NodeView {
            record: &rec,
            last_seen_ms,
            report,
            desired: &desired,
            held: true,
            lost_ms: 0,
            rollout: None,
        };
        let ages = Ages {
            stale_after_ms: 1000,
            grace_ms: 5000,
        };
        let now = 100_000;
        let drifted = ReportSummary {
            drifted: true,
            ..ok.clone()
        };
        let old = ReportSummary {
            hash: "sha256:old".into(),
            ..ok.clone()
        };
        assert_eq!(
            status(&view(Some(&ok), now), now, ages),
            NodeStatus::Converged
        );
        assert_eq!(
            status(&view(Some(&ok), now - 1000), now, ages),
            NodeStatus::Converged
        );
        assert_eq!(
            status(&view(Some(&ok), now - 1001), now, ages),
            NodeStatus::Stale
        );
        assert_eq!(
            status(&view(Some(&drifted), now), now, ages),
            NodeStatus::Drifted
        );
        assert_eq!(
            status(&view(Some(&old), now), now, ages),
            NodeStatus::Converging
        );
        assert_eq!(status(&view(None, now), now, ages), NodeStatus::Converging);
        let s = summary(&view(Some(&failed), now), now, ages);
        assert_eq!(
            (NodeStatus::try_from(s.status), s.failed_count),
            (Ok(NodeStatus::Failed), 40)
        );
        let revoked = record(true);
        let v = NodeView {
            record: &revoked,
            last_seen_ms: now,
            report: Some(&ok),
            desired: &desired,
            held: false,
            lost_ms: now,
            rollout: None,
        };
        assert_eq!(status(&v, now, ages), NodeStatus::Revoked);
    }

    #[test]
    fn a_lost_link_shows_reconnecting_for_the_grace_then_stale() {
        let desired = pb::DesiredState {
            revision: 3,
            hash: "sha256:a".into(),
            document: Vec::new(),
        };
        let ok = ReportSummary {
            revision: 3,
            hash: "sha256:a".into(),
            ..Default::default()
        };
        let rec = record(false);
        let ages = Ages {
            stale_after_ms: 1000,
            grace_ms: 5000,
        };
        let view = |held, last_seen_ms, lost_ms| NodeView {
            record: &rec,
            last_seen_ms,
            report: Some(&ok),
            desired: &desired,
            held,
            lost_ms,
            rollout: None,
        };
        // Its controller died at 10_000, 500 ms after it was last seen.
        let lost = view(false, 9_500, 10_000);
        assert_eq!(status(&lost, 10_000, ages), NodeStatus::Reconnecting);
        // Past stale_after but within the grace: still reconnecting, not stale.
        assert_eq!(status(&lost, 15_000, ages), NodeStatus::Reconnecting);
        // After the grace: stale, as any node not heard from.
        assert_eq!(status(&lost, 15_001, ages), NodeStatus::Stale);
        // Held again (by any live controller): its report decides.
        assert_eq!(
            status(&view(true, 12_000, 10_000), 12_000, ages),
            NodeStatus::Converged
        );
        // Seen after the loss but held by nobody: it went away by itself.
        assert_eq!(
            status(&view(false, 11_000, 10_000), 11_500, ages),
            NodeStatus::Converged
        );
        assert_eq!(
            status(&view(false, 11_000, 10_000), 12_001, ages),
            NodeStatus::Stale
        );
        // Already stale when the link was lost: stays stale.
        assert_eq!(
            status(&view(false, 8_000, 10_000), 10_000, ages),
            NodeStatus::Stale
        );
        // Never seen (enrolled, never connected): not reconnecting.
        assert_eq!(
            status(&view(false, 0, 10_000), 10_000, ages),
            NodeStatus::Stale
        );
        // A controller restart is a loss at its start: the stored report
        // is not shown as current until the node is back.
        assert_ne!(
            status(&view(false, 9_900, 10_000), 10_100, ages),
            NodeStatus::Converged
        );
    }

    #[test]
    fn page_tokens_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(parse_page_token("").unwrap(), None);
        assert_eq!(
            parse_page_token(&page_token("web-7")).unwrap(),
            Some("web-7")
        );
        let e = parse_page_token("after:../x").unwrap_err();
        assert!(
            e.contains("page_token") && e.contains("next_page_token"),
            "{e}"
        );
        assert_eq!(page_size(0), 500);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(1_000_000), 1000);
    }
}
