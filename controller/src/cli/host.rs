//! A node's host figures as people and documents read them, for
//! `ballast node show` and the dashboard's node page alike. The rows are
//! plain text: the caller escapes them (`esc` on a terminal, autoescaping in
//! HTML), since a mount point is the node's own words.

use super::output::{time, time_json};
use ballast_proto::pb;

/// `1.5 GiB`: binary units, one decimal from KiB up.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `3d 4h 12m`, down to minutes (seconds below one minute).
pub fn uptime(seconds: u64) -> String {
    let (d, h, m) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60);
    match (d, h) {
        (0, 0) if m == 0 => format!("{seconds}s"),
        (0, 0) => format!("{m}m"),
        (0, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

fn share(used: u64, total: u64) -> String {
    let percent = if total == 0 {
        0
    } else {
        (used as u128 * 100 / total as u128) as u64
    };
    format!("{} of {} used ({percent}%)", bytes(used), bytes(total))
}

/// The figures as labelled rows, unescaped.
pub fn rows(rec: &pb::HostRecord) -> Vec<(&'static str, String)> {
    let f = rec.figures.clone().unwrap_or_default();
    let disk = |d: &Option<pb::DiskUse>| {
        d.as_ref().map_or_else(
            || "unknown".to_owned(),
            |d| format!("{} {}", d.mount, share(d.used_bytes, d.total_bytes)),
        )
    };
    vec![
        (
            "load",
            format!("{:.2} {:.2} {:.2}", f.load1, f.load5, f.load15),
        ),
        ("memory", share(f.memory_used_bytes, f.memory_total_bytes)),
        ("disk", disk(&f.root)),
        ("state fs", disk(&f.state)),
        ("uptime", uptime(f.uptime_seconds)),
        ("as of", time(rec.received_ms)),
    ]
}

/// The figures for `-o json|yaml`: numbers in base units.
pub fn doc(rec: &pb::HostRecord) -> serde_json::Value {
    let f = rec.figures.clone().unwrap_or_default();
    let disk = |d: &Option<pb::DiskUse>| {
        d.as_ref().map(|d| {
            serde_json::json!({"mount": d.mount, "total_bytes": d.total_bytes, "used_bytes": d.used_bytes})
        })
    };
    serde_json::json!({
        "load": [f.load1, f.load5, f.load15],
        "memory": {"total_bytes": f.memory_total_bytes, "used_bytes": f.memory_used_bytes},
        "root": disk(&f.root),
        "state": disk(&f.state),
        "uptime_seconds": f.uptime_seconds,
        "received_at": time_json(rec.received_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_figures_read_in_binary_units_and_days() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(uptime(42), "42s");
        assert_eq!(uptime(3 * 86_400 + 4 * 3600 + 12 * 60 + 5), "3d 4h 12m");
        assert_eq!(uptime(3700), "1h 1m");
        assert_eq!(share(1, 0), "1 B of 0 B used (0%)");
    }
}
