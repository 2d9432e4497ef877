//! Commands over nodes: `nodes`, `node show|revoke|label`, `health`. Every
//! string here came from a node or an operator, so table output escapes it.

use super::conn::{self, Conn, connect, status_error};
use super::output::{Format, emit, esc, esc_join, labels_text, time, time_json};
use anyhow::Context;
use ballast_proto::enums::{NodeStatus, Outcome, Trigger};
use ballast_proto::pb;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

/// `ballast nodes`.
pub async fn list(
    filters: Vec<String>,
    format: Format,
    conn: &Conn,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(conn).await?;
    let list = conn::list_nodes(&mut client, &filters).await?;
    let docs = list
        .nodes
        .iter()
        .map(node_doc)
        .collect::<anyhow::Result<Vec<_>>>()?;
    emit(
        out,
        format,
        || docs.into(),
        |out| write_node_table(out, &list.nodes),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `ballast node show NAME`.
pub async fn show(
    name: String,
    format: Format,
    conn: &Conn,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(conn).await?;
    let detail = client
        .get_node(pb::GetNodeRequest { name })
        .await
        .map_err(status_error)?
        .into_inner();
    let doc = detail_doc(&detail)?;
    emit(out, format, || doc, |out| write_node_detail(out, &detail))?;
    Ok(ExitCode::SUCCESS)
}

/// `ballast node revoke NAME`.
pub async fn revoke(name: String, conn: &Conn, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let mut client = connect(conn).await?;
    client
        .revoke_node(pb::NodeName { name: name.clone() })
        .await
        .map_err(status_error)?;
    writeln!(out, "node {} revoked", esc(&name))?;
    Ok(ExitCode::SUCCESS)
}

/// `ballast node label NAME k=v...`.
pub async fn label(
    name: String,
    labels: &[String],
    conn: &Conn,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let labels = parse_pairs(labels)?;
    let mut client = connect(conn).await?;
    client
        .label_node(pb::LabelNodeRequest {
            name: name.clone(),
            labels: labels.into_iter().collect(),
        })
        .await
        .map_err(status_error)?;
    writeln!(out, "node {} labels updated", esc(&name))?;
    Ok(ExitCode::SUCCESS)
}

/// `k=v` pairs; an empty value is kept (it removes a label).
pub fn parse_pairs(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .with_context(|| format!("{p:?}: expected key=value"))
        })
        .collect()
}

/// `ballast health`: fails when any node is failed or stale, or a bootstrap failed.
pub async fn health(format: Format, conn: &Conn, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let mut client = connect(conn).await?;
    let list = conn::list_nodes(&mut client, &[]).await?;
    let code = write_health(out, format, &list)?;
    Ok(code)
}

/// The health summary of a node list, in any format; the exit code says
/// whether anything needs attention.
pub fn write_health(
    out: &mut dyn Write,
    format: Format,
    list: &conn::NodeList,
) -> anyhow::Result<ExitCode> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut bad: Vec<(&pb::NodeSummary, NodeStatus)> = Vec::new();
    for n in &list.nodes {
        let status = status_of(n)?;
        *counts.entry(status.as_str()).or_default() += 1;
        if status.needs_attention() {
            bad.push((n, status));
        }
    }
    let doc = || {
        serde_json::json!({
            "revision": list.current_revision,
            "nodes": list.nodes.len(),
            "statuses": counts,
            "healthy": bad.is_empty(),
            "problems": bad.iter().map(|(n, status)| serde_json::json!({
                "name": n.name,
                "status": status.as_str(),
                "failed_resources": n.failed_resources,
                "failed_count": n.failed_count,
                "last_seen": time_json(n.last_seen_ms),
            })).collect::<Vec<_>>(),
        })
    };
    emit(out, format, doc, |out| {
        let parts: Vec<String> = counts
            .iter()
            .map(|(s, c)| format!("{c} {}", esc(s)))
            .collect();
        writeln!(
            out,
            "revision {}; {} nodes: {}",
            list.current_revision,
            list.nodes.len(),
            if parts.is_empty() {
                "none".into()
            } else {
                parts.join(", ")
            }
        )?;
        for (n, status) in &bad {
            let what = match status {
                NodeStatus::Failed => format!("failing: {}", failing(n, ", ")),
                NodeStatus::Stale => format!("last seen {}", time(n.last_seen_ms)),
                _ => format!("see ballast node show {}", esc(&n.name)),
            };
            writeln!(out, "  {} {status} ({what})", esc(&n.name))?;
        }
        Ok(())
    })?;
    Ok(if bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A summary's status. The CLI decides on it (health's exit code, `apply
/// --wait`), so a value it does not know (a newer controller's) is an error
/// naming the node, never a guess.
pub(super) fn status_of(n: &pb::NodeSummary) -> anyhow::Result<NodeStatus> {
    NodeStatus::try_from(n.status).with_context(|| {
        format!(
            "node {}: the controller sent a status this ballast does not know; upgrade ballast",
            esc(&n.name)
        )
    })
}

fn node_doc(n: &pb::NodeSummary) -> anyhow::Result<serde_json::Value> {
    let labels: BTreeMap<&String, &String> = n.labels.iter().collect();
    Ok(serde_json::json!({
        "name": n.name,
        "labels": labels,
        "status": status_of(n)?.as_str(),
        "desired_revision": n.desired_revision,
        "applied_revision": n.applied_revision,
        "last_seen": time_json(n.last_seen_ms),
        "failed_resources": n.failed_resources,
        "failed_count": n.failed_count,
        "rollout": super::rollout::node_doc(n.rollout.as_ref()),
    }))
}

/// The failing ids a summary carries, and how many more it left out (a
/// summary lists at most `limits::MAX_SUMMARY_FAILED` of them).
fn failing(n: &pb::NodeSummary, sep: &str) -> String {
    let listed = esc_join(&n.failed_resources, sep);
    let more = (n.failed_count as usize).saturating_sub(n.failed_resources.len());
    if more > 0 {
        format!("{listed}{sep}and {more} more")
    } else {
        listed
    }
}

fn write_node_table(out: &mut dyn Write, nodes: &[pb::NodeSummary]) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<24} {:<11} {:>7} {:>7} {:<18} {:<20} {:<28} FAILING",
        "NAME", "STATUS", "DESIRED", "APPLIED", "ROLLOUT", "LAST SEEN", "LABELS"
    )?;
    for n in nodes {
        writeln!(
            out,
            "{:<24} {:<11} {:>7} {:>7} {:<18} {:<20} {:<28} {}",
            esc(&n.name),
            status_of(n)?.as_str(),
            n.desired_revision,
            n.applied_revision,
            n.rollout
                .as_ref()
                .map_or_else(|| "-".to_owned(), super::rollout::node_short),
            time(n.last_seen_ms),
            labels_text(&n.labels),
            failing(n, ",")
        )?;
    }
    Ok(())
}

/// A last report's outcome or trigger, shown only: the controller checked
/// the report on receipt, but one it stored before triggers were an enum
/// reads as unspecified and shows as `unknown`.
fn shown<E: TryFrom<i32>>(v: i32, name: fn(E) -> &'static str) -> &'static str {
    E::try_from(v).map(name).unwrap_or("unknown")
}

fn outcome_name(o: i32) -> &'static str {
    shown(o, Outcome::as_str)
}

fn trigger_name(t: i32) -> &'static str {
    shown(t, Trigger::as_str)
}

fn detail_doc(d: &pb::NodeDetail) -> anyhow::Result<serde_json::Value> {
    let s = d.summary.clone().unwrap_or_default();
    let facts: serde_json::Value =
        serde_json::from_str(&d.facts_json).unwrap_or(serde_json::Value::Null);
    let report = d.last_report.as_ref().map(|r| {
        serde_json::json!({
            "revision": r.revision, "state_hash": r.state_hash, "started_at": time_json(r.started_at_ms),
            "duration_ms": r.duration_ms, "trigger": trigger_name(r.trigger),
            "resources": r.resources.iter().map(|x| serde_json::json!({
                "id": x.id, "outcome": outcome_name(x.outcome), "changes": x.changes, "error": x.error, "backup": x.backup, "diff": x.diff,
            })).collect::<Vec<_>>(),
        })
    });
    let timeline: Vec<serde_json::Value> = d
        .timeline
        .iter()
        .map(
            |e| serde_json::json!({"at": time_json(e.at_ms), "stage": e.stage, "detail": e.detail}),
        )
        .collect();
    let mut v = node_doc(&s)?;
    v["facts"] = facts;
    v["host"] = d
        .host
        .as_ref()
        .map_or(serde_json::Value::Null, super::host::doc);
    v["last_run"] = report.unwrap_or(serde_json::Value::Null);
    v["timeline"] = timeline.into();
    Ok(v)
}

/// `node show` for people. Facts are the node's own words: escaped like the rest.
pub fn write_node_detail(out: &mut dyn Write, d: &pb::NodeDetail) -> anyhow::Result<()> {
    let s = d.summary.clone().unwrap_or_default();
    let facts: serde_json::Value =
        serde_json::from_str(&d.facts_json).unwrap_or(serde_json::Value::Null);
    writeln!(out, "node:      {}", esc(&s.name))?;
    writeln!(out, "status:    {}", status_of(&s)?)?;
    writeln!(out, "labels:    {}", labels_text(&s.labels))?;
    writeln!(
        out,
        "revision:  desired {}, applied {}",
        s.desired_revision, s.applied_revision
    )?;
    if let Some(r) = &s.rollout {
        writeln!(out, "rollout:   {}", super::rollout::node_why(r))?;
    }
    writeln!(out, "last seen: {}", time(s.last_seen_ms))?;
    if let Some(os) = facts.get("os") {
        let text = |v: Option<&serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) => esc(s).into_owned(),
            Some(other) => esc(&other.to_string()).into_owned(),
            None => "?".into(),
        };
        writeln!(
            out,
            "facts:     {} {} {}, kernel {}, {} cpus",
            text(os.get("pretty_name")),
            text(facts.get("arch")),
            text(facts.get("hostname")),
            text(facts.get("kernel")),
            text(facts.get("cpus")),
        )?;
    }
    if let Some(host) = &d.host {
        for (i, (label, value)) in super::host::rows(host).iter().enumerate() {
            let head = if i == 0 { "host:" } else { "" };
            writeln!(out, "{head:<10} {label:<9}{}", esc(value))?;
        }
    }
    writeln!(out, "timeline:")?;
    for e in &d.timeline {
        writeln!(
            out,
            "  {}  {:<13} {}",
            time(e.at_ms),
            esc(&e.stage),
            esc(&e.detail)
        )?;
    }
    match &d.last_report {
        None => writeln!(out, "last run:  none yet")?,
        Some(r) => {
            writeln!(
                out,
                "last run:  revision {} at {} ({}, {} ms)",
                r.revision,
                time(r.started_at_ms),
                trigger_name(r.trigger),
                r.duration_ms
            )?;
            for x in &r.resources {
                writeln!(out, "  {:<9} {}", outcome_name(x.outcome), esc(&x.id))?;
                for c in &x.changes {
                    writeln!(out, "            {}", esc(c))?;
                }
                super::output::write_diff(out, "              ", &x.diff)?;
                if !x.error.is_empty() {
                    writeln!(out, "            error: {}", esc(&x.error))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "x\x1b[2J\x1b]0;owned\x07\u{9b}1m\x7f";

    fn hostile_detail() -> pb::NodeDetail {
        let summary = pb::NodeSummary {
            name: "web-1".into(),
            labels: [(format!("k{HOSTILE}"), format!("v{HOSTILE}"))]
                .into_iter()
                .collect(),
            status: NodeStatus::Failed.into(),
            failed_resources: vec![format!("file[/etc/{HOSTILE}]")],
            ..Default::default()
        };
        pb::NodeDetail {
            summary: Some(summary),
            facts_json: serde_json::json!({
                "os": {"pretty_name": HOSTILE}, "arch": HOSTILE, "hostname": HOSTILE,
                "kernel": HOSTILE, "cpus": HOSTILE,
            })
            .to_string(),
            last_report: Some(pb::RunReport {
                trigger: Trigger::Change.into(),
                resources: vec![pb::ResourceOutcome {
                    id: format!("file[/etc/{HOSTILE}]"),
                    outcome: pb::Outcome::Failed as i32,
                    changes: vec![HOSTILE.into()],
                    error: HOSTILE.into(),
                    diff: format!("diff (+1 -1 lines)\n@@ -1,1 +1,1 @@\n-{HOSTILE}\n+{HOSTILE}\n"),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            timeline: vec![pb::TimelineEvent {
                at_ms: 1,
                stage: HOSTILE.into(),
                detail: HOSTILE.into(),
            }],
            host: Some(pb::HostRecord {
                figures: Some(pb::HostFigures {
                    root: Some(pb::DiskUse {
                        mount: HOSTILE.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                received_ms: 1,
            }),
        }
    }

    fn assert_no_control(text: &str) {
        let bad: Vec<char> = text
            .chars()
            .filter(|c| c.is_control() && *c != '\n')
            .collect();
        assert!(bad.is_empty(), "raw controls {bad:?} in:\n{text}");
    }

    #[test]
    fn node_show_escapes_what_the_node_sent() {
        let mut out = Vec::new();
        write_node_detail(&mut out, &hostile_detail()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_no_control(&text);
        assert!(
            text.contains("x\\x1b[2J\\x1b]0;owned\\x07\\x9b1m\\x7f"),
            "{text}"
        );
        // Every field of the hostile detail shows up escaped, none is dropped.
        assert!(text.matches("\\x1b[2J").count() >= 15, "{text}");
        // The last run's content diff, a line at a time under its resource.
        assert!(
            text.contains("              diff (+1 -1 lines)\n              @@ -1,1 +1,1 @@\n              -x\\x1b[2J"),
            "{text}"
        );
    }

    #[test]
    fn health_escapes_failing_resources_and_statuses() {
        let d = hostile_detail();
        let mut odd = d.summary.clone().unwrap();
        odd.name = "db-1".into();
        odd.status = NodeStatus::BootstrapFailed.into();
        let list = conn::NodeList {
            nodes: vec![d.summary.unwrap(), odd],
            current_revision: 3,
        };
        let mut out = Vec::new();
        let code = write_health(&mut out, Format::Table, &list).unwrap();
        assert_eq!(code, ExitCode::FAILURE);
        let text = String::from_utf8(out).unwrap();
        assert_no_control(&text);
        assert!(text.contains("failing: file[/etc/x\\x1b[2J"), "{text}");
    }

    #[test]
    fn json_output_is_exact_json_of_what_the_node_sent() {
        let mut out = Vec::new();
        emit(
            &mut out,
            Format::Json,
            || detail_doc(&hostile_detail()).unwrap(),
            |_| unreachable!(),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_no_control(&text);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["last_run"]["resources"][0]["error"], HOSTILE);
        assert_eq!(
            v["last_run"]["resources"][0]["diff"],
            format!("diff (+1 -1 lines)\n@@ -1,1 +1,1 @@\n-{HOSTILE}\n+{HOSTILE}\n")
        );
        assert_eq!(v["timeline"][0]["detail"], HOSTILE);
        assert_eq!(v["host"]["root"]["mount"], HOSTILE);
    }

    #[test]
    fn a_status_this_cli_does_not_know_is_an_error_naming_the_node() {
        let mut n = hostile_detail().summary.unwrap();
        n.status = 99;
        let list = conn::NodeList {
            nodes: vec![n],
            current_revision: 3,
        };
        let e = write_health(&mut Vec::new(), Format::Json, &list).unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains("node web-1: the controller sent a status")
                && text.contains("status: unknown value 99"),
            "{text}"
        );
    }

    #[test]
    fn json_statuses_keep_their_lowercase_names() {
        let mut n = hostile_detail().summary.unwrap();
        for &status in NodeStatus::ALL {
            n.status = status.into();
            assert_eq!(node_doc(&n).unwrap()["status"], status.as_str());
        }
        n.status = NodeStatus::BootstrapFailed.into();
        assert_eq!(node_doc(&n).unwrap()["status"], "bootstrap-failed");
    }
}
