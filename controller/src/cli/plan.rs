//! `ballast plan`: what the proposed sources would do on each selected node,
//! as the nodes' own dry runs say, grouped by identical change set.
//!
//! Exit codes (for scripts): 0 no node would change, 2 some would, 1 some
//! node would fail, refused the plan or did not answer (or an error).

use super::conn::{Conn, connect, status_error};
use super::output::{Format, emit, esc};
use super::revisions::{DIFF_CHANGES, read_sources};
use ballast_proto::enums::Outcome;
use ballast_proto::pb;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Node names shown per group in human output (`-o json` lists all).
const NAMES_SHOWN: usize = 20;

pub async fn plan(
    paths: &[PathBuf],
    filters: Vec<String>,
    timeout: Duration,
    format: Format,
    conn: &Conn,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let sources = read_sources(paths)?;
    let mut client = connect(conn).await?;
    let timeout_ms = u32::try_from(timeout.as_millis())
        .unwrap_or(u32::MAX)
        .max(1);
    let resp = client
        .plan(pb::PlanNodesRequest {
            sources,
            r#where: filters,
            timeout_ms,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    emit(out, format, || to_json(&resp), |out| human(&resp, out))?;
    Ok(exit_code(&resp))
}

/// 1 on failures, refusals or silence; else 2 when something would change; else 0.
pub fn exit_code(resp: &pb::PlanResponse) -> ExitCode {
    if resp.failed_nodes > 0 || !resp.unanswered.is_empty() || !resp.refused.is_empty() {
        ExitCode::FAILURE
    } else if resp.changed_nodes > 0 {
        ExitCode::from(DIFF_CHANGES)
    } else {
        ExitCode::SUCCESS
    }
}

fn outcome_name(o: i32) -> &'static str {
    Outcome::try_from(o)
        .map(|o| o.as_str())
        .unwrap_or("unknown")
}

fn to_json(resp: &pb::PlanResponse) -> serde_json::Value {
    let missing = |v: &[pb::PlanUnanswered]| {
        v.iter()
            .map(|u| serde_json::json!({"node": u.node, "reason": u.reason}))
            .collect::<Vec<_>>()
    };
    serde_json::json!({
        "current_revision": resp.current_revision,
        "changed_nodes": resp.changed_nodes,
        "failed_nodes": resp.failed_nodes,
        "unchanged_nodes": resp.unchanged_nodes,
        "groups_left_out": resp.groups_left_out,
        "groups": resp.groups.iter().map(|g| serde_json::json!({
            "nodes": g.nodes,
            "resources": g.items.iter().map(|i| serde_json::json!({
                "id": i.id,
                "outcome": outcome_name(i.outcome),
                "changes": i.changes,
                "error": i.error,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "refused": missing(&resp.refused),
        "unanswered": missing(&resp.unanswered),
    })
}

fn names(nodes: &[String]) -> String {
    let mut s: Vec<String> = nodes
        .iter()
        .take(NAMES_SHOWN)
        .map(|n| esc(n).into_owned())
        .collect();
    if nodes.len() > NAMES_SHOWN {
        s.push(format!("and {} more", nodes.len() - NAMES_SHOWN));
    }
    s.join(", ")
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "node" } else { "nodes" }
}

fn human(resp: &pb::PlanResponse, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "plan against revision {}: {} would change, {} would fail, {} unchanged, {} refused, {} did not answer",
        resp.current_revision,
        resp.changed_nodes,
        resp.failed_nodes,
        resp.unchanged_nodes,
        resp.refused.len(),
        resp.unanswered.len()
    )?;
    for g in &resp.groups {
        let n = g.nodes.len();
        let fails = g.items.iter().any(|i| {
            i.outcome == i32::from(Outcome::Failed) || i.outcome == i32::from(Outcome::Skipped)
        });
        let verdict = match (fails, g.items.is_empty()) {
            (true, _) => "would fail",
            (false, true) => "no change",
            (false, false) => "would change",
        };
        writeln!(out, "\n{n} {} {verdict}: {}", plural(n), names(&g.nodes))?;
        for i in &g.items {
            let mark = match Outcome::try_from(i.outcome) {
                Ok(Outcome::Changed) => '~',
                Ok(Outcome::Failed) => '!',
                Ok(Outcome::Skipped) => '-',
                _ => '?',
            };
            let mut first = i.changes.first().map(|c| c.as_str()).unwrap_or("");
            if first.contains('\n') {
                first = "";
            }
            write!(out, "  {mark} {}", esc(&i.id))?;
            if !first.is_empty() {
                write!(out, ": {}", esc(first))?;
            }
            writeln!(out)?;
            let rest = if first.is_empty() {
                &i.changes[..]
            } else {
                &i.changes[1..]
            };
            for c in rest {
                // Multi-line changes (content diffs) line by line, each escaped.
                for line in c.lines() {
                    writeln!(out, "      {}", esc(line))?;
                }
            }
            if !i.error.is_empty() {
                writeln!(out, "      error: {}", esc(&i.error))?;
            }
        }
    }
    if resp.groups_left_out > 0 {
        writeln!(
            out,
            "\n{} change sets were left out to keep the answer within its bound (their nodes are listed)",
            resp.groups_left_out
        )?;
    }
    for (title, list) in [
        ("refused the plan", &resp.refused),
        ("did not answer", &resp.unanswered),
    ] {
        if list.is_empty() {
            continue;
        }
        writeln!(out, "\n{} {} {title}:", list.len(), plural(list.len()))?;
        for u in list {
            writeln!(out, "  {}: {}", esc(&u.node), esc(&u.reason))?;
        }
    }
    Ok(())
}
