//! `ballast plan` with real agents on temp roots: the nodes' own dry runs
//! against their real state, grouped; silent nodes named; nothing applied;
//! and on a real etcd with two controller processes, a plan asked of one
//! reaches the agents held by the other.

use ballast_controller::store::Store;
use ballast_proto::pb;
use ballast_tests::etcd::EtcdCluster;
use ballast_tests::{ControllerProcess, TestAgent, TestController, eventually};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn spec(motd: &str, extra: &str) -> String {
    format!(
        r#"
roles:
  base:
    directories: [{{path: /etc/app, mode: "0755"}}]
    files:
      - {{path: /etc/app/motd, content: "{motd}", mode: "0644"}}
{extra}
groups:
  all:
    roles: [base]
"#
    )
}

const MOTD: &str = "one\ntwo\nthree\n";

async fn plan(ctl: &TestController, yaml: &str, timeout_ms: u32) -> pb::PlanResponse {
    ctl.admin()
        .await
        .plan(pb::PlanNodesRequest {
            sources: vec![pb::SourceFile {
                name: "spec.yaml".into(),
                content: yaml.into(),
            }],
            r#where: Vec::new(),
            timeout_ms,
        })
        .await
        .expect("plan answers")
        .into_inner()
}

/// Plans until every node answered (agents open their plan stream shortly
/// after they start), or panics after [`WAIT`].
async fn plan_all(ctl: &TestController, yaml: &str) -> pb::PlanResponse {
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = plan(ctl, yaml, 5000).await;
        if resp.unanswered.is_empty() {
            return resp;
        }
        assert!(
            Instant::now() < deadline,
            "nodes never answered: {:?}",
            resp.unanswered
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn converged(ctl: &TestController, agents: &[&TestAgent], revision: u64) {
    for a in agents {
        ctl.wait_node(&a.name, WAIT, |n| {
            n.status() == pb::NodeStatus::Converged && n.applied_revision == revision
        })
        .await;
    }
}

fn write_spec(dir: &Path, yaml: &str) -> String {
    let path = dir.join("spec.yaml");
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_a_file_changed_by_hand_on_that_node_only() {
    let ctl = TestController::start().await;
    let mut agents = Vec::new();
    for name in ["a", "b", "c"] {
        let mut a = TestAgent::enroll(&ctl, name, &[]).await;
        a.start(Duration::from_secs(300));
        agents.push(a);
    }
    let yaml = spec("one\\ntwo\\nthree\\n", "");
    ctl.apply(&yaml).await.expect("apply");
    converged(&ctl, &agents.iter().collect::<Vec<_>>(), 1).await;
    let motd_b = agents[1].path("/etc/app/motd");
    std::fs::write(&motd_b, "one\nTWO\nthree\n").unwrap();

    let resp = plan_all(&ctl, &yaml).await;
    assert_eq!(
        (resp.changed_nodes, resp.unchanged_nodes, resp.failed_nodes),
        (1, 2, 0),
        "{resp:#?}"
    );
    let changed = resp.groups.iter().find(|g| !g.items.is_empty()).unwrap();
    assert_eq!(changed.nodes, vec!["b"]);
    assert_eq!(changed.items[0].id, "file[/etc/app/motd]");
    let diff = changed.items[0].changes.join("\n");
    assert!(diff.contains("diff (+1 -1 lines)"), "{diff}");
    assert!(diff.contains("-TWO\n+two\n"), "{diff}");

    // Through the CLI: grouped, the diff shown, exit 2 (changes).
    let dir = tempfile::tempdir().unwrap();
    let file = write_spec(dir.path(), &yaml);
    let (code, out) = ctl.cli(&["plan", "-f", &file]).await;
    assert_eq!(code, ExitCode::from(2), "{out}");
    assert!(out.contains("1 node would change: b"), "{out}");
    assert!(out.contains("2 nodes no change: a, c"), "{out}");
    assert!(out.contains("      +two"), "{out}");
    // The plan repaired nothing: the hand edit is still there.
    assert_eq!(
        std::fs::read_to_string(&motd_b).unwrap(),
        "one\nTWO\nthree\n"
    );
    for a in &mut agents {
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_applies_and_caches_nothing() {
    let ctl = TestController::start().await;
    let mut a = TestAgent::enroll(&ctl, "a", &[]).await;
    a.start(Duration::from_secs(300));
    let yaml = spec("one\\ntwo\\nthree\\n", "");
    ctl.apply(&yaml).await.expect("apply");
    converged(&ctl, &[&a], 1).await;
    let desired = std::fs::read(a.state.path().join("desired.json")).unwrap();
    let managed = std::fs::read(a.state.path().join("managed.json")).unwrap();

    // Owner names are looked up in the root's /etc/passwd.
    std::fs::create_dir_all(a.path("/etc")).unwrap();
    std::fs::write(a.path("/etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    // A new file, a changed one, and one whose owner does not exist here.
    let proposed = spec(
        "one\\nthree\\nfour\\n",
        r#"      - {path: /etc/app/new.conf, content: "x\n"}
      - {path: /etc/app/owned.conf, content: "y\n", owner: nosuchuser}"#,
    );
    let resp = plan_all(&ctl, &proposed).await;
    assert_eq!(resp.failed_nodes, 1, "{resp:#?}");
    let items = &resp.groups[0].items;
    let find = |id: &str| items.iter().find(|i| i.id == id).unwrap();
    assert!(
        find("file[/etc/app/motd]")
            .changes
            .join("\n")
            .contains("-two\n"),
        "{items:#?}"
    );
    assert!(!find("file[/etc/app/new.conf]").changes.is_empty());
    assert!(
        find("file[/etc/app/owned.conf]")
            .error
            .contains("nosuchuser"),
        "{items:#?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = write_spec(dir.path(), &proposed);
    let (code, out) = ctl.cli(&["plan", "-f", &file]).await;
    assert_eq!(code, ExitCode::FAILURE, "failures exit 1: {out}");
    assert!(out.contains("1 node would fail: a"), "{out}");
    assert!(out.contains("nosuchuser"), "{out}");

    // Nothing applied, nothing cached, nothing recorded as managed.
    assert_eq!(
        std::fs::read_to_string(a.path("/etc/app/motd")).unwrap(),
        MOTD
    );
    assert!(!a.path("/etc/app/new.conf").exists());
    assert!(!a.path("/etc/app/owned.conf").exists());
    assert_eq!(
        std::fs::read(a.state.path().join("desired.json")).unwrap(),
        desired
    );
    assert_eq!(
        std::fs::read(a.state.path().join("managed.json")).unwrap(),
        managed
    );
    assert_eq!(
        ctl.node("a").await.unwrap().desired_revision,
        1,
        "no revision stored"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_lists_stopped_and_silent_nodes_as_unanswered() {
    let ctl = TestController::start().await;
    let mut up = TestAgent::enroll(&ctl, "up", &[]).await;
    let mut down = TestAgent::enroll(&ctl, "down", &[]).await;
    let silent = TestAgent::enroll(&ctl, "silent", &[]).await;
    up.start(Duration::from_secs(300));
    down.start(Duration::from_secs(300));
    let yaml = spec("one\\ntwo\\nthree\\n", "");
    ctl.apply(&yaml).await.expect("apply");
    converged(&ctl, &[&up, &down], 1).await;
    // Wait until both plan streams are open, then stop one agent.
    let deadline = Instant::now() + WAIT;
    while plan(&ctl, &yaml, 5000)
        .await
        .unanswered
        .iter()
        .any(|u| u.node != "silent")
    {
        assert!(Instant::now() < deadline, "plan streams never opened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    down.stop().await;
    // "silent" holds a plan stream and never answers.
    let mut client = silent.agent_client().await.unwrap();
    let _held = client
        .plans(pb::PlansRequest {})
        .await
        .unwrap()
        .into_inner();

    let dir = tempfile::tempdir().unwrap();
    let file = write_spec(dir.path(), &yaml);
    let started = Instant::now();
    let (code, out) = ctl.cli(&["plan", "-f", &file, "--timeout", "1s"]).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by --timeout"
    );
    assert_eq!(code, ExitCode::FAILURE, "unanswered nodes exit 1: {out}");
    assert!(out.contains("1 node no change: up"), "{out}");
    assert!(out.contains("2 nodes did not answer:"), "{out}");
    assert!(out.contains("  down: "), "{out}");
    assert!(out.contains("  silent: no answer within 1s"), "{out}");
    up.stop().await;
}

/// Plans through `admin` until every node answered, or panics after [`WAIT`].
async fn plan_all_at(
    admin: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    yaml: &str,
) -> pb::PlanResponse {
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = admin
            .plan(pb::PlanNodesRequest {
                sources: vec![pb::SourceFile {
                    name: "spec.yaml".into(),
                    content: yaml.into(),
                }],
                r#where: Vec::new(),
                timeout_ms: 5000,
            })
            .await
            .expect("plan answers")
            .into_inner();
        if resp.unanswered.is_empty() {
            return resp;
        }
        assert!(
            Instant::now() < deadline,
            "nodes never answered: {:?}",
            resp.unanswered
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_asked_of_one_controller_reaches_agents_held_by_another() {
    let Some(cluster) = EtcdCluster::start(3) else {
        return;
    };
    let url = cluster.url();
    let config = "liveness_period: 1s";
    let mut a = ControllerProcess::start_with_args(config, &["--store", &url]).await;
    let mut b = ControllerProcess::start_with_args(config, &["--store", &url]).await;
    let mut agents = Vec::new();
    for (name, ctl) in [("a1", &a), ("a2", &a), ("b1", &b), ("b2", &b)] {
        let token = ctl.token().await;
        let mut agent =
            TestAgent::enroll_at(&ctl.controller(), &ctl.fingerprint, &token, name).await;
        agent.start(Duration::from_secs(300));
        agents.push(agent);
    }
    let yaml = spec("one\\ntwo\\nthree\\n", "");
    a.apply(&yaml).await.expect("apply");
    for agent in &agents {
        let motd = agent.path("/etc/app/motd");
        eventually(WAIT, "every agent converges", || {
            std::fs::read_to_string(&motd).ok().as_deref() == Some(MOTD)
        })
        .await;
    }
    // A hand edit on one node that B holds.
    let motd_b1 = agents[2].path("/etc/app/motd");
    std::fs::write(&motd_b1, "one\nTWO\nthree\n").unwrap();

    let mut admin = a.admin().await.expect("admin connects to A");
    let resp = plan_all_at(&mut admin, &yaml).await;
    assert_eq!(
        (resp.changed_nodes, resp.unchanged_nodes, resp.failed_nodes),
        (1, 3, 0),
        "{resp:#?}"
    );
    let changed = resp.groups.iter().find(|g| !g.items.is_empty()).unwrap();
    assert_eq!(changed.nodes, vec!["b1"]);
    let diff = changed.items[0].changes.join("\n");
    assert!(diff.contains("-TWO\n+two\n"), "{diff}");
    let same = resp.groups.iter().find(|g| g.items.is_empty()).unwrap();
    assert_eq!(same.nodes, vec!["a1", "a2", "b2"]);
    assert_eq!(
        std::fs::read_to_string(&motd_b1).unwrap(),
        "one\nTWO\nthree\n",
        "the plan repaired nothing"
    );

    // The plan's record and its answers are gone once it ended.
    let store = cluster.store(ballast_controller::store::DEFAULT_PREFIX);
    let left = || {
        let mut keys = store.list("plans/").unwrap();
        keys.extend(store.list("plan-answers/").unwrap());
        keys.into_iter().map(|(k, _)| k).collect::<Vec<_>>()
    };
    let deadline = Instant::now() + WAIT;
    while !left().is_empty() {
        assert!(Instant::now() < deadline, "plan keys left: {:?}", left());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A node B holds that never answers is named after the timeout; one
    // that nobody holds any more is named at once.
    let token = b.token().await;
    let silent = TestAgent::enroll_at(&b.controller(), &b.fingerprint, &token, "b3").await;
    let mut client = silent.agent_client().await.unwrap();
    let _watch = client.watch(pb::WatchRequest::default()).await.unwrap();
    let _plans = client.plans(pb::PlansRequest {}).await.unwrap();
    agents[3].stop().await;
    let deadline = Instant::now() + WAIT;
    let reasons = loop {
        let resp = admin
            .plan(pb::PlanNodesRequest {
                sources: vec![pb::SourceFile {
                    name: "spec.yaml".into(),
                    content: yaml.clone(),
                }],
                r#where: Vec::new(),
                timeout_ms: 1000,
            })
            .await
            .expect("plan answers")
            .into_inner();
        let reasons: Vec<(String, String)> = resp
            .unanswered
            .into_iter()
            .map(|u| (u.node, u.reason))
            .collect();
        let answered = resp.changed_nodes + resp.unchanged_nodes;
        if answered == 3
            && reasons.len() == 2
            && reasons[0].1 == "not connected to any controller"
            && reasons[1].1 == "no answer within 1s"
        {
            break reasons;
        }
        assert!(
            Instant::now() < deadline,
            "{reasons:?} ({answered} answered)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((reasons[0].0.as_str(), reasons[1].0.as_str()), ("b2", "b3"));
    for agent in &mut agents {
        agent.stop().await;
    }
    a.kill();
    b.kill();
}
