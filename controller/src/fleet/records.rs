//! What the fleet stores, one type per key family (see `keys`), and the
//! bounded timeline both node records carry.

use ballast_proto::enums::{Outcome, Trigger};
use ballast_proto::limits::{self, MAX_SUMMARY_FAILED};
use ballast_proto::pb;
use ballast_proto::spec::Labels;
use serde::{Deserialize, Serialize};

/// Timeline entries kept per record; older ones are dropped.
pub const TIMELINE_CAP: usize = 64;
/// Bytes of stage and detail kept per record's timeline; older entries are dropped.
pub const TIMELINE_MAX_BYTES: usize = 32 * 1024;
/// Longest event detail; longer ones are truncated visibly.
pub const EVENT_DETAIL_MAX_BYTES: usize = 1024;
/// Runs whose duration a node's status keeps (the dashboard's chart).
pub const RUNS_KEPT: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevisionRecord {
    pub number: u64,
    pub author: String,
    pub created_at_ms: u64,
    pub hash: String,
    pub message: String,
    pub restored_from: u64,
    pub sources: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: Option<String>,
    pub labels: Labels,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub used_by: Option<String>,
    /// With `name`: may enroll over a revoked node of that name.
    #[serde(default)]
    pub replace_revoked: bool,
}

/// A timeline event's kind: one closed set, stored and shown by its
/// kebab-case name (`first-report`), which `as_str` spells the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Operator and bootstrap events, in the node's or reservation's record.
    TokenIssued,
    EnrollFailed,
    Enrolled,
    Labels,
    Revoked,
    /// Run events, in the node's own status record.
    FirstReport,
    Converged,
    Failing,
    Drifted,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::TokenIssued => "token-issued",
            Stage::EnrollFailed => "enroll-failed",
            Stage::Enrolled => "enrolled",
            Stage::Labels => "labels",
            Stage::Revoked => "revoked",
            Stage::FirstReport => "first-report",
            Stage::Converged => "converged",
            Stage::Failing => "failing",
            Stage::Drifted => "drifted",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub at_ms: u64,
    pub stage: Stage,
    pub detail: String,
}

/// Appends an event, then drops the oldest until the timeline is within its
/// count and byte bounds.
pub fn push_event(timeline: &mut Vec<Event>, at_ms: u64, stage: Stage, detail: impl Into<String>) {
    let mut detail = detail.into();
    limits::truncate(&mut detail, EVENT_DETAIL_MAX_BYTES);
    timeline.push(Event {
        at_ms,
        stage,
        detail,
    });
    let size = |e: &Event| e.stage.as_str().len() + e.detail.len() + 16;
    let mut bytes: usize = timeline.iter().map(size).sum();
    let mut drop = timeline.len().saturating_sub(TIMELINE_CAP);
    bytes -= timeline[..drop].iter().map(size).sum::<usize>();
    while bytes > TIMELINE_MAX_BYTES && drop + 1 < timeline.len() {
        bytes -= size(&timeline[drop]);
        drop += 1;
    }
    timeline.drain(..drop);
}

/// What operators decide about an enrolled node. Written only by enroll,
/// revoke, label and the bootstrap log of the node's own reserved name:
/// never by the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub labels: Labels,
    pub cert_serial: String,
    pub enrolled_at_ms: u64,
    pub revoked: bool,
    /// Operator and bootstrap events (token-issued, enrolled, labels, revoked).
    #[serde(default)]
    pub timeline: Vec<Event>,
    /// Only in records stored before `status/` existed; read, never written.
    #[serde(default, skip_serializing)]
    pub last_seen_ms: u64,
}

/// What a node says about itself. Written only by its reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The certificate the reports came with: a status of an earlier
    /// enrollment of the same name is ignored.
    pub cert_serial: String,
    pub last_seen_ms: u64,
    #[serde(default)]
    pub reported: bool,
    /// Run events (first-report, converged, failing, drifted).
    #[serde(default)]
    pub timeline: Vec<Event>,
    /// The last [`RUNS_KEPT`] runs (dry runs left out), oldest first.
    #[serde(default)]
    pub runs: Vec<RunPoint>,
}

/// One run in a node's status: when it started, how long it took, how many
/// resources failed. Short keys: every report rewrites the status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPoint {
    #[serde(rename = "t")]
    pub started_at_ms: u64,
    #[serde(rename = "ms")]
    pub duration_ms: u64,
    #[serde(rename = "f", default)]
    pub failed: u32,
}

/// Appends a run, dropping the oldest past [`RUNS_KEPT`].
pub fn push_run(runs: &mut Vec<RunPoint>, run: RunPoint) {
    runs.push(run);
    let over = runs.len().saturating_sub(RUNS_KEPT);
    runs.drain(..over);
}

/// A name reserved by a token (`token create --name`), not enrolled yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingRecord {
    pub name: String,
    pub labels: Labels,
    pub timeline: Vec<Event>,
    /// After this the record no longer reserves the name nor shows (0 in
    /// records stored before expiry existed: see `Fleet::open`).
    #[serde(default)]
    pub expires_at_ms: u64,
}

/// The last report, reduced to what status needs, bounded.
#[derive(Debug, Clone, Default)]
pub struct ReportSummary {
    pub revision: u64,
    pub hash: String,
    /// The first failed ids, at most `MAX_SUMMARY_FAILED`.
    pub failed: Vec<String>,
    pub failed_count: usize,
    /// The run repaired drift (changed something without a new desired state).
    pub drifted: bool,
}

/// Reports are checked on receipt (`CheckedReport`); one stored by an older
/// controller may hold an unspecified trigger, which never counts as drift.
pub fn summarize(report: &pb::RunReport) -> ReportSummary {
    let is = |r: &pb::ResourceOutcome, o: Outcome| Outcome::try_from(r.outcome) == Ok(o);
    let failed_ids = report
        .resources
        .iter()
        .filter(|r| is(r, Outcome::Failed))
        .map(|r| r.id.clone());
    let failed_count = report
        .resources
        .iter()
        .filter(|r| is(r, Outcome::Failed))
        .count();
    let changed = report.resources.iter().any(|r| is(r, Outcome::Changed));
    let by_operator_change = Trigger::try_from(report.trigger)
        .map(|t| t == Trigger::Change)
        .unwrap_or(true);
    ReportSummary {
        revision: report.revision,
        hash: report.state_hash.clone(),
        failed: failed_ids.take(MAX_SUMMARY_FAILED).collect(),
        failed_count,
        drifted: changed && !by_operator_change,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_is_bounded_by_count_and_bytes() {
        let mut t = Vec::new();
        for i in 0..200 {
            push_event(&mut t, i, Stage::Converged, format!("revision {i}"));
        }
        assert_eq!(t.len(), TIMELINE_CAP);
        assert_eq!(t.last().unwrap().detail, "revision 199");
        let mut t = Vec::new();
        for i in 0..200 {
            push_event(&mut t, i, Stage::Failing, "x".repeat(100_000));
        }
        let bytes: usize = t
            .iter()
            .map(|e| e.stage.as_str().len() + e.detail.len())
            .sum();
        assert!(bytes <= TIMELINE_MAX_BYTES, "{bytes}");
        assert!(t.len() > 1 && t.last().unwrap().at_ms == 199);
        assert!(t[0].detail.contains("…[truncated"), "{}", t[0].detail.len());
    }

    #[test]
    fn run_history_keeps_the_last_runs_in_compact_form() {
        let mut runs = Vec::new();
        for i in 0..100u64 {
            push_run(
                &mut runs,
                RunPoint {
                    started_at_ms: i,
                    duration_ms: i * 10,
                    failed: 0,
                },
            );
        }
        assert_eq!(runs.len(), RUNS_KEPT);
        assert_eq!((runs[0].started_at_ms, runs[31].duration_ms), (68, 990));
        let json = serde_json::to_string(&runs[31]).unwrap();
        assert_eq!(json, r#"{"t":99,"ms":990,"f":0}"#);
        // A status stored before the history existed reads with none.
        let old: NodeStatus =
            serde_json::from_str(r#"{"cert_serial":"s","last_seen_ms":1}"#).unwrap();
        assert!(old.runs.is_empty());
    }

    #[test]
    fn stages_are_stored_by_the_names_they_are_shown_by() {
        use Stage::*;
        for stage in [
            TokenIssued,
            EnrollFailed,
            Enrolled,
            Labels,
            Revoked,
            FirstReport,
            Converged,
            Failing,
            Drifted,
        ] {
            let json = serde_json::to_string(&stage).unwrap();
            assert_eq!(json, format!("\"{}\"", stage.as_str()));
            assert_eq!(serde_json::from_str::<Stage>(&json).unwrap(), stage);
        }
        let e = serde_json::from_str::<Stage>("\"exploded\"").unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
    }
}
