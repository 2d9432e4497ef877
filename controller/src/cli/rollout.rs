//! `ballast rollout status|pause|resume|abort`: the rollout of the current
//! revision, wave by wave.

use super::conn::{Conn, author, connect, status_error};
use super::output::{Format, emit, esc, esc_join};
use ballast_proto::pb;
use std::io::Write;
use std::process::ExitCode;

/// `ballast rollout status`, or an action then the status it left.
pub async fn run(
    action: Option<pb::RolloutAction>,
    format: Format,
    conn: &Conn,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(conn).await?;
    let status = match action {
        None => client.get_rollout(pb::GetRolloutRequest {}).await,
        Some(a) => {
            client
                .control_rollout(pb::ControlRolloutRequest {
                    action: a as i32,
                    author: author(),
                })
                .await
        }
    }
    .map_err(status_error)?
    .into_inner();
    print(&status, format, out)?;
    Ok(ExitCode::SUCCESS)
}

fn print(s: &pb::RolloutStatus, format: Format, out: &mut dyn Write) -> anyhow::Result<()> {
    let doc = || {
        serde_json::json!({
            "revision": s.revision,
            "base": s.base,
            "phase": s.phase,
            "wave": s.wave,
            "bake_ms": s.bake_ms,
            "max_failed": s.max_failed,
            "reason": s.reason,
            "waves": s.waves.iter().map(|w| serde_json::json!({
                "state": w.state,
                "nodes": w.nodes,
                "converged": w.converged,
                "failed": w.failed,
                "pending": w.pending,
            })).collect::<Vec<_>>(),
        })
    };
    emit(out, format, doc, |out| {
        writeln!(
            out,
            "revision {} from {}: {}, wave {} of {} (bake {} s, max_failed {})",
            s.revision,
            s.base,
            s.phase,
            s.wave,
            s.waves.len(),
            s.bake_ms / 1000,
            s.max_failed
        )?;
        if !s.reason.is_empty() {
            writeln!(out, "reason: {}", esc(&s.reason))?;
        }
        writeln!(
            out,
            "{:<5} {:<8} {:>5} {:>9} {:>6} {:>7}  FAILED NODES",
            "WAVE", "STATE", "NODES", "CONVERGED", "FAILED", "PENDING"
        )?;
        for (i, w) in s.waves.iter().enumerate() {
            writeln!(
                out,
                "{:<5} {:<8} {:>5} {:>9} {:>6} {:>7}  {}",
                i + 1,
                w.state,
                w.nodes.len(),
                w.converged,
                w.failed.len(),
                w.pending,
                esc_join(&w.failed, ", ")
            )?;
        }
        Ok(())
    })
}
