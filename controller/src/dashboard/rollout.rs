//! The rollout of the current revision as the dashboard shows it: waves,
//! each wave's gate and progress, the phase. One context feeds the rollout
//! page, its live fragment (`/rollout/progress`, which `static/rollout.js`
//! swaps in) and the fleet page's summary, so all three agree.

use crate::fleet::Fleet;
use ballast_proto::pb;
use serde_json::{Value, json};
use std::time::Duration;

/// Node names shown per wave (and failed ones); the rest are counted.
pub(super) const NAMES_SHOWN: usize = 10;

/// The script that refreshes the progress in place.
pub(super) const SCRIPT: &str = include_str!("static/rollout.js");

/// A duration as an operator reads it, to the second (`1m 30s`), or in
/// milliseconds below one second.
fn span(ms: u64) -> String {
    if ms > 0 && ms < 1000 {
        return format!("{ms} ms");
    }
    if ms == 0 {
        return "0s".into();
    }
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

fn first(names: &[String]) -> (Vec<&String>, usize) {
    let shown: Vec<&String> = names.iter().take(NAMES_SHOWN).collect();
    (shown, names.len().saturating_sub(NAMES_SHOWN))
}

/// What the rollout templates read: `{"current_revision": N, "rollout":
/// null}` when the current revision has none.
pub(super) fn context(fleet: &Fleet) -> Value {
    let now = fleet.clock().now_ms();
    json!({
        "current_revision": fleet.current_revision(),
        "rollout": summary(fleet),
        "updated": super::pages::time(now),
    })
}

/// The rollout of the current revision, or `Null` when it has none.
pub(super) fn summary(fleet: &Fleet) -> Value {
    match fleet.rollout_status() {
        Some(s) => status_json(&s, fleet.clock().now_ms()),
        None => Value::Null,
    }
}

/// One wave as the templates show it.
fn wave_json(i: usize, w: &pb::RolloutWave) -> Value {
    let started = matches!(w.state.as_str(), "passed" | "current" | "at-once");
    let total = w.nodes.len() as u64;
    let converged = w.converged as u64;
    let (names, names_more) = first(&w.nodes);
    let (failed, failed_more) = first(&w.failed);
    json!({
        "number": i + 1,
        "state": w.state,
        "total": total,
        // Counts of a wave not started are against the base revision.
        "started": started,
        "converged": converged,
        "failed_count": w.failed.len(),
        "failed": failed,
        "failed_more": failed_more,
        "pending": w.pending,
        "percent": (converged * 100).checked_div(total).unwrap_or(100),
        "names": names,
        "names_more": names_more,
    })
}

/// One policy's track: its gate, how far its current wave has baked, its
/// waves.
fn policy_json(p: &pb::RolloutPolicyStatus, phase: &str, now: u64) -> Value {
    let baking = (phase == "running" && p.healthy_since_ms > 0 && !p.done).then(|| {
        let done = now.saturating_sub(p.healthy_since_ms).min(p.bake_ms);
        json!({
            "done": span(done),
            "left": span(p.bake_ms - done),
            "percent": (done * 100).checked_div(p.bake_ms).unwrap_or(100),
        })
    });
    json!({
        "policy": p.policy,
        "wave": p.wave,
        "wave_count": p.waves.len(),
        "bake": span(p.bake_ms),
        "max_failed": p.max_failed,
        "baking": baking,
        "done": p.done,
        "waves": p.waves.iter().enumerate().map(|(i, w)| wave_json(i, w)).collect::<Vec<_>>(),
    })
}

fn status_json(s: &pb::RolloutStatus, now: u64) -> Value {
    // An older controller's answer has no per-policy list: its one policy
    // is in the top-level fields.
    let policies: Vec<pb::RolloutPolicyStatus> = if s.policies.is_empty() {
        vec![pb::RolloutPolicyStatus {
            policy: "rollout".into(),
            wave: s.wave,
            waves: s.waves.clone(),
            bake_ms: s.bake_ms,
            max_failed: s.max_failed,
            healthy_since_ms: s.healthy_since_ms,
            done: s.phase == "done",
        }]
    } else {
        s.policies.clone()
    };
    let moved: u64 = policies
        .iter()
        .flat_map(|p| &p.waves)
        .chain(&s.at_once)
        .filter(|w| matches!(w.state.as_str(), "passed" | "current" | "at-once"))
        .map(|w| w.nodes.len() as u64)
        .sum();
    let nodes: u64 = policies
        .iter()
        .flat_map(|p| &p.waves)
        .chain(&s.at_once)
        .map(|w| w.nodes.len() as u64)
        .sum();
    let tracks: Vec<Value> = policies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut v = policy_json(p, &s.phase, now);
            // Element ids: the first policy's waves keep the plain ones.
            v["prefix"] = match i {
                0 => json!(""),
                i => json!(format!("policy-{}-", i + 1)),
            };
            v
        })
        .collect();
    let first = tracks[0].clone();
    json!({
        "revision": s.revision,
        "base": s.base,
        "phase": s.phase,
        "final": matches!(s.phase.as_str(), "done" | "aborted"),
        "reason": s.reason,
        // The first policy's track, shown first (the only one's when there
        // is one); the others after it, each with its own gate and waves.
        "policy": first["policy"],
        "wave": first["wave"],
        "wave_count": first["wave_count"],
        "bake": first["bake"],
        "max_failed": first["max_failed"],
        "baking": first["baking"],
        "waves": first["waves"],
        "tracks": tracks,
        "at_once": s.at_once.as_ref().map(|w| wave_json(0, w)),
        "moved": if s.phase == "aborted" { 0 } else { moved },
        "nodes": nodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(state: &str, nodes: &[&str], converged: u32, failed: &[&str]) -> pb::RolloutWave {
        pb::RolloutWave {
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
            state: state.into(),
            converged,
            failed: failed.iter().map(|n| (*n).to_owned()).collect(),
            pending: nodes.len() as u32 - converged - failed.len() as u32,
        }
    }

    #[test]
    fn rollout_context_shows_gate_progress_and_bounded_names() {
        let many: Vec<String> = (0..25).map(|i| format!("prod-{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let s = pb::RolloutStatus {
            revision: 7,
            base: 6,
            phase: "running".into(),
            wave: 1,
            waves: vec![wave("current", &["dev-1", "dev-2"], 2, &[]), {
                wave("waiting", &many, 25, &[])
            }],
            bake_ms: 60_000,
            max_failed: 1,
            healthy_since_ms: 1_000,
            reason: String::new(),
            ..Default::default()
        };
        let v = status_json(&s, 16_000);
        assert_eq!(v["baking"]["done"], "15s");
        assert_eq!(v["baking"]["left"], "45s");
        assert_eq!(v["baking"]["percent"], 25);
        assert_eq!(v["bake"], "1m");
        assert_eq!(v["moved"], 2);
        assert_eq!(v["final"], false);
        assert_eq!(v["waves"][0]["percent"], 100);
        assert_eq!(v["waves"][1]["started"], false);
        assert_eq!(
            v["waves"][1]["names"].as_array().unwrap().len(),
            NAMES_SHOWN
        );
        assert_eq!(v["waves"][1]["names_more"], 15);
    }

    /// Every policy of a rollout is shown, each with its own gate and
    /// waves, and the nodes no policy paces are counted as moved.
    #[test]
    fn rollout_context_shows_every_policy_and_the_nodes_moved_at_once() {
        let policy = |name: &str, wave: u32, waves: Vec<pb::RolloutWave>| pb::RolloutPolicyStatus {
            policy: name.into(),
            wave,
            waves,
            bake_ms: 120_000,
            max_failed: 2,
            healthy_since_ms: 0,
            done: false,
        };
        let s = pb::RolloutStatus {
            revision: 3,
            base: 2,
            phase: "running".into(),
            policies: vec![
                policy("rollout", 1, vec![wave("current", &["web-1"], 1, &[])]),
                policy(
                    "groups.db.rollout",
                    2,
                    vec![
                        wave("passed", &["db-1"], 1, &[]),
                        wave("current", &["db-2", "db-3"], 0, &["db-3"]),
                    ],
                ),
            ],
            at_once: Some(pb::RolloutWave {
                state: "at-once".into(),
                ..wave("at-once", &["lone-1"], 1, &[])
            }),
            ..Default::default()
        };
        let v = status_json(&s, 0);
        assert_eq!(v["policy"], "rollout");
        assert_eq!(v["tracks"].as_array().unwrap().len(), 2);
        assert_eq!(v["tracks"][1]["policy"], "groups.db.rollout");
        assert_eq!(v["tracks"][1]["prefix"], "policy-2-");
        assert_eq!(v["tracks"][1]["max_failed"], 2);
        assert_eq!(v["tracks"][1]["waves"][1]["failed_count"], 1);
        assert_eq!(v["at_once"]["total"], 1);
        assert_eq!(v["nodes"], 5);
        assert_eq!(
            v["moved"], 5,
            "every wave passed or current, and the one at once"
        );
    }
}
