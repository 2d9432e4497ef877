//! Plans (`ballast plan`): the agent's side. Beside its watch the daemon
//! holds a plan stream; each proposed document is dry-run against the real
//! host (the engine's `noop`: the same observe and diff as a real run) and
//! the report goes back with `PlanResult`, each file's content diff (made by
//! the engine, as in a real run) as one more change.
//!
//! Invariants: a plan's document is never the desired state: nothing here
//! touches the cache, the managed record, pending restarts or the outbox,
//! and nothing is applied. A dry run waits for a real run in progress to end
//! (so it judges a settled host) but does not hold the run lock while it
//! runs: enforcement is never delayed by a plan. It uses a `Host` of its own,
//! so its assumptions (users it would create) never reach a real run.

use crate::client::{self, Enrolled, Target};
use crate::daemon::{CALL_TIMEOUT, DaemonConfig};
use crate::engine::{self, RunOptions};
use crate::host::Host;
use crate::state::Lock;
use ballast_proto::enums::Trigger;
use ballast_proto::pb;
use ballast_proto::spec::NodeState;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_stream::StreamExt;

const RETRY: Duration = Duration::from_secs(5);

/// Answers plans forever: one plan stream at a time, to the controllers of
/// the list in turn. Never returns: the daemon runs it beside the enforcer
/// and the link, so stopping the daemon stops it.
pub async fn run(cfg: DaemonConfig) {
    loop {
        if let Err(e) = session_round(&cfg).await {
            tracing::debug!(error = %format!("{e:#}"), "plan stream ended");
        }
        let wait = RETRY.mul_f64(0.5 + jitter());
        tokio::time::sleep(wait).await;
    }
}

fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    u16::from_le_bytes(b) as f64 / 65536.0
}

async fn session_round(cfg: &DaemonConfig) -> anyhow::Result<()> {
    let enrolled = Enrolled::load(&cfg.state_dir)?;
    let list = cfg
        .controller
        .clone()
        .unwrap_or_else(|| enrolled.config.controller.clone());
    let controllers = client::targets(&list).await?;
    let mut last = Ok(());
    for at in &controllers {
        last = session(cfg, &enrolled, at).await;
        if let Err(e) = &last {
            tracing::debug!(controller = %at, error = %format!("{e:#}"), "plan stream");
        }
    }
    last
}

async fn session(cfg: &DaemonConfig, enrolled: &Enrolled, at: &Target) -> anyhow::Result<()> {
    let channel = enrolled.channel_to(at).await?;
    let mut agent = client::agent_client(channel);
    let mut stream = tokio::time::timeout(CALL_TIMEOUT, agent.plans(pb::PlansRequest {}))
        .await
        .map_err(|_| anyhow::anyhow!("plans: no answer within {CALL_TIMEOUT:?}"))?
        .map_err(|s| anyhow::anyhow!("plans: {}", s.message()))?
        .into_inner();
    tracing::debug!(controller = %at, "plan stream open");
    let name = enrolled.config.name.clone();
    while let Some(req) = stream.next().await {
        let req = req.map_err(|s| anyhow::anyhow!("plan stream: {}", s.message()))?;
        let (cfg2, name2) = (cfg.clone(), name.clone());
        let result = tokio::task::spawn_blocking(move || dry_run(&cfg2, &name2, req))
            .await
            .map_err(|e| anyhow::anyhow!("plan task: {e}"))?;
        match tokio::time::timeout(CALL_TIMEOUT, agent.plan_result(result)).await {
            Ok(Ok(_)) => {}
            // The plan ended (timed out) or was refused: nothing to retry.
            Ok(Err(s)) => tracing::warn!(error = %s.message(), "controller refused a plan result"),
            Err(_) => anyhow::bail!("plan result: no answer within {CALL_TIMEOUT:?}"),
        }
    }
    anyhow::bail!("plan stream ended by the controller")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Dry-runs one plan request; the answer names the plan.
pub fn dry_run(cfg: &DaemonConfig, name: &str, req: pb::PlanRequest) -> pb::PlanResultRequest {
    let id = req.id.clone();
    match try_dry_run(cfg, name, req) {
        Ok(report) => pb::PlanResultRequest {
            id,
            report: Some(report),
            error: String::new(),
        },
        Err(e) => pb::PlanResultRequest {
            id,
            report: None,
            error: format!("{e:#}"),
        },
    }
}

fn try_dry_run(
    cfg: &DaemonConfig,
    name: &str,
    req: pb::PlanRequest,
) -> anyhow::Result<pb::RunReport> {
    let hash = ballast_proto::sha256_tag(&req.document);
    if hash != req.hash {
        anyhow::bail!("plan document has hash {hash}, expected {}", req.hash);
    }
    let state = NodeState::from_document(&req.document)
        .map_err(|e| anyhow::anyhow!("plan document is invalid: {e}"))?;
    if state.node.name != name {
        anyhow::bail!(
            "plan document is for node {:?}, not {name:?}",
            state.node.name
        );
    }
    // Let a real run in progress finish, then let go: the plan judges a
    // settled host and never holds up the next real run.
    drop(cfg.state_dir.lock(Lock::Run)?);
    let facts = crate::facts::collect(&cfg.facts_dir);
    let host = Host::new(cfg.root.clone());
    let started = now_ms();
    let report = engine::reconcile(
        &state,
        &host,
        &RunOptions {
            noop: true,
            state_dir: &cfg.state_dir,
            facts: &facts,
        },
    );
    tracing::info!(plan = %req.id, changed = report.changed(), failed = report.failed(), "plan dry run");
    let mut pb = report.to_pb(0, &hash, started, true, Trigger::Change);
    ballast_proto::limits::fit_report(&mut pb);
    // A plan's answer carries each content diff as one more change (the
    // plan wire's items have changes only); a diff fits in a change line.
    for out in &mut pb.resources {
        let diff = std::mem::take(&mut out.diff);
        if !diff.is_empty() && out.changes.len() < ballast_proto::limits::MAX_CHANGES_PER_RESOURCE {
            out.changes.push(diff);
        }
    }
    // Within the report's bound still, now that the diffs are changes.
    ballast_proto::limits::fit_report(&mut pb);
    Ok(pb)
}
