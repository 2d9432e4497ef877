//! Commands over revisions: `apply` (and `--wait`), `rollback`, `diff`,
//! `history`, and reading YAML sources for them.

use super::conn::{Conn, author, connect, status_error};
use super::output::{Format, emit, esc, short_hash, time, time_json};
use super::summary::{self, Consent};
use super::wait::wait_for;
use anyhow::bail;
use ballast_proto::pb;
use ballast_proto::pb::admin_client::AdminClient;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::Channel;

/// Reads YAML sources (files, or directories of `*.yaml`/`*.yml`) for a
/// request, refusing before sending what the controller would refuse.
pub fn read_sources(paths: &[PathBuf]) -> anyhow::Result<Vec<pb::SourceFile>> {
    let sources = ballast_proto::spec::read_sources(paths).map_err(anyhow::Error::msg)?;
    let total: usize = sources.iter().map(|s| s.text.len()).sum();
    if total > ballast_proto::MAX_MESSAGE_BYTES - 64 * 1024 {
        bail!(
            "the sources together are {total} bytes; the largest request the controller accepts is {} bytes",
            ballast_proto::MAX_MESSAGE_BYTES
        );
    }
    Ok(sources
        .into_iter()
        .map(|s| pb::SourceFile {
            name: s.name,
            content: s.text,
        })
        .collect())
}

/// `ballast apply`: stores a revision (with consent when it prunes, see
/// [`summary`]), then optionally waits for its nodes.
pub async fn apply(
    paths: &[PathBuf],
    message: String,
    consent: Consent,
    wait: Option<Duration>,
    format: Format,
    conn: &Conn,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(conn).await?;
    let sources = read_sources(paths)?;
    let req = pb::ApplyRequest {
        sources,
        author: author(),
        message,
        allow_prune: false,
    };
    let sent = summary::with_consent(consent, format, out, async |allow_prune| {
        let req = pb::ApplyRequest {
            allow_prune,
            ..req.clone()
        };
        client.apply(req).await
    })
    .await?;
    let Some(resp) = sent else {
        return Ok(ExitCode::FAILURE);
    };
    finish_revision(&mut client, resp, wait, format, out).await
}

/// `ballast rollback N`: a new revision with revision N's content, under
/// the same consent rule as `apply` (going back usually removes something).
pub async fn rollback(
    revision: u64,
    consent: Consent,
    wait: Option<Duration>,
    format: Format,
    conn: &Conn,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(conn).await?;
    let author = author();
    let sent = summary::with_consent(consent, format, out, async |allow_prune| {
        let req = pb::RollbackRequest {
            revision,
            author: author.clone(),
            allow_prune,
        };
        client.rollback(req).await
    })
    .await?;
    let Some(resp) = sent else {
        return Ok(ExitCode::FAILURE);
    };
    finish_revision(&mut client, resp, wait, format, out).await
}

async fn finish_revision(
    client: &mut AdminClient<Channel>,
    resp: pb::ApplyResponse,
    wait: Option<Duration>,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let progress = format == Format::Table;
    // An apply that started a rollout is followed wave by wave.
    let rollout = match wait {
        Some(_) if resp.created => super::rollout::rollout_of(client, resp.revision).await?,
        _ => None,
    };
    if wait.is_some() && progress {
        report_apply(out, &resp)?;
    }
    let (waited, followed) = match (wait, rollout) {
        (None, _) => (None, None),
        (Some(timeout), Some(first)) => (
            None,
            Some(super::rollout::follow(client, out, progress, first, timeout).await?),
        ),
        (Some(timeout), None) => (
            Some(wait_for(client, out, progress, &resp, timeout).await?),
            None,
        ),
    };
    let code = match (&waited, &followed) {
        (Some(w), _) if !w.failed.is_empty() || w.timed_out => ExitCode::FAILURE,
        (_, Some(f)) if f.end != super::rollout::End::Done => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    };
    match (format, &waited, &followed) {
        (Format::Table, None, None) => report_apply(out, &resp)?,
        (Format::Table, Some(w), _) => w.print(out)?,
        (Format::Table, None, Some(f)) => f.print(out)?,
        (_, waited, followed) => emit(
            out,
            format,
            || {
                let mut doc = serde_json::json!({
                    "revision": resp.revision,
                    "hash": resp.hash,
                    "created": resp.created,
                    "affected_nodes": resp.affected_nodes,
                    "summary": resp.summary,
                });
                if let Some(w) = waited {
                    doc["wait"] = w.doc();
                }
                if let Some(f) = followed {
                    doc["wait"] = f.doc();
                }
                doc
            },
            |_| Ok(()),
        )?,
    }
    Ok(code)
}

fn report_apply(out: &mut dyn Write, resp: &pb::ApplyResponse) -> anyhow::Result<()> {
    if resp.created {
        writeln!(
            out,
            "revision {} created ({})",
            resp.revision,
            short_hash(&resp.hash)
        )?;
        if resp.affected_nodes.is_empty() {
            writeln!(out, "no node's desired state changed")?;
        } else {
            writeln!(out, "{} node(s) affected", resp.affected_nodes.len())?;
            summary::print_text(out, &resp.summary)?;
        }
    } else {
        writeln!(
            out,
            "no change: revision {} already has this content",
            resp.revision
        )?;
    }
    Ok(())
}

/// `ballast diff`: per node, what an apply would add, change or remove.
/// `ballast diff`'s exit code when some node would change.
pub const DIFF_CHANGES: u8 = 2;

pub async fn diff(
    paths: &[PathBuf],
    format: Format,
    conn: &Conn,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(conn).await?;
    let sources = read_sources(paths)?;
    let resp = client
        .diff(pb::ApplyRequest {
            sources,
            author: author(),
            message: String::new(),
            allow_prune: false,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    emit(
        out,
        format,
        || {
            let mut doc = summary::doc(&resp);
            doc["content"] = content_doc(&resp);
            doc["content_left_out"] = resp.content_left_out.into();
            doc
        },
        |out| {
            if resp.nodes.is_empty() {
                writeln!(
                    out,
                    "no node would change (current revision {})",
                    resp.current_revision
                )?;
            }
            summary::print(out, &resp, true)?;
            let reasons = crate::fleet::prune_reasons(&resp);
            if !reasons.is_empty() {
                writeln!(
                    out,
                    "apply would need --prune: {}",
                    esc(&reasons.join(", and "))
                )?;
            }
            print_content(out, &resp)
        },
    )?;
    // As diff(1) and Puppet's --detailed-exitcodes: 0 no change, 2 changes
    // (1, an error, comes from the caller).
    Ok(if resp.nodes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(DIFF_CHANGES)
    })
}

/// Node names shown per group of content diffs (`-o json` lists all).
const CONTENT_NAMES_SHOWN: usize = 10;

fn content_doc(resp: &pb::DiffResponse) -> serde_json::Value {
    resp.content
        .iter()
        .map(|g| {
            serde_json::json!({
                "nodes": g.nodes,
                "files": g.files.iter().map(|f| serde_json::json!({"id": f.id, "diff": f.diff})).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// The content diffs, a group of nodes at a time, every line escaped.
fn print_content(out: &mut dyn Write, resp: &pb::DiffResponse) -> anyhow::Result<()> {
    for g in &resp.content {
        let mut names: Vec<String> = g
            .nodes
            .iter()
            .take(CONTENT_NAMES_SHOWN)
            .map(|n| esc(n).into_owned())
            .collect();
        if g.nodes.len() > CONTENT_NAMES_SHOWN {
            names.push(format!("and {} more", g.nodes.len() - CONTENT_NAMES_SHOWN));
        }
        let who = match g.nodes.len() {
            1 => format!("node {}", names[0]),
            n => format!("{n} nodes ({})", names.join(", ")),
        };
        writeln!(
            out,
            "
content on {who}:"
        )?;
        for f in &g.files {
            writeln!(out, "  ~ {}", esc(&f.id))?;
            super::output::write_diff(out, "      ", &f.diff)?;
        }
    }
    if resp.content_left_out > 0 {
        writeln!(
            out,
            "
content diffs of {} more node(s) left out to keep the answer within its bound",
            resp.content_left_out
        )?;
    }
    Ok(())
}

/// `ballast history`: revisions, newest first.
pub async fn history(
    limit: u32,
    format: Format,
    conn: &Conn,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(conn).await?;
    let resp = client
        .history(pb::HistoryRequest { limit })
        .await
        .map_err(status_error)?
        .into_inner();
    let doc = || {
        resp.revisions
            .iter()
            .map(|r| {
                serde_json::json!({
                    "revision": r.number,
                    "created_at": time_json(r.created_at_ms),
                    "author": r.author,
                    "hash": r.hash,
                    "message": r.message,
                    "restored_from": if r.restored_from > 0 { r.restored_from.into() } else { serde_json::Value::Null },
                })
            })
            .collect()
    };
    emit(out, format, doc, |out| {
        writeln!(
            out,
            "{:<6} {:<20} {:<24} {:<20} MESSAGE",
            "REV", "TIME", "AUTHOR", "HASH"
        )?;
        for r in &resp.revisions {
            let msg = if r.restored_from > 0 && r.message.is_empty() {
                format!("rollback to {}", r.restored_from)
            } else {
                esc(&r.message).into_owned()
            };
            writeln!(
                out,
                "{:<6} {:<20} {:<24} {:<20} {}",
                r.number,
                time(r.created_at_ms),
                esc(&r.author),
                short_hash(&r.hash),
                msg
            )?;
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `ballast apply` sends: a directory's YAML files sorted, named by
    /// their path; sources over the request bound refused before connecting,
    /// and errors that name the path.
    #[test]
    fn read_sources_sends_sorted_yaml_and_refuses_what_the_controller_would() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("site");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("web.yaml"), "roles: {}\n").unwrap();
        std::fs::write(dir.join("base.yml"), "groups: {}\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "not yaml").unwrap();
        let got: Vec<(String, String)> = read_sources(std::slice::from_ref(&dir))
            .unwrap()
            .into_iter()
            .map(|s| (s.name, s.content))
            .collect();
        let name = |f: &str| dir.join(f).display().to_string();
        assert_eq!(
            got,
            [
                (name("base.yml"), "groups: {}\n".to_owned()),
                (name("web.yaml"), "roles: {}\n".to_owned()),
            ]
        );

        let big = tmp.path().join("big.yaml");
        std::fs::write(&big, "#".repeat(ballast_proto::MAX_MESSAGE_BYTES)).unwrap();
        assert_eq!(
            read_sources(&[big]).unwrap_err().to_string(),
            format!(
                "the sources together are {} bytes; the largest request the controller accepts is {} bytes",
                ballast_proto::MAX_MESSAGE_BYTES,
                ballast_proto::MAX_MESSAGE_BYTES
            )
        );

        let missing = tmp.path().join("missing");
        assert_eq!(
            read_sources(std::slice::from_ref(&missing))
                .unwrap_err()
                .to_string(),
            format!(
                "read {}: No such file or directory (os error 2)",
                missing.display()
            )
        );
    }
}
