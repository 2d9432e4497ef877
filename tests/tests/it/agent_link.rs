//! The agent's link to the controller: enforcement never waits on it, and
//! what the agent saw while the controller was away reaches it in order.

use ballast_proto::pb;
use ballast_tests::{ControllerProcess, TestAgent, TestController, eventually};
use nix::sys::signal::Signal;
use prost::Message;
use std::time::{Duration, Instant};

const SPEC: &str = r#"
roles:
  base:
    directories: [{path: /etc/app, mode: "0755"}]
    files:
      - {path: /etc/app/a.conf, content: "a\n", mode: "0644"}
      - {path: /etc/app/b.conf, content: "b\n", mode: "0644"}
groups:
  all:
    roles: [base]
"#;

fn read(agent: &TestAgent, path: &str) -> Option<String> {
    std::fs::read_to_string(agent.path(path)).ok()
}

/// The reports waiting in the agent's outbox, oldest first.
fn queued_reports(agent: &TestAgent) -> Vec<pb::RunReport> {
    let dir = agent.state.path().join("outbox");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.retain(|p| p.extension().is_some_and(|e| e == "report"));
    names.sort();
    names
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .filter_map(|b| pb::RunReport::decode(b.as_slice()).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_repaired_while_the_controller_hangs() {
    let mut ctl = ControllerProcess::start("").await;
    let token = ctl.token().await;
    let mut agent = TestAgent::enroll_at(&ctl.controller(), &ctl.fingerprint, &token, "n1").await;
    let interval = Duration::from_secs(1);
    agent.start(interval);
    let mut admin = ctl.admin().await.unwrap();
    admin
        .apply(pb::ApplyRequest {
            sources: vec![pb::SourceFile {
                name: "spec.yaml".into(),
                content: SPEC.into(),
            }],
            author: "test".into(),
            message: String::new(),
            allow_prune: true,
        })
        .await
        .expect("apply");
    eventually(Duration::from_secs(20), "first convergence", || {
        read(&agent, "/etc/app/a.conf").as_deref() == Some("a\n")
    })
    .await;
    // Frozen, not dead: connections stay open, calls get no answer.
    ctl.signal(Signal::SIGSTOP);
    // Let heartbeats (every 500 ms) and reports get stuck on the frozen peer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for round in 0..3 {
        std::fs::write(agent.path("/etc/app/a.conf"), "tampered\n").unwrap();
        let tampered = Instant::now();
        // Resync is 1 s (±10%); allow ample slack for a loaded machine.
        eventually(
            Duration::from_secs(8),
            &format!("round {round}: drift repaired with the controller frozen"),
            || read(&agent, "/etc/app/a.conf").as_deref() == Some("a\n"),
        )
        .await;
        eprintln!("round {round}: repaired after {:?}", tampered.elapsed());
    }
    ctl.signal(Signal::SIGCONT);
    agent.stop().await;
    ctl.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_made_while_the_controller_is_away_arrive_in_order() {
    let mut ctl = TestController::start().await;
    let mut agent = TestAgent::enroll(&ctl, "n1", &[]).await;
    agent.start(Duration::from_millis(500));
    ctl.apply(SPEC).await.expect("apply");
    ctl.wait_node("n1", Duration::from_secs(20), |n| {
        n.status() == pb::NodeStatus::Converged && n.applied_revision == 1
    })
    .await;
    let before = ctl.node_detail("n1").await.timeline.len();
    ctl.stop().await;

    // Away: one run repairs drift, a later one fails.
    std::fs::write(agent.path("/etc/app/a.conf"), "tampered\n").unwrap();
    eventually(Duration::from_secs(10), "drift repaired", || {
        read(&agent, "/etc/app/a.conf").as_deref() == Some("a\n")
    })
    .await;
    std::fs::remove_file(agent.path("/etc/app/b.conf")).unwrap();
    std::fs::create_dir(agent.path("/etc/app/b.conf")).unwrap();
    eventually(Duration::from_secs(10), "a failing run queued", || {
        queued_reports(&agent).iter().any(|r| {
            r.resources
                .iter()
                .any(|o| o.outcome == pb::Outcome::Failed as i32)
        })
    })
    .await;
    // The queue is on disk: a restarted agent still has it.
    agent.stop().await;
    let queued = queued_reports(&agent);
    assert!(queued.len() >= 2, "drift and failure queued: {queued:?}");
    agent.start(Duration::from_millis(500));

    ctl.restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let detail = ctl.node_detail("n1").await;
        let stages: Vec<&str> = detail.timeline.iter().map(|e| e.stage.as_str()).collect();
        let outage = &stages[before.min(stages.len())..];
        let drifted = outage.iter().position(|s| *s == "drifted");
        let failing = outage.iter().rposition(|s| *s == "failing");
        if let (Some(d), Some(f)) = (drifted, failing)
            && d < f
            && f == outage.len() - 1
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timeline after the outage should hold drifted, then failing: {stages:?} ({before} before)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually(Duration::from_secs(10), "outbox drained", || {
        queued_reports(&agent).is_empty()
    })
    .await;
    agent.stop().await;
    ctl.stop().await;
}

fn motd(text: &str) -> pb::ApplyRequest {
    pb::ApplyRequest {
        sources: vec![pb::SourceFile {
            name: "spec.yaml".into(),
            content: format!(
                "roles:\n  base:\n    directories: [{{path: /etc/app, mode: \"0755\"}}]\n    files: [{{path: /etc/app/motd, content: \"{text}\\n\"}}]\ngroups:\n  all:\n    roles: [base]\n"
            ),
        }],
        author: "test".into(),
        message: String::new(),
        allow_prune: true,
    }
}

/// An agent enrolled with a list of controllers: enrollment passes over one
/// that does not answer, and when its controller dies the agent moves to the
/// next of its list at once (no backoff while another is left to try), and
/// gets what is applied there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fails_over_to_the_next_controller_of_its_list() {
    let nobody = format!("127.0.0.1:{}", ballast_tests::free_port());
    let next: std::net::SocketAddr = format!("127.0.0.1:{}", ballast_tests::free_port())
        .parse()
        .unwrap();
    let mut ctl = ControllerProcess::start("").await;
    let token = ctl.token().await;
    let list = format!("{nobody},{},{next}", ctl.controller());
    let mut agent = TestAgent::enroll_at(&list, &ctl.fingerprint, &token, "n1").await;
    agent.start(Duration::from_secs(300));
    ctl.admin()
        .await
        .unwrap()
        .apply(motd("one"))
        .await
        .expect("apply");
    eventually(Duration::from_secs(20), "the agent converges", || {
        read(&agent, "/etc/app/motd").as_deref() == Some("one\n")
    })
    .await;

    // The controller dies; the same fleet comes up at the list's last address.
    let moved = Instant::now();
    ctl.restart_at(next).await;
    let up = moved.elapsed();
    ctl.admin()
        .await
        .unwrap()
        .apply(motd("two"))
        .await
        .expect("apply on the controller at the next address");
    eventually(
        Duration::from_secs(15),
        "the agent gets the new revision from the next controller",
        || read(&agent, "/etc/app/motd").as_deref() == Some("two\n"),
    )
    .await;
    eprintln!(
        "controller back after {up:?}; the agent had the new revision {:?} after the kill",
        moved.elapsed()
    );
    agent.stop().await;
}
