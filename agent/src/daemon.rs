//! The agent daemon: hold a watch on the node's desired state, reconcile on
//! every change and on a jittered resync interval, report, and keep enforcing
//! the cached state while the controller is away.
//!
//! Invariants: one daemon per state dir (flock on `agent.lock`); one reconcile
//! at a time (flock on `run.lock`, shared with `ballast-agent apply`); only a
//! validated document whose hash matches is cached or enforced.

use crate::cache::{self, Cached};
use crate::client::{self, Enrolled};
use crate::engine::{self, RunOptions};
use crate::host::Host;
use anyhow::Context;
use ballast_proto::pb;
use ballast_proto::spec::NodeState;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Settings of `ballast-agent run`.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    /// Manage paths under this directory instead of `/`.
    pub root: Option<PathBuf>,
    /// Resync (drift repair) interval; each wait is jittered by ±10%.
    pub interval: Duration,
    pub heartbeat: Duration,
    pub facts_dir: PathBuf,
    /// Overrides the controller address recorded at enrollment.
    pub controller: Option<String>,
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
pub const DEFAULT_FACTS_DIR: &str = "/etc/ballast/facts.d";
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Takes an exclusive, non-blocking lock on `state_dir/NAME`.
pub fn lock(state_dir: &Path, name: &str, blocking: bool) -> anyhow::Result<Flock<File>> {
    let path = state_dir.join(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open lock {}", path.display()))?;
    let arg = if blocking {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    Flock::lock(file, arg).map_err(|(_, e)| {
        anyhow::anyhow!(
            "lock {}: {e} (is another ballast-agent running with this state dir?)",
            path.display()
        )
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random factor in [lo, hi).
fn jitter(lo: f64, hi: f64) -> f64 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    lo + (hi - lo) * (u32::from_le_bytes(b) as f64 / (u32::MAX as f64 + 1.0))
}

/// Runs one reconcile of `state` under the run lock, off the async threads.
pub async fn reconcile(
    state_dir: &Path,
    host: Arc<Host>,
    cached: Arc<Cached>,
    facts: Arc<serde_json::Value>,
    noop: bool,
    trigger: &str,
) -> anyhow::Result<pb::RunReport> {
    let state_dir = state_dir.to_owned();
    let trigger = trigger.to_owned();
    tokio::task::spawn_blocking(move || {
        let _run = lock(&state_dir, "run.lock", true)?;
        let started = now_ms();
        let report = engine::reconcile(&cached.state, &host, &RunOptions { noop, state_dir: &state_dir, facts: &facts });
        tracing::info!(revision = cached.revision, trigger = %trigger, changed = report.changed(), failed = report.failed(), ms = report.duration.as_millis() as u64, "reconciled");
        Ok(report.to_pb(cached.revision, &cached.hash, started, noop, &trigger))
    })
    .await
    .context("reconcile task")?
}

/// Checks a received document: hash, validity, and that it is ours.
fn accept(msg: pb::DesiredState, name: &str) -> anyhow::Result<Cached> {
    let hash = ballast_proto::sha256_tag(&msg.document);
    if hash != msg.hash {
        anyhow::bail!(
            "desired state for revision {} has hash {hash}, expected {}",
            msg.revision,
            msg.hash
        );
    }
    let state = NodeState::from_document(&msg.document).map_err(|e| {
        anyhow::anyhow!(
            "desired state for revision {} is invalid: {e}",
            msg.revision
        )
    })?;
    if state.node.name != name {
        anyhow::bail!(
            "desired state is for node {:?}, not {name:?}",
            state.node.name
        );
    }
    Ok(Cached {
        revision: msg.revision,
        hash,
        state,
    })
}

struct Agent {
    cfg: DaemonConfig,
    name: String,
    host: Arc<Host>,
    current: Option<Arc<Cached>>,
    facts: Arc<serde_json::Value>,
    facts_hash: String,
    facts_sent: Option<String>,
    /// Reports not yet delivered (the latest only: it supersedes older ones).
    unsent: Option<pb::RunReport>,
    next_resync: Instant,
}

impl Agent {
    fn schedule_resync(&mut self) {
        self.next_resync = Instant::now() + self.cfg.interval.mul_f64(jitter(0.9, 1.1));
    }

    async fn run_current(&mut self, trigger: &str) {
        self.schedule_resync();
        let Some(current) = self.current.clone() else {
            return;
        };
        if trigger != "change" {
            self.refresh_facts();
        }
        match reconcile(
            &self.cfg.state_dir,
            self.host.clone(),
            current,
            self.facts.clone(),
            false,
            trigger,
        )
        .await
        {
            Ok(report) => self.unsent = Some(report),
            Err(e) => tracing::error!(error = %format!("{e:#}"), "reconcile"),
        }
    }

    fn refresh_facts(&mut self) {
        let facts = crate::facts::collect(&self.cfg.facts_dir);
        self.facts_hash = crate::facts::stable_hash(&facts);
        self.facts = Arc::new(facts);
    }

    /// Sends facts if they changed since last sent, and any unsent report.
    async fn flush(
        &mut self,
        client: &mut pb::agent_client::AgentClient<Channel>,
    ) -> Result<(), tonic::Status> {
        if self.facts_sent.as_deref() != Some(self.facts_hash.as_str()) {
            client
                .put_facts(pb::Facts {
                    json: self.facts.to_string(),
                })
                .await?;
            self.facts_sent = Some(self.facts_hash.clone());
        }
        if let Some(report) = self.unsent.take()
            && let Err(e) = client.report(report.clone()).await
        {
            self.unsent = Some(report);
            return Err(e);
        }
        Ok(())
    }

    /// One connection: watch, reconcile, report, heartbeat, until it breaks.
    async fn session(&mut self, enrolled: &Enrolled) -> anyhow::Result<()> {
        let channel = enrolled.channel(self.cfg.controller.as_deref()).await?;
        let mut client = client::agent_client(channel);
        let known = self
            .current
            .as_ref()
            .map(|c| c.hash.clone())
            .unwrap_or_default();
        let mut stream = client
            .watch(pb::WatchRequest { known_hash: known })
            .await
            .map_err(|s| anyhow::anyhow!("watch: {}", s.message()))?
            .into_inner();
        tracing::info!(
            controller = enrolled.config.controller,
            "watching desired state"
        );
        self.flush(&mut client)
            .await
            .map_err(|s| anyhow::anyhow!("report: {}", s.message()))?;
        let mut heartbeat = tokio::time::interval(self.cfg.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(Ok(msg)) => {
                        match accept(msg, &self.name) {
                            Ok(cached) => {
                                let document = cached.state.to_document();
                                if let Err(e) = cache::store(&self.cfg.state_dir, cached.revision, &cached.hash, &document) {
                                    tracing::error!(error = %format!("{e:#}"), "cache desired state");
                                }
                                tracing::info!(revision = cached.revision, hash = %cached.hash, "new desired state");
                                self.current = Some(Arc::new(cached));
                                self.run_current("change").await;
                            }
                            Err(e) => tracing::error!(error = %format!("{e:#}"), "refused desired state; keeping the previous one"),
                        }
                    }
                    Some(Err(s)) => anyhow::bail!("watch ended: {}", s.message()),
                    None => anyhow::bail!("watch ended by the controller"),
                },
                _ = heartbeat.tick() => {
                    let applied = self.current.as_ref().map(|c| c.revision).unwrap_or(0);
                    client.heartbeat(pb::HeartbeatRequest { applied_revision: applied, agent_version: crate::VERSION.into() }).await.map_err(|s| anyhow::anyhow!("heartbeat: {}", s.message()))?;
                },
                _ = tokio::time::sleep_until(self.next_resync.into()) => self.run_current("resync").await,
            }
            self.flush(&mut client)
                .await
                .map_err(|s| anyhow::anyhow!("report: {}", s.message()))?;
        }
    }
}

/// Runs the daemon until `shutdown` completes.
pub async fn run(cfg: DaemonConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let _daemon = lock(&cfg.state_dir, "agent.lock", false)?;
    let enrolled = Enrolled::load(&cfg.state_dir)?;
    let host = Arc::new(Host::new(cfg.root.clone()));
    let current = match cache::load(&cfg.state_dir) {
        Ok(c) => c.map(Arc::new),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "ignoring the cached desired state");
            None
        }
    };
    let mut agent = Agent {
        name: enrolled.config.name.clone(),
        cfg,
        host,
        current,
        facts: Arc::new(serde_json::Value::Null),
        facts_hash: String::new(),
        facts_sent: None,
        unsent: None,
        next_resync: Instant::now(),
    };
    agent.refresh_facts();
    tokio::pin!(shutdown);
    // Enforce what we had before talking to anyone: the controller may be away.
    agent.run_current("startup").await;
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            r = agent.session(&enrolled) => r,
            _ = &mut shutdown => return Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "controller unreachable; enforcing the cached state");
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = BACKOFF_MIN;
        }
        let wait = backoff.mul_f64(jitter(0.5, 1.0));
        let retry_at = Instant::now() + wait;
        // While away: keep repairing drift on schedule, then retry.
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(retry_at.into()) => break,
                _ = tokio::time::sleep_until(agent.next_resync.into()) => agent.run_current("resync").await,
                _ = &mut shutdown => return Ok(()),
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
