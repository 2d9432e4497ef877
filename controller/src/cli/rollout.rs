//! `ballast rollout status|pause|resume|abort`: the rollout of the current
//! revision, policy by policy and wave by wave; where a node stands in it
//! (for `ballast nodes` and `node show`); and the progress that
//! `apply --wait` follows (see [`follow`]).

use super::conn::{Conn, author, connect, status_error};
use super::output::{Format, emit, esc, esc_join};
use super::wait::{FailedNode, MAX_FAILED_DETAILED, failed_node};
use ballast_proto::pb;
use ballast_proto::pb::admin_client::AdminClient;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

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

fn wave_doc(w: &pb::RolloutWave) -> serde_json::Value {
    serde_json::json!({
        "state": w.state,
        "nodes": w.nodes,
        "converged": w.converged,
        "failed": w.failed,
        "pending": w.pending,
    })
}

/// The JSON of a rollout status: the first policy's fields at the top (as
/// before per-group policies), every policy under `policies`.
pub fn status_doc(s: &pb::RolloutStatus) -> serde_json::Value {
    serde_json::json!({
        "revision": s.revision,
        "base": s.base,
        "phase": s.phase,
        "wave": s.wave,
        "bake_ms": s.bake_ms,
        "max_failed": s.max_failed,
        "reason": s.reason,
        "gate_failed": s.gate_failed,
        "waves": s.waves.iter().map(wave_doc).collect::<Vec<_>>(),
        "policies": s.policies.iter().map(|p| serde_json::json!({
            "policy": p.policy,
            "wave": p.wave,
            "done": p.done,
            "bake_ms": p.bake_ms,
            "max_failed": p.max_failed,
            "waves": p.waves.iter().map(wave_doc).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "at_once": s.at_once.as_ref().map(wave_doc),
    })
}

fn print(s: &pb::RolloutStatus, format: Format, out: &mut dyn Write) -> anyhow::Result<()> {
    emit(
        out,
        format,
        || status_doc(s),
        |out| {
            // One policy and no unpaced nodes: the one-policy layout.
            if let ([p], None) = (s.policies.as_slice(), &s.at_once)
                && p.policy == "rollout"
            {
                writeln!(
                    out,
                    "revision {} from {}: {}, wave {} of {} (bake {} s, max_failed {})",
                    s.revision,
                    s.base,
                    s.phase,
                    p.wave,
                    p.waves.len(),
                    p.bake_ms / 1000,
                    p.max_failed
                )?;
                if !s.reason.is_empty() {
                    writeln!(out, "reason: {}", esc(&s.reason))?;
                }
                return write_waves(out, "", &p.waves);
            }
            writeln!(out, "revision {} from {}: {}", s.revision, s.base, s.phase)?;
            if !s.reason.is_empty() {
                writeln!(out, "reason: {}", esc(&s.reason))?;
            }
            for p in &s.policies {
                writeln!(
                    out,
                    "policy {}: wave {} of {}{} (bake {} s, max_failed {})",
                    esc(&p.policy),
                    p.wave,
                    p.waves.len(),
                    if p.done { ", done" } else { "" },
                    p.bake_ms / 1000,
                    p.max_failed
                )?;
                write_waves(out, "  ", &p.waves)?;
            }
            if let Some(w) = &s.at_once {
                writeln!(out, "no policy (at once): {} node(s)", w.nodes.len())?;
                write_waves(out, "  ", std::slice::from_ref(w))?;
            }
            Ok(())
        },
    )
}

fn write_waves(out: &mut dyn Write, indent: &str, waves: &[pb::RolloutWave]) -> anyhow::Result<()> {
    writeln!(
        out,
        "{indent}{:<5} {:<8} {:>5} {:>9} {:>6} {:>7}  FAILED NODES",
        "WAVE", "STATE", "NODES", "CONVERGED", "FAILED", "PENDING"
    )?;
    for (i, w) in waves.iter().enumerate() {
        writeln!(
            out,
            "{indent}{:<5} {:<8} {:>5} {:>9} {:>6} {:>7}  {}",
            i + 1,
            esc(&w.state),
            w.nodes.len(),
            w.converged,
            w.failed.len(),
            w.pending,
            esc_join(&w.failed, ", ")
        )?;
    }
    Ok(())
}

/// Why a node's desired revision is what it is, in a few words for the
/// `ballast nodes` table: `12 w2/4 current`, `12 w3/4 held`, `12 at once`.
pub fn node_short(r: &pb::NodeRollout) -> String {
    let wave = || format!("w{}/{}", r.wave, r.waves);
    match r.state.as_str() {
        "passed" => format!("{} {} passed", r.revision, wave()),
        "current" => format!("{} {} current", r.revision, wave()),
        "waiting" => format!("{} {} held", r.revision, wave()),
        "at-once" => format!("{} at once", r.revision),
        other => format!("{} {}", r.revision, esc(other)),
    }
}

/// Why a node's desired revision is what it is, for `node show` and JSON:
/// which rollout, which policy and wave, and what it waits for.
pub fn node_why(r: &pb::NodeRollout) -> String {
    let of = format!("the rollout of {}", r.revision);
    let paused = if r.phase == "paused" {
        " (the rollout is paused)"
    } else {
        ""
    };
    let at = || format!("wave {}/{} of policy {}", r.wave, r.waves, esc(&r.policy));
    match r.state.as_str() {
        "passed" => format!("desired {}: {of}, {} passed", r.revision, at()),
        "current" => format!("desired {}: {of}, {} is rolling{paused}", r.revision, at()),
        "waiting" => format!(
            "desired {}: held by {of} in {}: starts when wave {} passes (now at wave {}){paused}",
            r.base,
            at(),
            r.wave - 1,
            r.current_wave
        ),
        "at-once" => format!(
            "desired {}: {of}; no policy paces this node, so it got the change at once",
            r.revision
        ),
        "late" => format!(
            "desired {}: enrolled after {of} started; gets {} when it is done",
            r.base, r.revision
        ),
        "aborted" => format!("desired {}: {of} was aborted, back on {}", r.base, r.base),
        "done" => format!("desired {}: {of} is done", r.revision),
        other => format!("{of}: {}", esc(other)),
    }
}

/// The JSON of a node's place in the rollout (null when none).
pub fn node_doc(r: Option<&pb::NodeRollout>) -> serde_json::Value {
    match r {
        None => serde_json::Value::Null,
        Some(r) => serde_json::json!({
            "revision": r.revision,
            "base": r.base,
            "phase": r.phase,
            "policy": r.policy,
            "wave": r.wave,
            "waves": r.waves,
            "current_wave": r.current_wave,
            "state": r.state,
            "why": node_why(r),
        }),
    }
}

/// Whether `apply --wait` may redraw its progress in place: set only by the
/// `ballast` binary when its standard output is a terminal.
static REDRAW: AtomicBool = AtomicBool::new(false);

/// Lets `apply --wait` redraw its rollout progress in place.
pub fn redraw_in_place() {
    REDRAW.store(true, Ordering::Relaxed);
}

/// The progress lines of a rollout: the phase, then one line per policy
/// (its current wave; per wave converged/failed/pending), then the nodes
/// no policy paces.
pub fn progress_lines(s: &pb::RolloutStatus) -> Vec<String> {
    let mut lines = vec![format!(
        "rollout of revision {} from {}: {}{}",
        s.revision,
        s.base,
        s.phase,
        if s.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", esc(&s.reason))
        }
    )];
    let counts = |w: &pb::RolloutWave| {
        format!(
            "{}/{} converged, {} failed, {} pending",
            w.converged,
            w.nodes.len(),
            w.failed.len(),
            w.pending
        )
    };
    for p in &s.policies {
        let waves: Vec<String> = p
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| match w.state.as_str() {
                "waiting" => format!("{} waiting ({} node(s))", i + 1, w.nodes.len()),
                "current" if p.healthy_since_ms > 0 => {
                    format!("{} current, baking: {}", i + 1, counts(w))
                }
                state => format!("{} {}: {}", i + 1, esc(state), counts(w)),
            })
            .collect();
        lines.push(format!(
            "  {} wave {}/{}: {}",
            esc(&p.policy),
            p.wave,
            p.waves.len(),
            waves.join(" | ")
        ));
    }
    if let Some(w) = &s.at_once {
        lines.push(format!("  at once (no policy): {}", counts(w)));
    }
    lines
}

/// How following a rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Every wave passed and the nodes no policy paces converged.
    Done,
    /// A gate failed (the rollout paused), or a node no policy paces failed.
    Failed,
    Aborted,
    /// Another apply made a newer revision current.
    Superseded(u64),
    TimedOut,
}

/// What `apply --wait` saw of a rollout.
pub struct Followed {
    pub end: End,
    pub status: pb::RolloutStatus,
    /// The failing nodes of the current waves (and those no policy paces).
    pub failed: Vec<FailedNode>,
    pub timeout: Duration,
}

impl Followed {
    pub fn print(&self, out: &mut dyn Write) -> anyhow::Result<()> {
        let s = &self.status;
        match self.end {
            End::Done => writeln!(out, "rollout of revision {} done", s.revision)?,
            End::Failed => writeln!(
                out,
                "rollout of revision {} stopped: {}",
                s.revision,
                if s.reason.is_empty() {
                    "nodes that no policy paces failed".into()
                } else {
                    esc(&s.reason)
                }
            )?,
            End::Aborted => writeln!(
                out,
                "rollout of revision {} aborted ({}); moved nodes are back on revision {}",
                s.revision,
                esc(&s.reason),
                s.base
            )?,
            End::Superseded(n) => writeln!(
                out,
                "rollout of revision {} superseded by revision {n} (see ballast rollout status)",
                s.revision
            )?,
            End::TimedOut => writeln!(
                out,
                "timed out after {}s; the rollout of revision {} goes on ({}): see ballast rollout status",
                self.timeout.as_secs(),
                s.revision,
                s.phase
            )?,
        }
        super::wait::print_failed(out, &self.failed)
    }

    pub fn doc(&self) -> serde_json::Value {
        let end = match self.end {
            End::Done => "done".to_owned(),
            End::Failed => "failed".into(),
            End::Aborted => "aborted".into(),
            End::Superseded(n) => format!("superseded by {n}"),
            End::TimedOut => "timed out".into(),
        };
        serde_json::json!({
            "end": end,
            "rollout": status_doc(&self.status),
            "failed": super::wait::failed_doc(&self.failed),
        })
    }
}

/// The rollout of `revision`, if it has one (the current revision's).
pub async fn rollout_of(
    client: &mut AdminClient<Channel>,
    revision: u64,
) -> anyhow::Result<Option<pb::RolloutStatus>> {
    match client.get_rollout(pb::GetRolloutRequest {}).await {
        Ok(s) => Ok(Some(s.into_inner()).filter(|s| s.revision == revision)),
        Err(e) if e.code() == tonic::Code::NotFound => Ok(None),
        Err(e) => Err(status_error(e)),
    }
}

/// Follows the rollout `first` until it is done, a gate fails, it is
/// aborted or superseded, or `timeout` passes, printing its progress as it
/// changes when `progress`: redrawn in place on a terminal, otherwise only
/// the lines that changed. A pause by an operator is waited out.
pub async fn follow(
    client: &mut AdminClient<Channel>,
    out: &mut dyn Write,
    progress: bool,
    first: pb::RolloutStatus,
    timeout: Duration,
) -> anyhow::Result<Followed> {
    let deadline = Instant::now() + timeout;
    let redraw = progress && REDRAW.load(Ordering::Relaxed);
    let mut shown: Vec<String> = Vec::new();
    let mut status = first;
    loop {
        if progress {
            let lines = progress_lines(&status);
            show(out, redraw, &shown, &lines)?;
            shown = lines;
        }
        let at_once = status.at_once.clone().unwrap_or_default();
        let end = match status.phase.as_str() {
            "done" if !at_once.failed.is_empty() => Some(End::Failed),
            "done" if at_once.pending == 0 => Some(End::Done),
            "paused" if status.gate_failed => Some(End::Failed),
            "aborted" => Some(End::Aborted),
            _ if !at_once.failed.is_empty() => Some(End::Failed),
            _ if Instant::now() >= deadline => Some(End::TimedOut),
            _ => None,
        };
        if let Some(end) = end {
            let mut failed = Vec::new();
            if end == End::Failed {
                let names = status
                    .policies
                    .iter()
                    .flat_map(|p| &p.waves)
                    .chain(&status.at_once)
                    .flat_map(|w| &w.failed);
                for (i, name) in names.enumerate() {
                    failed.push(match i < MAX_FAILED_DETAILED {
                        true => failed_node(client, name).await?,
                        // Named only: one call per node shown is bounded.
                        false => FailedNode {
                            name: name.clone(),
                            failed_resources: Vec::new(),
                            failed_count: 0,
                            errors: None,
                        },
                    });
                }
            }
            return Ok(Followed {
                end,
                status,
                failed,
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let revision = status.revision;
        match client.get_rollout(pb::GetRolloutRequest {}).await {
            Ok(s) if s.get_ref().revision == revision => status = s.into_inner(),
            Ok(s) => {
                let newer = s.into_inner().revision;
                return Ok(superseded(status, newer, timeout));
            }
            Err(e) if e.code() == tonic::Code::NotFound => {
                // A newer revision without a policy.
                let newer = client
                    .history(pb::HistoryRequest { limit: 1 })
                    .await
                    .map_err(status_error)?
                    .into_inner()
                    .revisions
                    .first()
                    .map_or(0, |r| r.number);
                return Ok(superseded(status, newer, timeout));
            }
            Err(e) => return Err(status_error(e)),
        }
    }
}

fn superseded(status: pb::RolloutStatus, newer: u64, timeout: Duration) -> Followed {
    Followed {
        end: End::Superseded(newer),
        status,
        failed: Vec::new(),
        timeout,
    }
}

/// Prints `lines` where `shown` was: on a terminal, moves up over the old
/// block and redraws it; otherwise prints only the lines that changed.
fn show(
    out: &mut dyn Write,
    redraw: bool,
    shown: &[String],
    lines: &[String],
) -> anyhow::Result<()> {
    if shown == lines {
        return Ok(());
    }
    if redraw {
        if !shown.is_empty() {
            // Up to the first line of the old block, then clear to the end.
            write!(out, "\x1b[{}F\x1b[J", shown.len())?;
        }
        for l in lines {
            writeln!(out, "{l}")?;
        }
    } else {
        for (i, l) in lines.iter().enumerate() {
            if shown.get(i) != Some(l) {
                writeln!(out, "{l}")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn status(phase: &str, converged: u32, healthy: u64) -> pb::RolloutStatus {
        let wave = |state: &str, nodes: &[&str], converged: u32| pb::RolloutWave {
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
            state: state.into(),
            converged,
            failed: Vec::new(),
            pending: nodes.len() as u32 - converged,
        };
        pb::RolloutStatus {
            revision: 12,
            base: 11,
            phase: phase.into(),
            policies: vec![
                pb::RolloutPolicyStatus {
                    policy: "rollout".into(),
                    wave: 1,
                    waves: vec![
                        wave("current", &["a"], converged),
                        wave("waiting", &["b"], 0),
                    ],
                    healthy_since_ms: healthy,
                    ..Default::default()
                },
                pb::RolloutPolicyStatus {
                    policy: "groups.db.rollout".into(),
                    wave: 1,
                    waves: vec![wave("current", &["c", "d"], 2)],
                    healthy_since_ms: 5,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    /// Without a terminal, each step prints only the lines that changed;
    /// on a terminal the whole block is redrawn over the last one.
    #[test]
    fn progress_prints_changed_lines_plainly_and_redraws_on_a_terminal() {
        let steps = [
            status("running", 0, 0),
            status("running", 0, 0),
            status("running", 1, 7),
        ];
        for (redraw, want) in [
            (
                false,
                expect![[r#"
                    rollout of revision 12 from 11: running
                      rollout wave 1/2: 1 current: 0/1 converged, 0 failed, 1 pending | 2 waiting (1 node(s))
                      groups.db.rollout wave 1/1: 1 current, baking: 2/2 converged, 0 failed, 0 pending
                      rollout wave 1/2: 1 current, baking: 1/1 converged, 0 failed, 0 pending | 2 waiting (1 node(s))
                "#]],
            ),
            (
                true,
                expect![[r#"
                    rollout of revision 12 from 11: running
                      rollout wave 1/2: 1 current: 0/1 converged, 0 failed, 1 pending | 2 waiting (1 node(s))
                      groups.db.rollout wave 1/1: 1 current, baking: 2/2 converged, 0 failed, 0 pending
                    \x1b[3F\x1b[Jrollout of revision 12 from 11: running
                      rollout wave 1/2: 1 current, baking: 1/1 converged, 0 failed, 0 pending | 2 waiting (1 node(s))
                      groups.db.rollout wave 1/1: 1 current, baking: 2/2 converged, 0 failed, 0 pending
                "#]],
            ),
        ] {
            let mut out = Vec::new();
            let mut shown = Vec::new();
            for s in &steps {
                let lines = progress_lines(s);
                show(&mut out, redraw, &shown, &lines).unwrap();
                shown = lines;
            }
            want.assert_eq(&String::from_utf8(out).unwrap().replace('\x1b', "\\x1b"));
        }
    }

    #[test]
    fn a_node_says_which_rollout_and_wave_hold_it() {
        let r = pb::NodeRollout {
            revision: 12,
            base: 11,
            phase: "running".into(),
            policy: "groups.web.rollout".into(),
            wave: 3,
            waves: 4,
            current_wave: 1,
            state: "waiting".into(),
        };
        expect!["desired 11: held by the rollout of 12 in wave 3/4 of policy groups.web.rollout: starts when wave 2 passes (now at wave 1)"]
            .assert_eq(&node_why(&r));
        expect!["12 w3/4 held"].assert_eq(&node_short(&r));
        let moved = pb::NodeRollout {
            state: "current".into(),
            wave: 1,
            phase: "paused".into(),
            ..r
        };
        expect!["desired 12: the rollout of 12, wave 1/4 of policy groups.web.rollout is rolling (the rollout is paused)"]
            .assert_eq(&node_why(&moved));
    }

    /// With several policies, `rollout status` shows each with its waves,
    /// and the nodes no policy paces; with one, the one-policy layout.
    #[test]
    fn rollout_status_shows_every_policy_and_the_unpaced_nodes() {
        let mut s = status("paused", 1, 0);
        s.reason = "paused by ops@x".into();
        s.at_once = Some(pb::RolloutWave {
            nodes: vec!["e".into()],
            state: "at-once".into(),
            converged: 1,
            ..Default::default()
        });
        let mut out = Vec::new();
        print(&s, Format::Table, &mut out).unwrap();
        expect![[r#"
            revision 12 from 11: paused
            reason: paused by ops@x
            policy rollout: wave 1 of 2 (bake 0 s, max_failed 0)
              WAVE  STATE    NODES CONVERGED FAILED PENDING  FAILED NODES
              1     current      1         1      0       0  
              2     waiting      1         0      0       1  
            policy groups.db.rollout: wave 1 of 1 (bake 0 s, max_failed 0)
              WAVE  STATE    NODES CONVERGED FAILED PENDING  FAILED NODES
              1     current      2         2      0       0  
            no policy (at once): 1 node(s)
              WAVE  STATE    NODES CONVERGED FAILED PENDING  FAILED NODES
              1     at-once      1         1      0       0  
        "#]]
        .assert_eq(&String::from_utf8(out).unwrap());
        s.policies.pop();
        s.at_once = None;
        s.policies[0].bake_ms = 60_000;
        let mut out = Vec::new();
        print(&s, Format::Table, &mut out).unwrap();
        expect![[r#"
            revision 12 from 11: paused, wave 1 of 2 (bake 60 s, max_failed 0)
            reason: paused by ops@x
            WAVE  STATE    NODES CONVERGED FAILED PENDING  FAILED NODES
            1     current      1         1      0       0  
            2     waiting      1         0      0       1  
        "#]]
        .assert_eq(&String::from_utf8(out).unwrap());
    }
}
