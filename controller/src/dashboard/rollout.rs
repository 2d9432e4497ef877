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

fn status_json(s: &pb::RolloutStatus, now: u64) -> Value {
    let waves: Vec<Value> = s
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let started = matches!(w.state.as_str(), "passed" | "current");
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
        })
        .collect();
    let baking = (s.phase == "running" && s.healthy_since_ms > 0).then(|| {
        let done = now.saturating_sub(s.healthy_since_ms).min(s.bake_ms);
        json!({
            "done": span(done),
            "left": span(s.bake_ms - done),
            "percent": (done * 100).checked_div(s.bake_ms).unwrap_or(100),
        })
    });
    let moved: u64 = s
        .waves
        .iter()
        .filter(|w| matches!(w.state.as_str(), "passed" | "current"))
        .map(|w| w.nodes.len() as u64)
        .sum();
    json!({
        "revision": s.revision,
        "base": s.base,
        "phase": s.phase,
        "final": matches!(s.phase.as_str(), "done" | "aborted"),
        "reason": s.reason,
        "wave": s.wave,
        "wave_count": s.waves.len(),
        "bake": span(s.bake_ms),
        "max_failed": s.max_failed,
        "baking": baking,
        "moved": if s.phase == "aborted" { 0 } else { moved },
        "nodes": s.waves.iter().map(|w| w.nodes.len() as u64).sum::<u64>(),
        "waves": waves,
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
}
