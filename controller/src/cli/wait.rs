//! `ballast apply --wait` (and `rollback --wait`): polls the affected nodes
//! until each has run the new revision, one fails, or the time is up, and
//! says why it ended: the failing resources with their error text, per node,
//! or the nodes still pending with their status and when each was last seen.
//! Everything a node sent passes through `output::esc` before it is printed.
//! When the apply started a rollout, `--wait` follows it instead
//! (`rollout::follow`) and shows failures the same way.

use super::conn;
use super::output::{esc, time, time_json};
use ballast_proto::enums::{NodeStatus, Outcome};
use ballast_proto::pb;
use ballast_proto::pb::admin_client::AdminClient;
use std::io::Write;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Failed nodes whose last run is fetched to show the error text; the others
/// are listed with their failing resource ids only (`ballast node show` has
/// the rest). One extra call per node shown, so a fleet-wide failure costs
/// at most this many.
pub const MAX_FAILED_DETAILED: usize = 20;
/// Failing resources shown per node with their error.
pub const MAX_ERRORS_PER_NODE: usize = 16;

/// A node whose run of the new revision failed.
pub struct FailedNode {
    pub name: String,
    /// Failing resource ids, as the node list has them (bounded there).
    pub failed_resources: Vec<String>,
    pub failed_count: u32,
    /// (id, error) of the failing resources of its last run, when fetched.
    pub errors: Option<Vec<(String, String)>>,
}

/// A node that has not run the new revision yet.
pub struct PendingNode {
    pub name: String,
    pub status: NodeStatus,
    pub applied_revision: u64,
    pub desired_revision: u64,
    /// 0: never.
    pub last_seen_ms: u64,
}

/// How a `--wait` ended.
pub struct Waited {
    pub converged: Vec<String>,
    pub failed: Vec<FailedNode>,
    pub pending: Vec<PendingNode>,
    pub timed_out: bool,
    pub timeout: Duration,
}

impl Waited {
    pub fn print(&self, out: &mut dyn Write) -> anyhow::Result<()> {
        print_failed(out, &self.failed)?;
        if self.timed_out {
            writeln!(
                out,
                "timed out after {}s waiting for nodes to converge; {} pending:",
                self.timeout.as_secs(),
                self.pending.len()
            )?;
            for n in &self.pending {
                writeln!(
                    out,
                    "  {} {} (applied revision {}, desired {}), last seen {}",
                    esc(&n.name),
                    n.status.as_str(),
                    n.applied_revision,
                    n.desired_revision,
                    time(n.last_seen_ms)
                )?;
            }
        }
        Ok(())
    }

    pub fn doc(&self) -> serde_json::Value {
        serde_json::json!({
            "converged": self.converged,
            "failed": failed_doc(&self.failed),
            "pending": self.pending.iter().map(|n| &n.name).collect::<Vec<_>>(),
            "pending_nodes": self.pending.iter().map(|n| serde_json::json!({
                "name": n.name,
                "status": n.status.as_str(),
                "applied_revision": n.applied_revision,
                "desired_revision": n.desired_revision,
                "last_seen": time_json(n.last_seen_ms),
            })).collect::<Vec<_>>(),
            "timed_out": self.timed_out,
        })
    }
}

/// Failed nodes as `--wait` shows them: per node its failing resources
/// with their errors when fetched, else their ids.
pub fn print_failed(out: &mut dyn Write, failed: &[FailedNode]) -> anyhow::Result<()> {
    for (i, n) in failed.iter().enumerate() {
        writeln!(out, "node {} failed:", esc(&n.name))?;
        match &n.errors {
            Some(errors) => {
                for (id, error) in errors {
                    writeln!(out, "  {}: {}", esc(id), esc(error))?;
                }
                let more = (n.failed_count as usize).saturating_sub(errors.len());
                if more > 0 {
                    writeln!(
                        out,
                        "  and {more} more (ballast node show {})",
                        esc(&n.name)
                    )?;
                }
            }
            None => {
                for id in &n.failed_resources {
                    writeln!(out, "  {}", esc(id))?;
                }
                if i == MAX_FAILED_DETAILED {
                    writeln!(
                        out,
                        "  (errors shown for the first {MAX_FAILED_DETAILED} failed nodes; ballast node show NAME has the rest)"
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// The JSON of failed nodes.
pub fn failed_doc(failed: &[FailedNode]) -> serde_json::Value {
    failed
        .iter()
        .map(|n| {
            let mut doc = serde_json::json!({
                "name": n.name, "failed_resources": n.failed_resources,
            });
            if let Some(errors) = &n.errors {
                doc["errors"] = errors
                    .iter()
                    .map(|(id, error)| serde_json::json!({"id": id, "error": error}))
                    .collect();
            }
            doc
        })
        .collect()
}

/// A failed node as its summary has it, with the errors of its last run.
pub async fn failed_node(
    client: &mut AdminClient<Channel>,
    name: &str,
) -> anyhow::Result<FailedNode> {
    let detail = client
        .get_node(pb::GetNodeRequest { name: name.into() })
        .await
        .map_err(conn::status_error)?
        .into_inner();
    let summary = detail.summary.unwrap_or_default();
    let errors = Some(errors_of(detail.last_report));
    Ok(FailedNode {
        name: name.to_owned(),
        failed_resources: summary.failed_resources,
        failed_count: summary.failed_count,
        errors,
    })
}

/// Polls until every affected node reports the new state, one fails, or the
/// timeout passes; with `progress`, prints `converged N/M` as it changes.
/// When nodes failed, their last runs are fetched for the error text.
pub async fn wait_for(
    client: &mut AdminClient<Channel>,
    out: &mut dyn Write,
    progress: bool,
    resp: &pb::ApplyResponse,
    timeout: Duration,
) -> anyhow::Result<Waited> {
    let affected = &resp.affected_nodes;
    let deadline = Instant::now() + timeout;
    let mut last = usize::MAX;
    loop {
        let mut w = Waited {
            converged: Vec::new(),
            failed: Vec::new(),
            pending: Vec::new(),
            timed_out: false,
            timeout,
        };
        if !affected.is_empty() {
            let nodes = conn::list_nodes(client, &[]).await?.nodes;
            for n in nodes.into_iter().filter(|n| affected.contains(&n.name)) {
                let caught_up = n.applied_revision >= n.desired_revision;
                match super::nodes::status_of(&n)? {
                    NodeStatus::Converged | NodeStatus::Drifted if caught_up => {
                        w.converged.push(n.name)
                    }
                    NodeStatus::Failed if caught_up => w.failed.push(FailedNode {
                        name: n.name,
                        failed_resources: n.failed_resources,
                        failed_count: n.failed_count,
                        errors: None,
                    }),
                    status => w.pending.push(PendingNode {
                        name: n.name,
                        status,
                        applied_revision: n.applied_revision,
                        desired_revision: n.desired_revision,
                        last_seen_ms: n.last_seen_ms,
                    }),
                }
            }
        }
        let total = w.converged.len() + w.failed.len() + w.pending.len();
        if progress && w.converged.len() != last && total > 0 {
            writeln!(out, "converged {}/{total}", w.converged.len())?;
            last = w.converged.len();
        }
        if !w.failed.is_empty() {
            for n in w.failed.iter_mut().take(MAX_FAILED_DETAILED) {
                n.errors = Some(failing(client, &n.name).await?);
            }
            return Ok(w);
        }
        if w.pending.is_empty() {
            return Ok(w);
        }
        if Instant::now() >= deadline {
            w.timed_out = true;
            return Ok(w);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The failing resources of `name`'s last run with their errors, at most
/// [`MAX_ERRORS_PER_NODE`].
async fn failing(
    client: &mut AdminClient<Channel>,
    name: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let detail = client
        .get_node(pb::GetNodeRequest { name: name.into() })
        .await
        .map_err(conn::status_error)?
        .into_inner();
    Ok(errors_of(detail.last_report))
}

/// The failing resources of a run with their errors, at most
/// [`MAX_ERRORS_PER_NODE`].
fn errors_of(report: Option<pb::RunReport>) -> Vec<(String, String)> {
    report
        .map(|r| r.resources)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.outcome == i32::from(Outcome::Failed))
        .take(MAX_ERRORS_PER_NODE)
        .map(|r| (r.id, r.error))
        .collect()
}
