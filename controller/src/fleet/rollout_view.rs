//! What operators read of the rollout of the current revision: its status
//! per policy and wave (`ballast rollout status`, `apply --wait`, the
//! dashboard), and where one node stands in it (`ballast nodes`).

use super::rollout::{Active, Phase, TrackState, counts};
use super::{Fleet, Inner, keys};
use ballast_proto::pb;

/// One track's waves as operators read them. A waiting wave's nodes are
/// all pending: they are still on the base revision.
fn waves(inner: &Inner, phase: Phase, t: &TrackState) -> Vec<pb::RolloutWave> {
    t.waves
        .iter()
        .enumerate()
        .map(|(i, names)| {
            let state = match (phase, t.done, i.cmp(&t.wave)) {
                (Phase::Aborted, _, _) => "aborted",
                (_, true, _) | (_, _, std::cmp::Ordering::Less) => "passed",
                (_, _, std::cmp::Ordering::Equal) => "current",
                (_, _, std::cmp::Ordering::Greater) => "waiting",
            };
            let c = match state {
                "waiting" => Default::default(),
                _ => counts(inner, names),
            };
            pb::RolloutWave {
                nodes: names.clone(),
                state: state.into(),
                converged: c.converged.len() as u32,
                failed: c.failed,
                pending: match state {
                    "waiting" => names.len() as u32,
                    _ => c.pending.len() as u32,
                },
            }
        })
        .collect()
}

/// Where `name` stands in the rollout `a`.
pub(super) fn placement(a: &Active, name: &str) -> pb::NodeRollout {
    let r = &a.record;
    let mut out = pb::NodeRollout {
        revision: r.revision,
        base: r.base,
        phase: r.phase.as_str().into(),
        ..Default::default()
    };
    let state = match a.placement.get(name) {
        Some(&(t, w)) => {
            let track = &r.tracks[t];
            out.policy = track.policy.clone();
            out.wave = w as u32 + 1;
            out.waves = track.waves.len() as u32;
            out.current_wave = track.wave as u32 + 1;
            match r.phase {
                Phase::Done => "done",
                Phase::Aborted => "aborted",
                _ if track.done || w < track.wave => "passed",
                _ if w == track.wave => "current",
                _ => "waiting",
            }
        }
        None if r.at_once.binary_search_by(|n| n.as_str().cmp(name)).is_ok() => match r.phase {
            Phase::Aborted => "aborted",
            _ => "at-once",
        },
        None => match r.phase {
            Phase::Done => "done",
            Phase::Aborted => "aborted",
            _ => "late",
        },
    };
    out.state = state.into();
    out
}

impl Fleet {
    /// The rollout of the current revision, for `ballast rollout status`.
    pub fn rollout_status(&self) -> Option<pb::RolloutStatus> {
        let inner = self.lock();
        let a = inner.rollout.as_ref()?;
        let r = &a.record;
        let policies: Vec<pb::RolloutPolicyStatus> = r
            .tracks
            .iter()
            .map(|t| pb::RolloutPolicyStatus {
                policy: t.policy.clone(),
                wave: t.wave as u32 + 1,
                waves: waves(&inner, r.phase, t),
                bake_ms: t.bake_ms,
                max_failed: t.max_failed,
                healthy_since_ms: t.healthy_since_ms,
                done: t.done,
            })
            .collect();
        let at_once = (!r.at_once.is_empty()).then(|| {
            let c = counts(&inner, &r.at_once);
            pb::RolloutWave {
                nodes: r.at_once.clone(),
                state: "at-once".into(),
                converged: c.converged.len() as u32,
                failed: c.failed,
                pending: c.pending.len() as u32,
            }
        });
        let first = policies.first().cloned().unwrap_or_default();
        Some(pb::RolloutStatus {
            revision: r.revision,
            base: r.base,
            phase: r.phase.as_str().into(),
            wave: first.wave.max(1),
            waves: first.waves,
            bake_ms: first.bake_ms,
            max_failed: first.max_failed,
            healthy_since_ms: first.healthy_since_ms,
            reason: r.reason.clone(),
            policies,
            at_once,
            gate_failed: r.gate_failed,
        })
    }
}

impl Fleet {
    /// How the rollout of each of `revisions` ended or stands, from its
    /// stored record: `None` for a revision that had none (or whose record
    /// cannot be read). A rollout still running or paused when a later
    /// revision was applied was superseded by it. Reads only the phase of
    /// each record (for the dashboard's recent revisions).
    pub fn rollout_outcomes(&self, revisions: &[u64]) -> Vec<Option<&'static str>> {
        #[derive(serde::Deserialize)]
        struct Outcome {
            phase: Phase,
        }
        let current = self.current_revision();
        revisions
            .iter()
            .map(|&n| {
                let key = keys::rollout(n);
                let entry = match self.store.get(&key) {
                    Ok(e) => e?,
                    Err(e) => {
                        tracing::warn!(key, error = %e, "rollout record unreadable");
                        return None;
                    }
                };
                let o: Outcome = serde_json::from_slice(&entry.value).ok()?;
                Some(match o.phase {
                    Phase::Running | Phase::Paused if n != current => "superseded",
                    p => p.as_str(),
                })
            })
            .collect()
    }
}
