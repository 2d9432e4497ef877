//! What `apply`, `rollback` and `diff` show of a change per node, and the
//! consent to prune: the controller refuses an apply that needs it
//! (`ApplyRequest.allow_prune`); here the CLI shows why and, on a terminal,
//! asks once before sending it again with consent.

use super::output::{Format, emit, esc};
use ballast_proto::pb;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether this process may ask on its terminal: set only by the `ballast`
/// binary's `run`, so that code calling `execute` (tests, embedders) never
/// blocks on a question whatever its stdin is.
static MAY_ASK: AtomicBool = AtomicBool::new(false);

/// Lets `confirm` ask when standard input and error are terminals.
pub fn may_ask() {
    MAY_ASK.store(true, Ordering::Relaxed);
}

/// How the operator consents to an apply that prunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consent {
    /// `--prune` or `--yes`: sent with the first request.
    Given,
    /// Ask on the terminal when the controller says it is needed; without
    /// a terminal, stop.
    Ask,
}

impl Consent {
    pub fn from_flags(prune: bool, yes: bool) -> Consent {
        if prune || yes {
            Consent::Given
        } else {
            Consent::Ask
        }
    }
}

/// What a refusal carries, when a controller refused for want of consent
/// to prune (other refusals carry no details).
pub fn refusal(status: &tonic::Status) -> Option<pb::PruneRefusal> {
    if status.code() != tonic::Code::FailedPrecondition || status.details().is_empty() {
        return None;
    }
    <pb::PruneRefusal as prost::Message>::decode(status.details())
        .ok()
        .filter(|r| !r.reasons.is_empty())
}

/// A summary text from the controller, each line escaped.
pub fn print_text(out: &mut dyn Write, text: &str) -> anyhow::Result<()> {
    for line in text.lines() {
        writeln!(out, "{}", esc(line))?;
    }
    Ok(())
}

/// Every string a node, file or operator chose, escaped for a terminal.
fn escaped(summary: &pb::DiffResponse) -> pb::DiffResponse {
    let all = |v: &[String]| v.iter().map(|s| esc(s).into_owned()).collect();
    pb::DiffResponse {
        current_revision: summary.current_revision,
        nodes: summary
            .nodes
            .iter()
            .map(|n| pb::NodeChange {
                node: esc(&n.node).into_owned(),
                added: all(&n.added),
                changed: all(&n.changed),
                removed: all(&n.removed),
            })
            .collect(),
        unused_roles: all(&summary.unused_roles),
        roleless_nodes: all(&summary.roleless_nodes),
        ..Default::default()
    }
}

/// Per node, grouped by change: `+N ~N -N` and the resources removed (with
/// `every_id`, every resource added, changed or removed).
pub fn print(
    out: &mut dyn Write,
    summary: &pb::DiffResponse,
    every_id: bool,
) -> anyhow::Result<()> {
    out.write_all(crate::fleet::describe_changes(&escaped(summary), every_id).as_bytes())?;
    Ok(())
}

/// The summary as JSON, the same in `diff`, `apply` and a refusal.
pub fn doc(summary: &pb::DiffResponse) -> serde_json::Value {
    serde_json::json!({
        "current_revision": summary.current_revision,
        "nodes": summary.nodes.iter().map(|n| serde_json::json!({
            "node": n.node, "added": n.added, "changed": n.changed, "removed": n.removed,
        })).collect::<Vec<_>>(),
        "roleless_nodes": summary.roleless_nodes,
        "unused_roles": summary.unused_roles,
    })
}

/// After a refusal: shows the summary and why, then asks on a terminal.
/// True when the operator said yes (send again with consent); false after
/// printing that nothing was stored.
/// Sends a call that the controller may refuse for want of consent to
/// prune: with consent at once when `consent` is given, otherwise without,
/// and again with it once the operator agrees (`confirm`). `None` when the
/// operator did not agree; any other refusal is an error.
pub async fn with_consent<T>(
    consent: Consent,
    format: Format,
    out: &mut dyn std::io::Write,
    mut send: impl AsyncFnMut(bool) -> Result<tonic::Response<T>, tonic::Status>,
) -> anyhow::Result<Option<T>> {
    let mut allow = consent == Consent::Given;
    loop {
        match send(allow).await {
            Ok(resp) => return Ok(Some(resp.into_inner())),
            Err(s) => match refusal(&s) {
                Some(sum) if !allow => {
                    if !confirm(&sum, consent, format, out)? {
                        return Ok(None);
                    }
                    allow = true;
                }
                _ => return Err(super::conn::status_error(s)),
            },
        }
    }
}

pub fn confirm(
    refusal: &pb::PruneRefusal,
    consent: Consent,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let reasons = refusal.reasons.join(", and ");
    let interactive = consent == Consent::Ask
        && MAY_ASK.load(Ordering::Relaxed)
        && format == Format::Table
        && std::io::stdin().is_terminal()
        && std::io::stderr().is_terminal();
    if interactive {
        print_text(out, &refusal.summary)?;
        out.flush()?;
        let mut err = std::io::stderr();
        write!(
            err,
            "this apply needs consent because {}; the files are the whole desired state. Apply it? [y/N] ",
            esc(&reasons)
        )?;
        err.flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            return Ok(true);
        }
    }
    emit(
        out,
        format,
        || {
            serde_json::json!({
                "stored": false,
                "needs_prune": refusal.reasons,
                "summary": refusal.summary,
            })
        },
        |out| {
            if !interactive {
                print_text(out, &refusal.summary)?;
            }
            writeln!(
                out,
                "nothing stored: this apply needs consent because {}; the files are the whole desired state. Pass --prune (or --yes) to apply it",
                esc(&reasons)
            )?;
            Ok(())
        },
    )?;
    Ok(false)
}
