//! The node page's chart of run durations: one bar per run of the node's
//! bounded history (`fleet::RunPoint`, the latest at the right), red where resources
//! failed, as numbers for an inline SVG the template draws. No script, and
//! nothing a node sent but numbers.

use crate::fleet::RunPoint;
use serde_json::{Value, json};

pub const WIDTH: u64 = 480;
pub const HEIGHT: u64 = 120;
/// Room below the bars for the axis and above them for the scale.
const PAD: u64 = 16;

/// The chart's numbers, or `Null` when the node has no run yet.
pub fn runs(runs: &[RunPoint]) -> Value {
    if runs.is_empty() {
        return Value::Null;
    }
    let max = runs.iter().map(|r| r.duration_ms).max().unwrap_or(0).max(1);
    let slot = WIDTH / crate::fleet::RUNS_KEPT as u64;
    let plot = HEIGHT - 2 * PAD;
    // The latest run at the right edge, however many there are.
    let empty = crate::fleet::RUNS_KEPT.saturating_sub(runs.len()) as u64;
    let bars: Vec<Value> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            // At least a pixel, so a 0 ms run still shows.
            let h = (r.duration_ms.saturating_mul(plot) / max).max(1);
            json!({
                "x": (empty + i as u64) * slot + 1,
                "y": PAD + plot - h,
                "w": slot - 2,
                "h": h,
                "failed": r.failed > 0,
                "title": format!(
                    "{} ms, started {}{}",
                    r.duration_ms,
                    super::pages::time(r.started_at_ms),
                    match r.failed {
                        0 => String::new(),
                        n => format!(", {n} failed"),
                    }
                ),
            })
        })
        .collect();
    let mut sorted: Vec<u64> = runs.iter().map(|r| r.duration_ms).collect();
    sorted.sort_unstable();
    json!({
        "width": WIDTH,
        "height": HEIGHT,
        "axis_y": HEIGHT - PAD,
        "scale_y": PAD - 4,
        "text_y": HEIGHT - 3,
        "max_ms": max,
        "median_ms": sorted[sorted.len() / 2],
        "last_ms": runs.last().map_or(0, |r| r.duration_ms),
        "count": runs.len(),
        "any_failed": runs.iter().any(|r| r.failed > 0),
        "bars": bars,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_chart_scales_bars_to_the_longest_run() {
        assert_eq!(runs(&[]), Value::Null);
        let points = [(100, 0), (400, 2), (0, 0)].map(|(ms, failed)| RunPoint {
            started_at_ms: 1_000,
            duration_ms: ms,
            failed,
        });
        let c = runs(&points);
        let plot = HEIGHT - 2 * PAD;
        assert_eq!(c["bars"][1]["h"], plot);
        assert_eq!(c["bars"][0]["h"], plot / 4);
        assert_eq!(c["bars"][2]["h"], 1);
        assert_eq!(c["bars"][1]["failed"], true);
        assert_eq!(
            (c["max_ms"].clone(), c["median_ms"].clone()),
            (json!(400), json!(100))
        );
        let slot = WIDTH / crate::fleet::RUNS_KEPT as u64;
        let last = crate::fleet::RUNS_KEPT as u64 - 1;
        assert_eq!(
            c["bars"][2]["x"],
            last * slot + 1,
            "the latest at the right"
        );
        assert!(
            c["bars"][1]["title"]
                .as_str()
                .unwrap()
                .ends_with(", 2 failed")
        );
    }
}
