//! The stored record of a rollout (`meta/rollouts/{n}`): its phase, one
//! track per policy, the nodes no policy paces; and the record's older
//! one-policy shape, still read so an upgrade resumes a rollout in flight.

use ballast_proto::spec::{Labels, Spec};
use serde::{Deserialize, Serialize};

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    /// By an operator, or by a failure beyond a budget: no wave starts.
    Paused,
    /// Every node is back on the base revision.
    Aborted,
    /// Every wave of every track passed: every node gets the new revision.
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Aborted => "aborted",
            Phase::Done => "done",
        }
    }
}

/// The stored state of the rollout of one revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredRecord")]
pub struct RolloutRecord {
    pub revision: u64,
    /// The revision nodes not yet moved stay on.
    pub base: u64,
    /// One per distinct policy, fixed when the rollout starts; nodes
    /// enrolled later are in none and move when the rollout is done.
    pub tracks: Vec<TrackState>,
    /// Nodes no policy paces: they get the new revision at once.
    pub at_once: Vec<String>,
    pub phase: Phase,
    /// Paused by a gate (a failure beyond a budget), not by an operator.
    pub gate_failed: bool,
    /// Why it paused (or who paused, resumed, aborted it).
    pub reason: String,
}

/// One policy's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackState {
    /// Where the policy is given (`rollout`, `groups.web.rollout`, ...).
    pub policy: String,
    /// Node names per wave.
    pub waves: Vec<Vec<String>>,
    /// The current wave: nodes of waves `0..=wave` have the new revision.
    pub wave: usize,
    pub bake_ms: u64,
    pub max_failed: u32,
    /// Since when every node of the current wave is converged (0: not yet).
    pub healthy_since_ms: u64,
    pub wave_started_ms: u64,
    /// Every wave passed.
    pub done: bool,
}

/// A record as stored, also in its shape from before per-group policies
/// (one policy's fields at the top level).
#[derive(Deserialize)]
struct StoredRecord {
    revision: u64,
    base: u64,
    phase: Phase,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    gate_failed: bool,
    #[serde(default)]
    tracks: Option<Vec<TrackState>>,
    #[serde(default)]
    at_once: Vec<String>,
    #[serde(default)]
    waves: Vec<Vec<String>>,
    #[serde(default)]
    wave: usize,
    #[serde(default)]
    bake_ms: u64,
    #[serde(default)]
    max_failed: u32,
    #[serde(default)]
    healthy_since_ms: u64,
    #[serde(default)]
    wave_started_ms: u64,
}

impl From<StoredRecord> for RolloutRecord {
    fn from(s: StoredRecord) -> Self {
        let tracks = s.tracks.unwrap_or_else(|| {
            vec![TrackState {
                policy: "rollout".into(),
                waves: s.waves,
                wave: s.wave,
                bake_ms: s.bake_ms,
                max_failed: s.max_failed,
                healthy_since_ms: s.healthy_since_ms,
                wave_started_ms: s.wave_started_ms,
                done: s.phase == Phase::Done,
            }]
        });
        RolloutRecord {
            revision: s.revision,
            base: s.base,
            tracks,
            at_once: s.at_once,
            phase: s.phase,
            gate_failed: s.gate_failed,
            reason: s.reason,
        }
    }
}

impl RolloutRecord {
    pub(super) fn new(
        revision: u64,
        base: u64,
        spec: &Spec,
        nodes: &[(&str, &Labels)],
        now: u64,
    ) -> Self {
        let (tracks, at_once) = spec.rollout_tracks(nodes.iter().copied());
        RolloutRecord {
            revision,
            base,
            tracks: tracks
                .into_iter()
                .map(|t| TrackState {
                    policy: t.name,
                    waves: t.waves,
                    wave: 0,
                    bake_ms: t.policy.bake_ms,
                    max_failed: t.policy.max_failed,
                    healthy_since_ms: 0,
                    wave_started_ms: now,
                    done: false,
                })
                .collect(),
            at_once,
            phase: Phase::Running,
            gate_failed: false,
            reason: String::new(),
        }
    }

    /// Still in flight: a new apply starts from this rollout's base.
    pub fn in_flight(&self) -> bool {
        matches!(self.phase, Phase::Running | Phase::Paused | Phase::Aborted)
    }

    /// The nodes on the new revision while running or paused: every wave of
    /// a done track, the waves up to the current one of the others, and the
    /// nodes no policy paces.
    pub(super) fn moved(&self) -> impl Iterator<Item = &str> {
        self.tracks
            .iter()
            .flat_map(|t| {
                let upto = if t.done { t.waves.len() } else { t.wave + 1 };
                t.waves.iter().take(upto).flatten()
            })
            .chain(&self.at_once)
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record stored before per-group policies (one policy's fields at
    /// the top level) reads as one track, so an upgrade resumes it.
    #[test]
    fn a_record_from_before_per_group_policies_reads_as_one_track() {
        let old = r#"{"revision":3,"base":2,"waves":[["a"],["b"]],"wave":1,"bake_ms":60000,
            "max_failed":0,"phase":"paused","healthy_since_ms":5,"wave_started_ms":4,"reason":"x"}"#;
        let r: RolloutRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.tracks.len(), 1);
        let t = &r.tracks[0];
        assert_eq!(
            (t.policy.as_str(), t.wave, t.bake_ms, t.done),
            ("rollout", 1, 60_000, false)
        );
        assert_eq!(r.moved().collect::<Vec<_>>(), ["a", "b"]);
        let again: RolloutRecord =
            serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }
}
