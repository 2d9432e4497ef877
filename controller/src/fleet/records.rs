//! What the fleet stores, one type per key family (see `keys`), and the
//! bounded timeline both node records carry.

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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub at_ms: u64,
    pub stage: String,
    pub detail: String,
}

/// Appends an event, then drops the oldest until the timeline is within its
/// count and byte bounds.
pub fn push_event(timeline: &mut Vec<Event>, at_ms: u64, stage: &str, detail: impl Into<String>) {
    let mut detail = detail.into();
    limits::truncate(&mut detail, EVENT_DETAIL_MAX_BYTES);
    timeline.push(Event {
        at_ms,
        stage: stage.to_owned(),
        detail,
    });
    let size = |e: &Event| e.stage.len() + e.detail.len() + 16;
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

pub fn summarize(report: &pb::RunReport) -> ReportSummary {
    let failed_ids = report
        .resources
        .iter()
        .filter(|r| r.outcome == pb::Outcome::Failed as i32)
        .map(|r| r.id.clone());
    let failed_count = report
        .resources
        .iter()
        .filter(|r| r.outcome == pb::Outcome::Failed as i32)
        .count();
    let changed = report
        .resources
        .iter()
        .any(|r| r.outcome == pb::Outcome::Changed as i32);
    ReportSummary {
        revision: report.revision,
        hash: report.state_hash.clone(),
        failed: failed_ids.take(MAX_SUMMARY_FAILED).collect(),
        failed_count,
        drifted: changed && report.trigger != "change",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_is_bounded_by_count_and_bytes() {
        let mut t = Vec::new();
        for i in 0..200 {
            push_event(&mut t, i, "converged", format!("revision {i}"));
        }
        assert_eq!(t.len(), TIMELINE_CAP);
        assert_eq!(t.last().unwrap().detail, "revision 199");
        let mut t = Vec::new();
        for i in 0..200 {
            push_event(&mut t, i, "failing", "x".repeat(100_000));
        }
        let bytes: usize = t.iter().map(|e| e.stage.len() + e.detail.len()).sum();
        assert!(bytes <= TIMELINE_MAX_BYTES, "{bytes}");
        assert!(t.len() > 1 && t.last().unwrap().at_ms == 199);
        assert!(t[0].detail.contains("…[truncated"), "{}", t[0].detail.len());
    }
}
