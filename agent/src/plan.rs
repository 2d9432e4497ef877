//! Plans (`ballast plan`): the agent's side. Beside its watch the daemon
//! holds a plan stream; each proposed document is dry-run against the real
//! host (the engine's `noop`: the same observe and diff as a real run) and
//! the report goes back with `PlanResult`.
//!
//! Invariants: a plan's document is never the desired state: nothing here
//! touches the cache, the managed record, pending restarts or the outbox,
//! and nothing is applied. A dry run waits for a real run in progress to end
//! (so it judges a settled host) but does not hold the run lock while it
//! runs: enforcement is never delayed by a plan. It uses a `Host` of its own,
//! so its assumptions (users it would create) never reach a real run.

use crate::client::{self, Enrolled};
use crate::daemon::{CALL_TIMEOUT, DaemonConfig};
use crate::engine::{self, RunOptions};
use crate::host::Host;
use crate::state::Lock;
use ballast_proto::enums::{Outcome, Trigger};
use ballast_proto::pb;
use ballast_proto::spec::{NodeState, Resource};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_stream::StreamExt;

/// Files larger than this (either side) get no content diff in a plan.
pub const MAX_DIFF_INPUT: usize = 256 * 1024;
/// A content diff is cut to this many bytes (a change's bound is 8 KiB).
pub const MAX_DIFF_BYTES: usize = 6 * 1024;
/// Lines of context around each change in a diff.
const CONTEXT: usize = 3;
/// Past this many cells (changed lines before × after) the middle of a diff
/// is shown as all removed, then all added, instead of aligned.
const MAX_DIFF_CELLS: usize = 1_000_000;
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
    let controllers = ballast_proto::controllers(&list).map_err(anyhow::Error::msg)?;
    let mut last = Ok(());
    for at in &controllers {
        last = session(cfg, &enrolled, at).await;
        if let Err(e) = &last {
            tracing::debug!(controller = %at, error = %format!("{e:#}"), "plan stream");
        }
    }
    last
}

async fn session(cfg: &DaemonConfig, enrolled: &Enrolled, at: &str) -> anyhow::Result<()> {
    let channel = enrolled.channel(Some(at)).await?;
    let mut agent = client::agent_client(channel);
    let mut stream = tokio::time::timeout(CALL_TIMEOUT, agent.plans(pb::PlansRequest {}))
        .await
        .map_err(|_| anyhow::anyhow!("plans: no answer within {CALL_TIMEOUT:?}"))?
        .map_err(|s| anyhow::anyhow!("plans: {}", s.message()))?
        .into_inner();
    tracing::debug!(controller = at, "plan stream open");
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
    for out in &mut pb.resources {
        if out.outcome != i32::from(Outcome::Changed)
            || !out.changes.iter().any(|c| c.starts_with("replace content"))
        {
            continue;
        }
        let file = state.resources.iter().find_map(|r| match r {
            Resource::File(f) if r.id() == out.id => Some(f),
            _ => None,
        });
        if let Some(diff) = file.and_then(|f| content_diff(&host, &facts, &state, f)) {
            out.changes.push(diff);
        }
    }
    ballast_proto::limits::fit_report(&mut pb);
    Ok(pb)
}

/// The unified diff of a file's content now and as the plan would write it,
/// headed `diff (+A -D lines)`; `None` when either side is not text or is
/// too large (the change line still says the sizes).
fn content_diff(
    host: &Host,
    facts: &serde_json::Value,
    state: &NodeState,
    f: &ballast_proto::spec::File,
) -> Option<String> {
    let want = match (&f.content, f.template) {
        (Some(t), true) => {
            ballast_proto::spec::template::render(t, facts, &f.vars, &state.node).ok()?
        }
        (Some(c), false) => c.clone(),
        (None, _) => return None,
    };
    let have = host.read_file(&f.path).ok()?;
    if have.len() > MAX_DIFF_INPUT || want.len() > MAX_DIFF_INPUT {
        return None;
    }
    let have = String::from_utf8(have).ok()?;
    Some(unified(&f.path, &have, &want))
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Op {
    Same,
    Del,
    Add,
}

/// Line operations turning `a` into `b`: common ends trimmed, the middle
/// aligned by longest common subsequence when small enough.
fn line_ops(a: &[&str], b: &[&str]) -> Vec<Op> {
    let pre = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..]
        .iter()
        .rev()
        .zip(b[pre..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    let mut ops = vec![Op::Same; pre];
    if ma.len().saturating_mul(mb.len()) > MAX_DIFF_CELLS {
        ops.extend(std::iter::repeat_n(Op::Del, ma.len()));
        ops.extend(std::iter::repeat_n(Op::Add, mb.len()));
    } else {
        // lcs[i][j]: the longest common subsequence of ma[i..] and mb[j..].
        let w = mb.len() + 1;
        let mut lcs = vec![0u32; (ma.len() + 1) * w];
        for i in (0..ma.len()).rev() {
            for j in (0..mb.len()).rev() {
                lcs[i * w + j] = if ma[i] == mb[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < ma.len() || j < mb.len() {
            if i < ma.len() && j < mb.len() && ma[i] == mb[j] {
                ops.push(Op::Same);
                (i, j) = (i + 1, j + 1);
            } else if i < ma.len() && (j == mb.len() || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1])
            {
                ops.push(Op::Del);
                i += 1;
            } else {
                ops.push(Op::Add);
                j += 1;
            }
        }
    }
    ops.extend(std::iter::repeat_n(Op::Same, suf));
    ops
}

/// A unified diff of `a` → `b` with a `diff (+A -D lines)` head line, cut
/// visibly at [`MAX_DIFF_BYTES`].
pub fn unified(path: &str, a: &str, b: &str) -> String {
    let la: Vec<&str> = a.lines().collect();
    let lb: Vec<&str> = b.lines().collect();
    let ops = line_ops(&la, &lb);
    let adds = ops.iter().filter(|o| **o == Op::Add).count();
    let dels = ops.iter().filter(|o| **o == Op::Del).count();
    let mut out = format!("diff (+{adds} -{dels} lines)\n--- {path}\n+++ {path} (planned)\n");
    // Positions in `ops` of each changed line, gathered into hunks whose
    // changes are at most 2 * CONTEXT unchanged lines apart.
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k] != Op::Same).collect();
    let mut k = 0;
    while k < changed.len() {
        let mut end = k;
        while end + 1 < changed.len() && changed[end + 1] - changed[end] <= 2 * CONTEXT + 1 {
            end += 1;
        }
        let from = changed[k].saturating_sub(CONTEXT);
        let to = (changed[end] + CONTEXT + 1).min(ops.len());
        // Line numbers at `from` in a and b.
        let sa = ops[..from].iter().filter(|o| **o != Op::Add).count();
        let sb = ops[..from].iter().filter(|o| **o != Op::Del).count();
        let na = ops[from..to].iter().filter(|o| **o != Op::Add).count();
        let nb = ops[from..to].iter().filter(|o| **o != Op::Del).count();
        out.push_str(&format!("@@ -{},{na} +{},{nb} @@\n", sa + 1, sb + 1));
        let (mut ia, mut ib) = (sa, sb);
        for op in &ops[from..to] {
            let line = match op {
                Op::Same => {
                    ia += 1;
                    ib += 1;
                    format!(" {}\n", lb[ib - 1])
                }
                Op::Del => {
                    ia += 1;
                    format!("-{}\n", la[ia - 1])
                }
                Op::Add => {
                    ib += 1;
                    format!("+{}\n", lb[ib - 1])
                }
            };
            out.push_str(&line);
        }
        k = end + 1;
    }
    if out.len() > MAX_DIFF_BYTES {
        ballast_proto::limits::truncate(&mut out, MAX_DIFF_BYTES);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_diff_shows_changed_lines_with_context() {
        let a = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n";
        let b = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n10\n11\n";
        expect_test::expect![[r#"
            diff (+2 -1 lines)
            --- /etc/x
            +++ /etc/x (planned)
            @@ -2,9 +2,10 @@
             2
             3
             4
            -5
            +five
             6
             7
             8
             9
             10
            +11
        "#]]
        .assert_eq(&unified("/etc/x", a, b));
    }

    #[test]
    fn plan_diff_is_bounded() {
        let a: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        let b: String = (0..20_000).map(|i| format!("other {i}\n")).collect();
        let d = unified("/big", &a, &b);
        assert!(d.len() <= MAX_DIFF_BYTES + 64, "{}", d.len());
        assert!(d.starts_with("diff (+20000 -20000 lines)"), "{}", &d[..40]);
    }
}
