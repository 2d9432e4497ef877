//! Liveness across controllers on one etcd prefix: a node held by one
//! controller shows fresh through another (from the holder's leased
//! summary), shows `reconnecting` once its controller's lease ends, and is
//! back when the agent fails over. A controller that stops gracefully
//! (SIGTERM) withdraws its summary, so its nodes show `reconnecting` through
//! the others at once, not when its lease runs out; and it gives up the
//! leader key before it exits, so another takes the single-owner jobs.

use ballast_agent::daemon::controller_order;
use ballast_proto::enums::NodeStatus;
use ballast_proto::pb;
use ballast_tests::etcd::{EtcdCluster, leader_holder};
use ballast_tests::{ControllerProcess, TestAgent};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

const SPEC: &str = r#"
roles:
  base:
    directories: [{path: /etc/app, mode: "0755"}]
    files: [{path: /etc/app/a.conf, content: "x\n", mode: "0644"}]
groups:
  all:
    roles: [base]
"#;

/// A summary every second (lease of 3 s), the default grace of 60 s.
const CONFIG: &str = "liveness_period: 1s";

async fn node_on(ctl: &ControllerProcess, name: &str) -> Option<pb::NodeSummary> {
    let mut admin = ctl.admin().await.ok()?;
    let page = admin
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .ok()?
        .into_inner();
    page.nodes.into_iter().find(|n| n.name == name)
}

/// Polls `ctl` until node `name` has `want` (and `fresh`, if given, holds),
/// returning it; panics with the last seen summary after `timeout`.
async fn wait_status(
    ctl: &ControllerProcess,
    name: &str,
    want: NodeStatus,
    timeout: Duration,
    fresh: impl Fn(&pb::NodeSummary) -> bool,
) -> pb::NodeSummary {
    let deadline = Instant::now() + timeout;
    loop {
        let node = node_on(ctl, name).await;
        if let Some(n) = &node
            && NodeStatus::try_from(n.status) == Ok(want)
            && fresh(n)
        {
            return n.clone();
        }
        assert!(
            Instant::now() < deadline,
            "node {name} not {want} within {timeout:?}; last: {node:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_held_by_a_dead_controller_shows_reconnecting_then_converged_on_the_other() {
    let Some(cluster) = EtcdCluster::start(3) else {
        return;
    };
    let url = cluster.url();
    let mut a = ControllerProcess::start_with_args(CONFIG, &["--store", &url]).await;
    let mut b = ControllerProcess::start_with_args(CONFIG, &["--store", &url]).await;
    // A is the one n1 tries first (the agent orders its list by node name).
    let order = controller_order(vec![a.controller(), b.controller()], "n1");
    if order[0] != a.controller() {
        std::mem::swap(&mut a, &mut b);
    }
    let applied = a.apply(SPEC).await.expect("apply");
    assert!(applied.created);
    // The agent knows both, and holds its stream on A.
    let token = a.token().await;
    let list = format!("{},{}", a.controller(), b.controller());
    let mut agent = TestAgent::enroll_at(&list, &a.fingerprint, &token, "n1").await;
    agent.start(Duration::from_secs(3600));
    wait_status(
        &a,
        "n1",
        NodeStatus::Converged,
        Duration::from_secs(20),
        |_| true,
    )
    .await;

    // B knows it from A's summary: converged, last seen within a few periods.
    let started = Instant::now();
    let n = wait_status(
        &b,
        "n1",
        NodeStatus::Converged,
        Duration::from_secs(10),
        |n| now_ms().saturating_sub(n.last_seen_ms) < 3000,
    )
    .await;
    println!(
        "B shows n1 (held by A) converged, last seen {} ms ago, after {:?}",
        now_ms().saturating_sub(n.last_seen_ms),
        started.elapsed()
    );

    // A freezes: its lease ends after 3 s, while the agent still waits on it
    // (its heartbeat call times out after 15 s). B shows the truth meanwhile.
    a.signal(Signal::SIGSTOP);
    let frozen = Instant::now();
    let n = wait_status(
        &b,
        "n1",
        NodeStatus::Reconnecting,
        Duration::from_secs(12),
        |_| true,
    )
    .await;
    println!(
        "B shows n1 reconnecting {:?} after A froze (last seen {} ms before)",
        frozen.elapsed(),
        now_ms().saturating_sub(n.last_seen_ms)
    );
    assert!(n.last_seen_ms > 0, "last seen comes from A's summary");

    // A dies: the agent fails over to B at once, and B holds it.
    a.signal(Signal::SIGKILL);
    a.kill();
    let killed = Instant::now();
    wait_status(
        &b,
        "n1",
        NodeStatus::Converged,
        Duration::from_secs(15),
        |n| now_ms().saturating_sub(n.last_seen_ms) < 2000,
    )
    .await;
    println!(
        "B shows n1 converged {:?} after A was killed",
        killed.elapsed()
    );
    agent.stop().await;
    b.kill();
}

/// A summary every 10 s, on a lease of 30 s: a graceful stop must not wait
/// for it to run out.
const SLOW: &str = "liveness_period: 10s";

/// SIGTERM, and waits (bounded) for a clean exit.
async fn terminate(ctl: &ControllerProcess) {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let pid = ctl.pid();
    ctl.signal(Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)).expect("waitpid") {
            WaitStatus::StillAlive => {}
            WaitStatus::Exited(_, 0) => return,
            other => panic!("controller ended with {other:?}; log:\n{}", ctl.log()),
        }
        assert!(
            Instant::now() < deadline,
            "controller still runs 10 s after SIGTERM; log:\n{}",
            ctl.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_stopped_gracefully_shows_its_nodes_reconnecting_at_once() {
    let Some(cluster) = EtcdCluster::start(1) else {
        return;
    };
    let url = cluster.url();
    let a = ControllerProcess::start_with_args(SLOW, &["--store", &url]).await;
    let b = ControllerProcess::start_with_args(SLOW, &["--store", &url]).await;
    assert!(a.apply(SPEC).await.expect("apply").created);
    // The agent knows only A: once A is gone it has nowhere to go.
    let token = a.token().await;
    let mut agent = TestAgent::enroll_at(&a.controller(), &a.fingerprint, &token, "n1").await;
    agent.start(Duration::from_secs(3600));
    wait_status(
        &a,
        "n1",
        NodeStatus::Converged,
        Duration::from_secs(20),
        |_| true,
    )
    .await;
    // B shows it from A's summary (the next one, within a period).
    wait_status(
        &b,
        "n1",
        NodeStatus::Converged,
        Duration::from_secs(25),
        |n| n.last_seen_ms > 0,
    )
    .await;

    // A stops gracefully: B shows n1 reconnecting well before A's lease
    // (30 s, renewed every 10 s) could have run out.
    terminate(&a).await;
    let stopped = Instant::now();
    wait_status(
        &b,
        "n1",
        NodeStatus::Reconnecting,
        Duration::from_secs(5),
        |_| true,
    )
    .await;
    println!(
        "B shows n1 reconnecting {:?} after A stopped gracefully",
        stopped.elapsed()
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_stopped_gracefully_gives_up_the_lead_before_it_exits() {
    let Some(cluster) = EtcdCluster::start(1) else {
        return;
    };
    let url = cluster.url();
    let store = cluster.store("/ballast/");
    let a = ControllerProcess::start_with_args("", &["--store", &url]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !leader_holder(&store).contains(&a.controller()) {
        assert!(Instant::now() < deadline, "A did not lead within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = ControllerProcess::start_with_args("", &["--store", &url]).await;

    // A stops gracefully: the leader key goes with it, not when its lease
    // (LEADER_TTL) runs out, so B takes the single-owner jobs at its next try.
    terminate(&a).await;
    let stopped = Instant::now();
    let held = leader_holder(&store);
    assert!(
        held.is_empty() || held.contains(&b.controller()),
        "A exited still holding the leader key ({held:?}); log:\n{}",
        a.log()
    );
    let within = ballast_controller::leader::LEADER_TTL / 2 + Duration::from_secs(3);
    while !leader_holder(&store).contains(&b.controller()) {
        assert!(
            stopped.elapsed() < within,
            "B did not lead within {within:?} of A's graceful stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("B leads {:?} after A stopped gracefully", stopped.elapsed());
}
