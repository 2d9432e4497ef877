//! Several `ballast serve` processes on one etcd prefix share one fleet:
//! every controller learns of every operator change through the store's
//! watch, so what an operator does on one reaches agents held by another.

use ballast_proto::pb;
use ballast_tests::etcd::EtcdCluster;
use ballast_tests::{ControllerProcess, TestAgent, eventually};
use std::time::Duration;

const SPEC: &str = r#"
roles:
  base:
    directories: [{path: /etc/app, mode: "0755"}]
    files: [{path: /etc/app/a.conf, content: "from A\n", mode: "0644"}]
groups:
  all:
    roles: [base]
"#;

/// Two controllers on one 3-member cluster and one prefix.
async fn two_controllers() -> Option<(EtcdCluster, ControllerProcess, ControllerProcess)> {
    let cluster = EtcdCluster::start(3)?;
    let url = cluster.url();
    let a = ControllerProcess::start_with_args("", &["--store", &url]).await;
    let b = ControllerProcess::start_with_args("", &["--store", &url]).await;
    Some((cluster, a, b))
}

async fn apply(ctl: &ControllerProcess, yaml: &str) -> pb::ApplyResponse {
    ctl.apply(yaml).await.expect("apply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_on_one_controller_reaches_an_agent_watching_another() {
    let Some((_cluster, mut a, mut b)) = two_controllers().await else {
        return;
    };
    let token = b.token().await;
    let mut agent = TestAgent::enroll_at(&b.controller(), &b.fingerprint, &token, "n1").await;
    agent.start(Duration::from_secs(3600));
    // The agent holds its watch on B; the revision is stored through A.
    let applied = apply(&a, SPEC).await;
    assert!(applied.created);
    let read = |a: &TestAgent| std::fs::read_to_string(a.path("/etc/app/a.conf")).ok();
    eventually(
        Duration::from_secs(20),
        "the agent on B gets A's revision",
        || read(&agent).as_deref() == Some("from A\n"),
    )
    .await;
    // B's memory follows too: its next apply builds on A's revision.
    let next = apply(&b, &SPEC.replace("from A", "from B")).await;
    assert_eq!(next.revision, applied.revision + 1, "{next:?}");
    eventually(
        Duration::from_secs(20),
        "the agent gets B's revision",
        || read(&agent).as_deref() == Some("from B\n"),
    )
    .await;
    agent.stop().await;
    a.kill();
    b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_on_one_controller_ends_the_watch_held_by_another() {
    let Some((_cluster, mut a, mut b)) = two_controllers().await else {
        return;
    };
    let token = b.token().await;
    let agent = TestAgent::enroll_at(&b.controller(), &b.fingerprint, &token, "n1").await;
    let mut client = agent.agent_client().await.expect("agent client to B");
    let mut watch = client
        .watch(pb::WatchRequest::default())
        .await
        .expect("watch on B")
        .into_inner();
    let first = watch.message().await.expect("first state");
    assert!(first.is_some(), "B sends the node's state first");
    a.admin()
        .await
        .expect("admin connects to A")
        .revoke_node(pb::NodeName { name: "n1".into() })
        .await
        .expect("revoke through A");
    let ended = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("B ends the watch of the node revoked on A");
    match ended {
        Err(status) => assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}"),
        Ok(m) => panic!("the watch went on after the revoke: {m:?}"),
    }
    a.kill();
    b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_enrolled_on_one_controller_heartbeats_and_watches_through_another() {
    let Some((_cluster, mut a, mut b)) = two_controllers().await else {
        return;
    };
    assert_eq!(
        a.fingerprint, b.fingerprint,
        "both controllers serve one CA"
    );
    let token = a.token().await;
    let agent = TestAgent::enroll_at(&a.controller(), &a.fingerprint, &token, "n1").await;
    let enrolled = ballast_agent::client::Enrolled::load(agent.state.path()).unwrap();
    // The agent trusts the CA it got from A, and B's certificate is from it.
    let channel = enrolled
        .channel(Some(&b.controller()))
        .await
        .expect("the agent enrolled on A connects to B");
    let mut client = ballast_agent::client::agent_client(channel);
    let mut beat = None;
    // B learns of the enrollment through its watch: allow it a moment.
    for _ in 0..100 {
        beat = Some(client.heartbeat(pb::HeartbeatRequest::default()).await);
        if beat.as_ref().is_some_and(|b| b.is_ok()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    beat.unwrap()
        .expect("B takes the heartbeat of a node enrolled on A");
    let mut watch = client
        .watch(pb::WatchRequest::default())
        .await
        .expect("watch through B")
        .into_inner();
    assert!(watch.message().await.expect("state from B").is_some());
    a.kill();
    b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_made_on_one_controller_is_spent_once_across_both() {
    let Some((_cluster, mut a, mut b)) = two_controllers().await else {
        return;
    };
    let token = a.token().await;
    let mut tries = Vec::new();
    for i in 0..6 {
        let at = if i % 2 == 0 {
            a.controller()
        } else {
            b.controller()
        };
        let (fingerprint, token) = (a.fingerprint.clone(), token.clone());
        tries.push(tokio::spawn(async move {
            let state = tempfile::tempdir().unwrap();
            let name = format!("n{i}");
            ballast_agent::client::enroll(state.path(), &at, &token, &fingerprint, &name)
                .await
                .map(|_| name)
                .map_err(|e| format!("{e:#}"))
        }));
    }
    let mut won = Vec::new();
    for t in tries {
        match t.await.unwrap() {
            Ok(name) => won.push(name),
            // Refused for the token, not for the controller's identity.
            Err(e) => assert!(e.contains("already used"), "{e}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one enrollment wins: {won:?}");
    a.kill();
    b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_on_one_controller_reaches_the_agent_watching_another() {
    let Some((_cluster, mut a, mut b)) = two_controllers().await else {
        return;
    };
    let spec = r#"
roles:
  web:
    directories: [{path: /etc/app, mode: "0755"}]
    files: [{path: /etc/app/web.conf, content: "web\n", mode: "0644"}]
groups:
  web:
    match: {role: web}
    roles: [web]
"#;
    apply(&a, spec).await;
    let token = b.token().await;
    let mut agent = TestAgent::enroll_at(&b.controller(), &b.fingerprint, &token, "n1").await;
    agent.start(Duration::from_secs(3600));
    a.admin()
        .await
        .expect("admin connects to A")
        .label_node(pb::LabelNodeRequest {
            name: "n1".into(),
            labels: [("role".to_string(), "web".to_string())].into(),
        })
        .await
        .expect("label through A");
    eventually(
        Duration::from_secs(20),
        "the agent on B gets the state of its new label",
        || {
            std::fs::read_to_string(agent.path("/etc/app/web.conf"))
                .ok()
                .as_deref()
                == Some("web\n")
        },
    )
    .await;
    agent.stop().await;
    a.kill();
    b.kill();
}

/// A name that resolves to two controllers, the first of them frozen
/// (SIGSTOP: it accepts TCP connections and never answers). The agent runs
/// as a process in its own mount namespace, whose /etc/hosts gives
/// `ctl.test` both addresses: it must pass over the frozen address for the
/// next one, not try the same name again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_passes_over_a_frozen_controller_among_a_names_addresses() {
    let Some(cluster) = EtcdCluster::start(1) else {
        return;
    };
    let url = cluster.url();
    let port = ballast_tests::free_port();
    let name = format!("ctl.test:{port}");
    let args = ["--store", url.as_str(), "--advertise", "ctl.test"];
    let a = ControllerProcess::start_listening(format!("127.0.0.1:{port}").parse().unwrap(), &args)
        .await;
    let b = ControllerProcess::start_listening(format!("127.0.0.2:{port}").parse().unwrap(), &args)
        .await;
    let token = a.token().await;
    let agent = TestAgent::enroll_at(&a.controller(), &a.fingerprint, &token, "n1").await;
    a.signal(nix::sys::signal::Signal::SIGSTOP);

    let hosts = agent.state.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 ctl.test\n127.0.0.2 ctl.test\n").unwrap();
    let log = agent.state.path().join("agent.log");
    let script = format!(
        "mount --bind {} /etc/hosts && exec {} run --controller {name} --state-dir {} --root {} --facts-dir {} --interval 1h --heartbeat 1s",
        hosts.display(),
        ballast_tests::node::agent_binary().display(),
        agent.state.path().display(),
        agent.root.path().display(),
        agent.state.path().join("facts.d").display(),
    );
    let child = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(agent.state.path().join("agent.err")).unwrap())
        .spawn()
        .expect("unshare runs");
    let _child = scopeguard(child);

    apply(&b, SPEC).await;
    let read = || std::fs::read_to_string(agent.path("/etc/app/a.conf")).ok();
    eventually(
        Duration::from_secs(40),
        "the agent reaches the controller at the name's second address",
        || read().as_deref() == Some("from A\n"),
    )
    .await;
    a.signal(nix::sys::signal::Signal::SIGCONT);
}

/// Kills the child when dropped, so a failing test leaves no agent behind.
fn scopeguard(child: std::process::Child) -> impl Drop {
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    Kill(child)
}
