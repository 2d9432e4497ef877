//! Bounds on what a node may send and on what fleet-wide answers may hold.
//!
//! Each bound sits far above what a real node produces, so only a broken or
//! hostile node meets one. The controller refuses a message over a bound at
//! the boundary (`CheckedReport`, `CheckedFacts`), naming the field and the
//! limit, and stores nothing of it; the agent fits its own reports to the same
//! bounds (`fit_report`) so that it is never refused.

use crate::enums::{Outcome, Trigger};
use crate::pb;

/// Largest encoded `RunReport` the controller accepts. Below
/// [`crate::MAX_MESSAGE_BYTES`] so that a node's detail (report, facts,
/// timeline, summary) always fits in one message.
pub const MAX_REPORT_BYTES: usize = 3 * 1024 * 1024;
/// Resources per report.
pub const MAX_REPORT_RESOURCES: usize = 100_000;
/// A resource id, `kind[name]` (a path is at most 4096 bytes).
pub const MAX_RESOURCE_ID_BYTES: usize = 4608;
/// Changes per resource.
pub const MAX_CHANGES_PER_RESOURCE: usize = 256;
/// One change as an operator reads it.
pub const MAX_CHANGE_BYTES: usize = 8192;
/// A resource's error text.
pub const MAX_ERROR_BYTES: usize = 16 * 1024;
/// A hash or backup tag (`sha256:` and 64 hex digits).
pub const MAX_TAG_BYTES: usize = 128;
/// The facts document, as JSON text.
pub const MAX_FACTS_BYTES: usize = 128 * 1024;
/// Nesting depth of the facts document (arrays and objects).
pub const MAX_FACTS_DEPTH: usize = 32;

/// A mount point in a node's host figures.
pub const MAX_MOUNT_BYTES: usize = 256;
/// Largest load average accepted in host figures.
pub const MAX_LOAD: f64 = 1e6;
/// The shortest interval between two stored host records of one node: the
/// least an agent may be set to (`--host-figures-every`), and what the
/// controller holds to whatever an agent sends (more often is acknowledged,
/// not stored). Its default on the agent is five minutes.
pub const MIN_HOST_FIGURES_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Content larger than this (either side) is not compared: its diff says
/// only the sizes (see [`crate::diff`]).
pub const MAX_DIFF_INPUT: usize = 256 * 1024;
/// Past this many cells (changed lines before × after) the middle of a diff
/// is shown as all removed, then all added, instead of aligned.
pub const MAX_DIFF_CELLS: usize = 1_000_000;
/// One file's content diff, cut at a line with a visible mark (it also fits
/// in one change line, [`MAX_CHANGE_BYTES`], where a plan carries it).
pub const MAX_DIFF_BYTES: usize = 6 * 1024;
/// All content diffs of one report together; past it, the diffs of later
/// files are left out and the first one left out says how many.
pub const MAX_REPORT_DIFF_BYTES: usize = 64 * 1024;
/// What `ballast diff` answers of content diffs, all groups together; past
/// it, later groups are left out (and counted).
pub const MAX_DIFF_ANSWER_BYTES: usize = 1024 * 1024;

/// `ListNodes` page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 500;
/// Largest `ListNodes` page size; larger requests get this many.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// A `ListNodes` page also ends before its encoded nodes pass this many bytes.
pub const MAX_PAGE_BYTES: usize = 2 * 1024 * 1024;
/// Failed resource ids listed in a node summary (`failed_count` has them all).
pub const MAX_SUMMARY_FAILED: usize = 16;

/// A report whose every field is within the bounds above and whose enums
/// (`trigger`, each `outcome`) are known values, none unspecified.
#[derive(Debug, Clone)]
pub struct CheckedReport(pb::RunReport);

impl CheckedReport {
    pub fn get(&self) -> &pb::RunReport {
        &self.0
    }

    pub fn into_inner(self) -> pb::RunReport {
        self.0
    }
}

fn over(field: &str, len: usize, max: usize) -> String {
    format!("report: {field} is {len} bytes; the limit is {max}")
}

impl TryFrom<pb::RunReport> for CheckedReport {
    type Error = String;

    fn try_from(mut r: pb::RunReport) -> Result<Self, String> {
        use prost::Message;
        // Never stored: read by name when a round-1 agent sent only it.
        let legacy = std::mem::take(&mut r.legacy_trigger);
        if r.trigger == 0 && !legacy.is_empty() {
            let t = Trigger::from_name(&legacy).ok_or_else(|| {
                let mut shown = legacy.clone();
                truncate(&mut shown, 64);
                format!(
                    "report: legacy_trigger: unknown name {shown:?}; expected one of {}",
                    Trigger::ALL
                        .iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            r.trigger = t.into();
        }
        if r.resources.len() > MAX_REPORT_RESOURCES {
            return Err(format!(
                "report: {} resources; the limit is {MAX_REPORT_RESOURCES}",
                r.resources.len()
            ));
        }
        Trigger::try_from(r.trigger).map_err(|e| format!("report: {e}"))?;
        if r.state_hash.len() > MAX_TAG_BYTES {
            return Err(over("state_hash", r.state_hash.len(), MAX_TAG_BYTES));
        }
        for (i, res) in r.resources.iter().enumerate() {
            Outcome::try_from(res.outcome).map_err(|e| format!("report: resources[{i}].{e}"))?;
            if res.id.len() > MAX_RESOURCE_ID_BYTES {
                return Err(over(
                    &format!("resources[{i}].id"),
                    res.id.len(),
                    MAX_RESOURCE_ID_BYTES,
                ));
            }
            if res.error.len() > MAX_ERROR_BYTES {
                return Err(over(
                    &format!("resources[{i}].error"),
                    res.error.len(),
                    MAX_ERROR_BYTES,
                ));
            }
            if res.backup.len() > MAX_TAG_BYTES {
                return Err(over(
                    &format!("resources[{i}].backup"),
                    res.backup.len(),
                    MAX_TAG_BYTES,
                ));
            }
            if res.changes.len() > MAX_CHANGES_PER_RESOURCE {
                return Err(format!(
                    "report: resources[{i}] has {} changes; the limit is {MAX_CHANGES_PER_RESOURCE}",
                    res.changes.len()
                ));
            }
            for (j, c) in res.changes.iter().enumerate() {
                if c.len() > MAX_CHANGE_BYTES {
                    return Err(over(
                        &format!("resources[{i}].changes[{j}]"),
                        c.len(),
                        MAX_CHANGE_BYTES,
                    ));
                }
            }
            if res.diff.len() > MAX_DIFF_BYTES {
                return Err(over(
                    &format!("resources[{i}].diff"),
                    res.diff.len(),
                    MAX_DIFF_BYTES,
                ));
            }
        }
        let diffs: usize = r.resources.iter().map(|res| res.diff.len()).sum();
        if diffs > MAX_REPORT_DIFF_BYTES {
            return Err(over("the diffs together", diffs, MAX_REPORT_DIFF_BYTES));
        }
        // Fields first, so the error names the field that is too large.
        let len = r.encoded_len();
        if len > MAX_REPORT_BYTES {
            return Err(over("the whole report", len, MAX_REPORT_BYTES));
        }
        Ok(CheckedReport(r))
    }
}

/// A facts document: a JSON object within the size and depth bounds.
#[derive(Debug, Clone)]
pub struct CheckedFacts {
    pub json: String,
    pub value: serde_json::Value,
}

impl TryFrom<pb::Facts> for CheckedFacts {
    type Error = String;

    fn try_from(f: pb::Facts) -> Result<Self, String> {
        if f.json.len() > MAX_FACTS_BYTES {
            return Err(format!(
                "facts: {} bytes of JSON; the limit is {MAX_FACTS_BYTES}",
                f.json.len()
            ));
        }
        // serde_json stops at 128 levels by itself; the depth bound is lower.
        let value: serde_json::Value =
            serde_json::from_str(&f.json).map_err(|e| format!("facts: not valid JSON: {e}"))?;
        if !value.is_object() {
            return Err("facts: expected a JSON object".into());
        }
        let depth = json_depth(&value);
        if depth > MAX_FACTS_DEPTH {
            return Err(format!(
                "facts: nested {depth} levels deep; the limit is {MAX_FACTS_DEPTH}"
            ));
        }
        Ok(CheckedFacts {
            json: f.json,
            value,
        })
    }
}

/// Host figures with every field present and in range: finite loads in
/// `0..=MAX_LOAD`, used at most total, mounts of at most
/// [`MAX_MOUNT_BYTES`] without control characters. A stored record is then
/// a few hundred bytes.
#[derive(Debug, Clone)]
pub struct CheckedHost(pb::HostFigures);

impl CheckedHost {
    pub fn into_inner(self) -> pb::HostFigures {
        self.0
    }
}

impl TryFrom<pb::HostFigures> for CheckedHost {
    type Error = String;

    fn try_from(h: pb::HostFigures) -> Result<Self, String> {
        for (field, v) in [("load1", h.load1), ("load5", h.load5), ("load15", h.load15)] {
            if !(0.0..=MAX_LOAD).contains(&v) {
                return Err(format!(
                    "host figures: {field} is {v}; allowed: 0 to {MAX_LOAD}"
                ));
            }
        }
        if h.memory_used_bytes > h.memory_total_bytes {
            return Err("host figures: memory used exceeds memory total".into());
        }
        for (field, disk) in [("root", &h.root), ("state", &h.state)] {
            let Some(d) = disk else {
                return Err(format!("host figures: {field} is missing"));
            };
            if d.mount.len() > MAX_MOUNT_BYTES {
                return Err(format!(
                    "host figures: {field}.mount is {} bytes; the limit is {MAX_MOUNT_BYTES}",
                    d.mount.len()
                ));
            }
            if d.mount.chars().any(char::is_control) {
                return Err(format!(
                    "host figures: {field}.mount has control characters"
                ));
            }
            if d.used_bytes > d.total_bytes {
                return Err(format!("host figures: {field} used exceeds its total"));
            }
        }
        Ok(CheckedHost(h))
    }
}

fn json_depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        serde_json::Value::Object(m) => 1 + m.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Cuts `s` to at most `max` bytes (on a character boundary), ending it with
/// a visible `…[truncated N bytes]` mark that fits within `max`.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let total = s.len();
    // The number cut has at most as many digits as the whole length.
    let mark_len = "…[truncated  bytes]".len() + total.to_string().len();
    let mut keep = max.saturating_sub(mark_len);
    while !s.is_char_boundary(keep) {
        keep -= 1;
    }
    let mark = format!("…[truncated {} bytes]", total - keep);
    s.truncate(keep);
    if keep + mark.len() <= max {
        s.push_str(&mark);
    }
}

/// Fits a report the agent built to the bounds the controller checks:
/// long texts are truncated visibly, extra changes summarised, and when the
/// whole report is still too large the unchanged resources' entries are
/// dropped (then everything past the limit), with a note in the last entry.
pub fn fit_report(r: &mut pb::RunReport) {
    use prost::Message;
    for res in &mut r.resources {
        truncate(&mut res.id, MAX_RESOURCE_ID_BYTES);
        truncate(&mut res.error, MAX_ERROR_BYTES);
        truncate(&mut res.backup, MAX_TAG_BYTES);
        if res.changes.len() > MAX_CHANGES_PER_RESOURCE {
            let extra = res.changes.len() - (MAX_CHANGES_PER_RESOURCE - 1);
            res.changes.truncate(MAX_CHANGES_PER_RESOURCE - 1);
            res.changes.push(format!("…and {extra} more changes"));
        }
        for c in &mut res.changes {
            truncate(c, MAX_CHANGE_BYTES);
        }
        crate::diff::cut(&mut res.diff, MAX_DIFF_BYTES);
    }
    fit_diffs(r);
    if r.resources.len() > MAX_REPORT_RESOURCES || r.encoded_len() > MAX_REPORT_BYTES {
        r.resources
            .retain(|res| res.outcome != i32::from(Outcome::Unchanged));
    }
    let mut dropped = 0usize;
    while r.resources.len() > MAX_REPORT_RESOURCES
        || (r.encoded_len() > MAX_REPORT_BYTES && !r.resources.is_empty())
    {
        r.resources.pop();
        dropped += 1;
    }
    if dropped > 0
        && let Some(last) = r.resources.last_mut()
    {
        last.changes.truncate(MAX_CHANGES_PER_RESOURCE - 1);
        last.changes.push(format!(
            "…report truncated: {dropped} more resources left out"
        ));
    }
}

/// Keeps a report's diffs within [`MAX_REPORT_DIFF_BYTES`]: in report order,
/// a diff that would pass the bound and every later one are left out, and
/// the first left out says how many.
fn fit_diffs(r: &mut pb::RunReport) {
    // Room for the note that says what was left out.
    const NOTE: usize = 160;
    let mut used = 0usize;
    let mut first_out: Option<usize> = None;
    let mut left_out = 0usize;
    for (i, res) in r.resources.iter_mut().enumerate() {
        if res.diff.is_empty() {
            continue;
        }
        if first_out.is_none() && used + res.diff.len() <= MAX_REPORT_DIFF_BYTES - NOTE {
            used += res.diff.len();
            continue;
        }
        first_out.get_or_insert(i);
        left_out += 1;
        res.diff.clear();
    }
    if let Some(i) = first_out {
        r.resources[i].diff = format!(
            "diff left out: this report's diffs reached their bound of {MAX_REPORT_DIFF_BYTES} bytes ({left_out} files' diffs left out)\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> pb::RunReport {
        pb::RunReport {
            trigger: Trigger::Resync.into(),
            ..Default::default()
        }
    }

    #[test]
    fn reports_with_unknown_or_unspecified_enums_are_refused_by_field() {
        let e = CheckedReport::try_from(pb::RunReport::default()).unwrap_err();
        assert!(e.starts_with("report: trigger: unspecified (0)"), "{e}");
        let mut r = report();
        r.trigger = 42;
        let e = CheckedReport::try_from(r).unwrap_err();
        assert!(e.contains("trigger: unknown value 42"), "{e}");
        let mut r = report();
        for outcome in [Outcome::Changed.into(), 7] {
            r.resources.push(pb::ResourceOutcome {
                id: "file[/x]".into(),
                outcome,
                ..Default::default()
            });
        }
        let e = CheckedReport::try_from(r.clone()).unwrap_err();
        assert!(
            e.starts_with("report: resources[1].outcome: unknown value 7; expected one of"),
            "{e}"
        );
        r.resources[1].outcome = 0;
        let e = CheckedReport::try_from(r.clone()).unwrap_err();
        assert!(e.contains("resources[1].outcome: unspecified (0)"), "{e}");
        r.resources[1].outcome = Outcome::Skipped.into();
        assert!(CheckedReport::try_from(r).is_ok());
    }

    #[test]
    fn truncation_is_visible_and_within_the_bound() {
        let mut s = "x".repeat(10_000);
        truncate(&mut s, 100);
        assert!(s.len() <= 100, "{}", s.len());
        assert!(s.ends_with("bytes]") && s.contains("…[truncated "), "{s}");
        let mut short = "ok".to_owned();
        truncate(&mut short, 100);
        assert_eq!(short, "ok");
        let mut multi = "é".repeat(1000);
        truncate(&mut multi, 51);
        assert!(multi.len() <= 51 && multi.contains("truncated"), "{multi}");
    }

    #[test]
    fn oversized_report_fields_are_refused_by_name() {
        let mut r = report();
        r.resources.push(pb::ResourceOutcome {
            id: "x".repeat(MAX_RESOURCE_ID_BYTES + 1),
            outcome: Outcome::Changed.into(),
            ..Default::default()
        });
        let e = CheckedReport::try_from(r.clone()).unwrap_err();
        assert!(e.contains("resources[0].id") && e.contains("4608"), "{e}");
        fit_report(&mut r);
        assert!(CheckedReport::try_from(r).is_ok());
    }

    #[test]
    fn fitted_reports_pass_the_check() {
        let mut r = report();
        for i in 0..2000 {
            r.resources.push(pb::ResourceOutcome {
                id: format!("file[/srv/{i}]"),
                outcome: pb::Outcome::Failed as i32,
                error: "e".repeat(MAX_ERROR_BYTES * 2),
                changes: vec!["c".repeat(100); 300],
                ..Default::default()
            });
        }
        fit_report(&mut r);
        let checked = CheckedReport::try_from(r).unwrap();
        let last = checked.get().resources.last().unwrap();
        assert!(
            last.changes.last().unwrap().contains("report truncated"),
            "{:?}",
            last.changes.last()
        );
    }

    fn with_diffs(n: usize, each: usize) -> pb::RunReport {
        let mut r = report();
        for i in 0..n {
            r.resources.push(pb::ResourceOutcome {
                id: format!("file[/srv/{i}]"),
                outcome: Outcome::Changed.into(),
                diff: "+x\n".repeat(each / 3),
                ..Default::default()
            });
        }
        r
    }

    /// One file's diff over its bound, or the diffs of a report over
    /// theirs, are refused naming the field; the agent's fitting keeps the
    /// first diffs whole and says how many it left out.
    #[test]
    fn report_diffs_are_bounded_per_file_and_per_report() {
        let big = with_diffs(1, MAX_DIFF_BYTES + 3);
        let e = CheckedReport::try_from(big.clone()).unwrap_err();
        assert_eq!(
            e,
            format!(
                "report: resources[0].diff is {} bytes; the limit is {MAX_DIFF_BYTES}",
                MAX_DIFF_BYTES + 3
            )
        );
        let mut fitted = big;
        fit_report(&mut fitted);
        let d = &fitted.resources[0].diff;
        assert!(
            d.len() <= MAX_DIFF_BYTES && d.ends_with(crate::diff::CUT_MARK),
            "{d}"
        );
        assert!(CheckedReport::try_from(fitted).is_ok());

        let many = with_diffs(40, 3000);
        let e = CheckedReport::try_from(many.clone()).unwrap_err();
        assert!(
            e.starts_with("report: the diffs together is 120000 bytes; the limit is 65536"),
            "{e}"
        );
        let mut fitted = many;
        fit_report(&mut fitted);
        let kept = fitted
            .resources
            .iter()
            .take_while(|r| r.diff.starts_with("+x"))
            .count();
        assert_eq!(kept, 21, "whole diffs first, in report order");
        assert_eq!(
            fitted.resources[kept].diff,
            "diff left out: this report's diffs reached their bound of 65536 bytes (19 files' diffs left out)\n"
        );
        assert!(
            fitted.resources[kept + 1..]
                .iter()
                .all(|r| r.diff.is_empty())
        );
        assert!(CheckedReport::try_from(fitted).is_ok());
    }

    #[test]
    fn host_figures_out_of_range_are_refused_naming_the_field() {
        fn disk(mount: &str, used: u64) -> Option<pb::DiskUse> {
            Some(pb::DiskUse {
                mount: mount.into(),
                total_bytes: 100,
                used_bytes: used,
            })
        }
        let ok = pb::HostFigures {
            load1: 0.5,
            memory_total_bytes: 10,
            memory_used_bytes: 5,
            root: disk("/", 50),
            state: disk("/var", 50),
            ..Default::default()
        };
        assert!(CheckedHost::try_from(ok.clone()).is_ok());
        let refused = |change: fn(&mut pb::HostFigures)| {
            let mut h = ok.clone();
            change(&mut h);
            CheckedHost::try_from(h).unwrap_err()
        };
        assert!(refused(|h| h.load5 = f64::NAN).contains("load5"));
        assert!(refused(|h| h.load15 = -1.0).contains("load15"));
        assert!(refused(|h| h.memory_used_bytes = 11).contains("memory"));
        assert!(refused(|h| h.state = None).contains("state is missing"));
        assert!(refused(|h| h.root = disk("/", 101)).contains("root used"));
        let long = refused(|h| h.root = disk(&"m".repeat(MAX_MOUNT_BYTES + 1), 0));
        // (a fn pointer: the closure captures nothing)
        assert!(
            long.contains("root.mount") && long.contains("256"),
            "{long}"
        );
        assert!(refused(|h| h.state = disk("/x\x1b[2J", 0)).contains("control"));
    }

    #[test]
    fn deep_or_large_facts_are_refused() {
        let deep = format!(
            "{}{}",
            "{\"a\":".repeat(40),
            "1".to_owned() + &"}".repeat(40)
        );
        let e = CheckedFacts::try_from(pb::Facts { json: deep }).unwrap_err();
        assert!(e.contains("nested 40 levels") && e.contains("32"), "{e}");
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_FACTS_BYTES));
        let e = CheckedFacts::try_from(pb::Facts { json: big }).unwrap_err();
        assert!(e.contains("facts:") && e.contains("131072"), "{e}");
        assert!(CheckedFacts::try_from(pb::Facts { json: "[]".into() }).is_err());
        assert!(
            CheckedFacts::try_from(pb::Facts {
                json: "{\"a\":[1]}".into()
            })
            .is_ok()
        );
    }

    #[test]
    fn round_one_agents_string_triggers_are_read_by_name_and_checked() {
        let mut r = pb::RunReport {
            legacy_trigger: "change".into(),
            ..Default::default()
        };
        let checked = CheckedReport::try_from(r.clone()).unwrap().into_inner();
        assert_eq!(Trigger::try_from(checked.trigger), Ok(Trigger::Change));
        assert!(checked.legacy_trigger.is_empty());
        r.legacy_trigger = "\x1b[2Jnope".into();
        let e = CheckedReport::try_from(r.clone()).unwrap_err();
        assert_eq!(
            e,
            "report: legacy_trigger: unknown name \"\\u{1b}[2Jnope\"; expected one of change, resync, startup, local"
        );
        // The enum wins when both are set.
        r.trigger = Trigger::Resync.into();
        let checked = CheckedReport::try_from(r).unwrap().into_inner();
        assert_eq!(Trigger::try_from(checked.trigger), Ok(Trigger::Resync));
        assert!(checked.legacy_trigger.is_empty(), "never kept");
    }
}
