//! The agent daemon: hold a watch on the node's desired state, reconcile on
//! every change and on a jittered resync interval, report, and keep enforcing
//! the cached state while the controller is away.
//!
//! Invariants: one daemon per state dir (flock on `agent.lock`); one reconcile
//! at a time (flock on `run.lock`, shared with `ballast-agent apply`); only a
//! validated document whose hash matches is cached or enforced.

use crate::cache::{self, Cached};
use crate::client::{self, Enrolled, Target};
use crate::engine::{self, RunOptions};
use crate::host::Host;
use crate::outbox::Outbox;
use crate::state::{Lock, StateDir};
use anyhow::Context;
use ballast_proto::enums::Trigger;
use ballast_proto::pb;
use ballast_proto::spec::NodeState;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Settings of `ballast-agent run`.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub state_dir: StateDir,
    /// Manage paths under this directory instead of `/`.
    pub root: Option<PathBuf>,
    /// Resync (drift repair) interval; each wait is jittered by ±10%.
    pub interval: Duration,
    pub heartbeat: Duration,
    pub facts_dir: PathBuf,
    /// Overrides the controller address recorded at enrollment.
    pub controller: Option<String>,
    /// The least time between two sends of the host figures
    /// (`facts::HostPacer`).
    pub host_figures_every: Duration,
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
pub const DEFAULT_FACTS_DIR: &str = "/etc/ballast/facts.d";
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Longest wait for any one call to the controller (connecting has its own, in `client`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

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
    state_dir: &StateDir,
    host: Arc<Host>,
    cached: Arc<Cached>,
    facts: Arc<serde_json::Value>,
    noop: bool,
    trigger: Trigger,
) -> anyhow::Result<pb::RunReport> {
    let state_dir = state_dir.to_owned();
    tokio::task::spawn_blocking(move || {
        // A dry run changes nothing, so it need not wait for a run, nor make
        // one wait; it only reads the state dir (see `engine::reconcile`).
        let _run = if noop {
            None
        } else {
            Some(state_dir.lock(Lock::Run)?)
        };
        let started = now_ms();
        let report = engine::reconcile(&cached.state, &host, &RunOptions { noop, state_dir: &state_dir, facts: &facts });
        tracing::info!(revision = cached.revision, trigger = %trigger, changed = report.changed(), failed = report.failed(), ms = report.duration.as_millis() as u64, "reconciled");
        Ok(report.to_pb(cached.revision, &cached.hash, started, noop, trigger))
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

/// The node's current desired state, asked of its controllers in turn over
/// mutual TLS: the first message of a Watch sent with no known hash (so the
/// controller always sends it), checked by [`accept`] as the daemon checks
/// every document, then the watch is closed. Nothing is cached.
pub async fn fetch_desired(
    enrolled: &Enrolled,
    controller: Option<&str>,
) -> anyhow::Result<Cached> {
    let list = controller.unwrap_or(&enrolled.config.controller);
    let controllers = client::targets(list).await?;
    let mut failures = Vec::new();
    for at in &controllers {
        let attempt = async {
            let channel = enrolled.channel_to(at).await?;
            let mut client = client::agent_client(channel);
            let mut stream = deadline("watch", client.watch(pb::WatchRequest::default()))
                .await?
                .into_inner();
            match tokio::time::timeout(CALL_TIMEOUT, stream.next()).await {
                Ok(Some(Ok(msg))) => Ok(msg),
                Ok(Some(Err(s))) => Err(anyhow::anyhow!("watch: {}", s.message())),
                Ok(None) => Err(anyhow::anyhow!("watch ended by the controller")),
                Err(_) => Err(anyhow::anyhow!(
                    "watch: no desired state from the controller within {CALL_TIMEOUT:?}"
                )),
            }
        };
        match attempt.await {
            // A document that fails the checks is an answer, not an outage:
            // asking another controller would hide it.
            Ok(msg) => return accept(msg, &enrolled.config.name),
            Err(e) => failures.push(format!("{at}: {e:#}")),
        }
    }
    anyhow::bail!("no controller answered: {}", failures.join("; "))
}

/// What the enforcer tells the link: the state it enforces and the facts it saw.
#[derive(Clone, Default)]
struct Status {
    /// Hash of the enforced desired state ("" when none): the watch's `known_hash`.
    hash: String,
    revision: u64,
    facts: Arc<serde_json::Value>,
    facts_hash: String,
}

/// The enforcing half: owns the desired state and reconciles on every change
/// and on the resync timer. It never waits on the network: reports go to the
/// outbox, new states arrive through a watch channel.
struct Enforcer {
    cfg: DaemonConfig,
    host: Arc<Host>,
    current: Option<Arc<Cached>>,
    status: tokio::sync::watch::Sender<Status>,
    outbox: Arc<Outbox>,
    queued: Arc<tokio::sync::Notify>,
    next_resync: Instant,
}

impl Enforcer {
    fn schedule_resync(&mut self) {
        self.next_resync = Instant::now() + self.cfg.interval.mul_f64(jitter(0.9, 1.1));
    }

    fn publish(&self, facts: Option<serde_json::Value>) {
        let (hash, revision) = self
            .current
            .as_ref()
            .map(|c| (c.hash.clone(), c.revision))
            .unwrap_or_default();
        self.status.send_modify(|s| {
            s.hash = hash;
            s.revision = revision;
            if let Some(facts) = facts {
                s.facts_hash = crate::facts::stable_hash(&facts);
                s.facts = Arc::new(facts);
            }
        });
    }

    async fn run_current(&mut self, trigger: Trigger) {
        self.schedule_resync();
        if trigger != Trigger::Change {
            let dir = self.cfg.facts_dir.clone();
            let facts = tokio::task::spawn_blocking(move || crate::facts::collect(&dir))
                .await
                .unwrap_or(serde_json::Value::Null);
            self.publish(Some(facts));
        }
        let Some(current) = self.current.clone() else {
            return;
        };
        let facts = self.status.borrow().facts.clone();
        match reconcile(
            &self.cfg.state_dir,
            self.host.clone(),
            current,
            facts,
            false,
            trigger,
        )
        .await
        {
            Ok(report) => {
                let outbox = self.outbox.clone();
                match tokio::task::spawn_blocking(move || outbox.push(&report)).await {
                    Ok(Ok(())) => self.queued.notify_one(),
                    Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "queue report"),
                    Err(e) => tracing::error!(error = %e, "queue report task"),
                }
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "reconcile"),
        }
    }

    /// Enforces forever: at startup, on each new desired state, on the resync timer.
    async fn run(mut self, mut desired: tokio::sync::watch::Receiver<Option<Arc<Cached>>>) {
        // Enforce what we had before talking to anyone: the controller may be away.
        self.run_current(Trigger::Startup).await;
        let mut link_open = true;
        loop {
            tokio::select! {
                changed = desired.changed(), if link_open => {
                    if changed.is_err() {
                        link_open = false;
                        continue;
                    }
                    let Some(cached) = desired.borrow_and_update().clone() else { continue };
                    let document = cached.state.to_document();
                    if let Err(e) = cache::store(&self.cfg.state_dir, cached.revision, &cached.hash, &document) {
                        tracing::error!(error = %format!("{e:#}"), "cache desired state");
                    }
                    tracing::info!(revision = cached.revision, hash = %cached.hash, "new desired state");
                    self.current = Some(cached);
                    self.publish(None);
                    self.run_current(Trigger::Change).await;
                }
                _ = tokio::time::sleep_until(self.next_resync.into()) => self.run_current(Trigger::Resync).await,
            }
        }
    }
}

/// Bounds one call to the controller: a hung controller must end the session,
/// never hold the agent.
async fn deadline<T>(
    what: &str,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(s)) => Err(anyhow::anyhow!("{what}: {}", s.message())),
        Err(_) => Err(anyhow::anyhow!(
            "{what}: no answer from the controller within {CALL_TIMEOUT:?}"
        )),
    }
}

/// The talking half: one connection at a time to the controller, with backoff.
struct Link {
    cfg: DaemonConfig,
    name: String,
    status: tokio::sync::watch::Receiver<Status>,
    desired: tokio::sync::watch::Sender<Option<Arc<Cached>>>,
    outbox: Arc<Outbox>,
    queued: Arc<tokio::sync::Notify>,
    facts_sent: Option<String>,
    host: crate::facts::HostPacer,
}

impl Link {
    /// Sends the host figures when the pacer says they are due and moved.
    /// A controller that refuses them for good (too old to know the call,
    /// or finding them invalid) is not asked again before the next interval.
    async fn send_host(
        &mut self,
        client: &mut pb::agent_client::AgentClient<Channel>,
    ) -> anyhow::Result<()> {
        let now = Instant::now();
        if !self.host.due(now) {
            return Ok(());
        }
        let dir = self.cfg.state_dir.path().to_owned();
        let figures = tokio::task::spawn_blocking(move || crate::facts::host_figures(&dir))
            .await
            .context("host figures task")?;
        if !self.host.worth_sending(&figures) {
            return Ok(());
        }
        match tokio::time::timeout(CALL_TIMEOUT, client.put_host_figures(figures.clone())).await {
            Ok(Ok(_)) => {}
            Ok(Err(s))
                if matches!(
                    s.code(),
                    tonic::Code::InvalidArgument | tonic::Code::Unimplemented
                ) =>
            {
                tracing::warn!(error = %s.message(), "controller refused host figures");
            }
            Ok(Err(s)) => anyhow::bail!("host figures: {}", s.message()),
            Err(_) => {
                anyhow::bail!("host figures: no answer from the controller within {CALL_TIMEOUT:?}")
            }
        }
        self.host.sent(now, figures);
        Ok(())
    }

    /// Sends facts if they changed since last sent, then every queued report, oldest first.
    async fn flush(
        &mut self,
        client: &mut pb::agent_client::AgentClient<Channel>,
    ) -> anyhow::Result<()> {
        let (facts, facts_hash) = {
            let s = self.status.borrow_and_update();
            (s.facts.clone(), s.facts_hash.clone())
        };
        if !facts_hash.is_empty() && self.facts_sent.as_deref() != Some(facts_hash.as_str()) {
            if let Some(json) = bounded_facts(&facts) {
                deadline("facts", client.put_facts(pb::Facts { json })).await?;
            }
            self.facts_sent = Some(facts_hash);
        }
        self.send_host(client).await?;
        loop {
            let outbox = self.outbox.clone();
            let Some((seq, report)) = tokio::task::spawn_blocking(move || outbox.front())
                .await
                .context("outbox task")??
            else {
                return Ok(());
            };
            match tokio::time::timeout(CALL_TIMEOUT, client.report(report)).await {
                Ok(Ok(_)) => {}
                // Refused as invalid or too large: retrying cannot help.
                Ok(Err(s))
                    if matches!(
                        s.code(),
                        tonic::Code::InvalidArgument | tonic::Code::OutOfRange
                    ) =>
                {
                    tracing::error!(error = %s.message(), "controller refused a report; dropping it");
                }
                Ok(Err(s)) => anyhow::bail!("report: {}", s.message()),
                Err(_) => {
                    anyhow::bail!("report: no answer from the controller within {CALL_TIMEOUT:?}")
                }
            }
            let outbox = self.outbox.clone();
            tokio::task::spawn_blocking(move || outbox.remove(seq))
                .await
                .context("outbox task")?;
        }
    }

    /// One connection to `controller`: watch, heartbeat, deliver reports,
    /// until it breaks. The watch sends the hash the agent has, so a new
    /// session (on any controller) sends nothing the agent already applied.
    async fn session(&mut self, enrolled: &Enrolled, controller: &Target) -> anyhow::Result<()> {
        let channel = enrolled.channel_to(controller).await?;
        let mut client = client::agent_client(channel);
        let known = self.status.borrow().hash.clone();
        let mut stream = deadline(
            "watch",
            client.watch(pb::WatchRequest { known_hash: known }),
        )
        .await?
        .into_inner();
        tracing::info!(controller = %controller, "watching desired state");
        let mut heartbeat = tokio::time::interval(self.cfg.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.flush(&mut client).await?;
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(Ok(msg)) => match accept(msg, &self.name) {
                        Ok(cached) => {
                            self.desired.send_replace(Some(Arc::new(cached)));
                        }
                        Err(e) => tracing::error!(error = %format!("{e:#}"), "refused desired state; keeping the previous one"),
                    },
                    Some(Err(s)) => anyhow::bail!("watch ended: {}", s.message()),
                    None => anyhow::bail!("watch ended by the controller"),
                },
                _ = heartbeat.tick() => {
                    let applied = self.status.borrow().revision;
                    deadline("heartbeat", client.heartbeat(pb::HeartbeatRequest { applied_revision: applied, agent_version: crate::VERSION.into() })).await?;
                },
                _ = self.queued.notified() => {},
                changed = self.status.changed() => if changed.is_err() { anyhow::bail!("the enforcer stopped") },
            }
        }
    }

    /// Connects, and reconnects, forever. When a session ends the next
    /// controller of the list is tried at once; only when every controller
    /// of a round has failed does the link wait, with jittered exponential
    /// backoff. A session that lasted resets both.
    async fn run(mut self, enrolled: Enrolled) {
        let list = self
            .cfg
            .controller
            .clone()
            .unwrap_or_else(|| enrolled.config.controller.clone());
        if let Err(e) = ballast_proto::controllers(&list) {
            // Checked at enrollment and on the command line: only a hand-edited
            // agent.json gets here. Enforcing the cache goes on regardless.
            tracing::error!(error = %e, "no usable controller address; enforcing the cached state only");
            return;
        }
        let mut pacing = Pacing::new();
        loop {
            // Names are resolved again every round: a controller added to
            // (or removed from) a DNS name is seen without a restart.
            let controllers = match client::targets(&list).await {
                Ok(t) => controller_order(t, &self.name),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "no usable controller address; enforcing the cached state only");
                    return;
                }
            };
            pacing.start_round(controllers.len());
            for at in &controllers {
                let started = Instant::now();
                let result = self.session(&enrolled, at).await;
                let wait = pacing.session_ended(started.elapsed());
                if let Err(e) = result {
                    tracing::warn!(controller = %at, error = %format!("{e:#}"), retry_in_ms = wait.as_millis() as u64, unsent_reports = self.outbox.len(), "controller unreachable; enforcing the cached state");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// When the link tries its next controller. After a session ends the next
/// controller of the round is tried at once, within a jitter of up to
/// [`NEXT_SPREAD`] so that the agents of a dead controller do not all
/// arrive together; only when every controller of a round has failed does
/// it wait, with jittered exponential backoff from [`BACKOFF_MIN`] to
/// [`BACKOFF_MAX`]. A session that lasted [`SESSION_LASTED`] resets both.
/// Public so that the fleet load bench paces its simulated agents with the
/// very same rule.
#[derive(Debug)]
pub struct Pacing {
    backoff: Duration,
    ended_in_round: usize,
    round: usize,
}

/// Most jitter before the next controller of a round.
pub const NEXT_SPREAD: Duration = Duration::from_millis(200);
/// A session this long was a working one: backoff starts over.
pub const SESSION_LASTED: Duration = Duration::from_secs(30);

impl Default for Pacing {
    fn default() -> Pacing {
        Pacing::new()
    }
}

impl Pacing {
    pub fn new() -> Pacing {
        Pacing {
            backoff: BACKOFF_MIN,
            ended_in_round: 0,
            round: 1,
        }
    }

    /// A new round over `controllers` controllers begins.
    pub fn start_round(&mut self, controllers: usize) {
        self.ended_in_round = 0;
        self.round = controllers.max(1);
    }

    /// A session that lasted `lasted` ended: how long to wait before the next.
    pub fn session_ended(&mut self, lasted: Duration) -> Duration {
        if lasted > SESSION_LASTED {
            self.backoff = BACKOFF_MIN;
            self.ended_in_round = 0;
        }
        self.ended_in_round += 1;
        if self.ended_in_round.is_multiple_of(self.round) {
            let wait = self.backoff.mul_f64(jitter(0.5, 1.0));
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            wait
        } else {
            NEXT_SPREAD.mul_f64(jitter(0.0, 1.0))
        }
    }
}

/// The order in which node `name` tries `controllers`: by a hash of the
/// node's name and each address (rendezvous hashing), highest first. Every
/// node of a fleet is given the same list; in list order they would all
/// hold their streams on the first controller, and when it died all move
/// to the second. Hashed, they spread evenly over the list, a dead
/// controller's nodes spread evenly over the survivors, and a node comes
/// back to the same controller after a restart.
pub fn controller_order<T: std::fmt::Display>(mut controllers: Vec<T>, name: &str) -> Vec<T> {
    controllers.sort_by_cached_key(|addr| {
        std::cmp::Reverse(ballast_proto::sha256_tag(
            format!("{name}\n{addr}").as_bytes(),
        ))
    });
    controllers
}

/// Runs the daemon until `shutdown` completes: the enforcer and the link run
/// side by side, so nothing the controller does (or fails to do) delays drift repair.
pub async fn run(cfg: DaemonConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let _daemon = cfg.state_dir.lock(Lock::Agent)?;
    let enrolled = Enrolled::load(&cfg.state_dir)?;
    let host = Arc::new(Host::new(cfg.root.clone()));
    let current = match cache::load(&cfg.state_dir) {
        Ok(c) => c.map(Arc::new),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "ignoring the cached desired state");
            None
        }
    };
    let outbox = Arc::new(Outbox::open(&cfg.state_dir).context("open the unsent report queue")?);
    let queued = Arc::new(tokio::sync::Notify::new());
    let (status_tx, status_rx) = tokio::sync::watch::channel(Status::default());
    let (desired_tx, desired_rx) = tokio::sync::watch::channel(None);
    let enforcer = Enforcer {
        cfg: cfg.clone(),
        host,
        current,
        status: status_tx,
        outbox: outbox.clone(),
        queued: queued.clone(),
        next_resync: Instant::now(),
    };
    enforcer.publish(None);
    let plans = crate::plan::run(cfg.clone());
    let link = Link {
        name: enrolled.config.name.clone(),
        status: status_rx,
        desired: desired_tx,
        outbox,
        queued,
        facts_sent: None,
        host: crate::facts::HostPacer::new(cfg.host_figures_every),
        cfg,
    };
    tokio::select! {
        _ = enforcer.run(desired_rx) => Ok(()),
        _ = link.run(enrolled) => Ok(()),
        _ = plans => Ok(()),
        _ = shutdown => Ok(()),
    }
}

/// The facts document as the controller will accept it (`limits::CheckedFacts`).
/// Custom facts past the bounds are left out with the reason in
/// `custom_error`, so that oversized custom facts never block the reports
/// queued behind them; `None` when even the rest is too large.
fn bounded_facts(facts: &serde_json::Value) -> Option<String> {
    use ballast_proto::limits::CheckedFacts;
    let json = facts.to_string();
    let refusal = match CheckedFacts::try_from(pb::Facts { json: json.clone() }) {
        Ok(_) => return Some(json),
        Err(e) => e,
    };
    tracing::warn!(error = %refusal, "facts exceed the controller's bounds; sending them without custom facts");
    let mut reduced = facts.clone();
    if let Some(map) = reduced.as_object_mut() {
        map.remove("custom");
        map.insert("custom_error".into(), serde_json::Value::String(refusal));
    }
    let json = reduced.to_string();
    CheckedFacts::try_from(pb::Facts { json: json.clone() })
        .ok()
        .map(|_| json)
}

#[cfg(test)]
mod order_tests {
    use super::controller_order;

    fn list() -> Vec<String> {
        ["a:8440", "b:8440", "c:8440"].map(String::from).to_vec()
    }

    #[test]
    fn controller_order_spreads_nodes_and_a_dead_controllers_nodes_over_the_survivors() {
        let mut first = [0usize; 3];
        let mut second_after_a = [0usize; 3];
        for i in 0..3000 {
            let order = controller_order(list(), &format!("node-{i}"));
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, list(), "a permutation of the list");
            let idx = |a: &String| list().iter().position(|l| l == a).unwrap();
            first[idx(&order[0])] += 1;
            if idx(&order[0]) == 0 {
                second_after_a[idx(&order[1])] += 1;
            }
        }
        // 1,000 each expected; list order would put all 3,000 on `a`.
        assert!(first.iter().all(|n| (850..1150).contains(n)), "{first:?}");
        let a = first[0];
        assert_eq!(second_after_a[0], 0);
        assert!(
            second_after_a[1..]
                .iter()
                .all(|n| (a * 2 / 5..a * 3 / 5).contains(n)),
            "{second_after_a:?} of {a}"
        );
    }

    #[test]
    fn controller_order_is_stable_for_a_node() {
        let once = controller_order(list(), "web-1");
        let mut reversed = list();
        reversed.reverse();
        assert_eq!(controller_order(reversed, "web-1"), once);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_tries_the_next_controller_at_once_and_backs_off_only_after_a_failed_round() {
        let mut p = Pacing::new();
        let quick = Duration::from_millis(5);
        for round in 0..8u32 {
            p.start_round(3);
            assert!(p.session_ended(quick) <= NEXT_SPREAD);
            assert!(p.session_ended(quick) <= NEXT_SPREAD);
            let backoff = (BACKOFF_MIN * 2u32.pow(round)).min(BACKOFF_MAX);
            let wait = p.session_ended(quick);
            assert!(
                wait >= backoff / 2 && wait <= backoff,
                "round {round}: waited {wait:?}, backoff {backoff:?}"
            );
        }
        // A session that worked for a while: the next controller at once,
        // and the backoff starts over.
        p.start_round(3);
        assert!(p.session_ended(SESSION_LASTED * 2) <= NEXT_SPREAD);
        assert!(p.session_ended(quick) <= NEXT_SPREAD);
        let wait = p.session_ended(quick);
        assert!(
            wait >= BACKOFF_MIN / 2 && wait <= BACKOFF_MIN,
            "the round failed after the reset: backoff from the start, waited {wait:?}"
        );
    }
}
