//! The pull loop end to end: enroll, apply, converge, report, query, history,
//! rollback, a controller that goes away and comes back.

use ballast_proto::pb;
use ballast_tests::{TestAgent, TestController, eventually};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn web_spec(content: &str) -> String {
    format!(
        r#"
roles:
  base:
    directories: [{{path: /etc/app, mode: "0755"}}]
    files:
      - {{path: /etc/app/motd, content: "{content}\n", mode: "0644"}}
  web:
    files: [{{path: /etc/app/web.conf, content: "listen 8080\n", mode: "0640"}}]
    symlinks: [{{path: /etc/app/current, target: /etc/app/web.conf}}]
  db:
    files: [{{path: /etc/app/db.conf, content: "port 5432\n"}}]
groups:
  all:
    roles: [base]
  web:
    match: {{role: web}}
    roles: [web]
  db:
    match: {{role: db}}
    roles: [db]
"#
    )
}

fn read(agent: &TestAgent, path: &str) -> Option<String> {
    std::fs::read_to_string(agent.path(path)).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_converge_and_report_what_they_did() {
    let ctl = TestController::start().await;
    let mut web = TestAgent::enroll(&ctl, "web-1", &[("role", "web")]).await;
    let mut db = TestAgent::enroll(&ctl, "db-1", &[("role", "db")]).await;
    web.start(Duration::from_secs(300));
    db.start(Duration::from_secs(300));

    let applied = Instant::now();
    let resp = ctl.apply(&web_spec("hello")).await.expect("apply succeeds");
    assert_eq!(resp.revision, 1);
    assert_eq!(resp.affected_nodes, vec!["db-1", "web-1"]);

    for name in ["web-1", "db-1"] {
        let n = ctl
            .wait_node(name, WAIT, |n| {
                n.status() == pb::NodeStatus::Converged && n.applied_revision == 1
            })
            .await;
        assert_eq!(n.desired_revision, 1);
        assert!(n.failed_resources.is_empty());
    }
    eprintln!("apply to two converged nodes: {:?}", applied.elapsed());
    assert_eq!(read(&web, "/etc/app/motd").as_deref(), Some("hello\n"));
    assert_eq!(
        read(&web, "/etc/app/web.conf").as_deref(),
        Some("listen 8080\n")
    );
    assert_eq!(
        std::fs::read_link(web.path("/etc/app/current"))
            .unwrap()
            .to_str(),
        Some("/etc/app/web.conf")
    );
    assert_eq!(
        read(&web, "/etc/app/db.conf"),
        None,
        "web nodes do not get the db role"
    );
    assert_eq!(
        read(&db, "/etc/app/db.conf").as_deref(),
        Some("port 5432\n")
    );
    assert_eq!(read(&db, "/etc/app/web.conf"), None);

    // The report carries every resource's outcome, and facts arrived.
    let detail = ctl.node_detail("web-1").await;
    let report = detail.last_report.expect("a report");
    assert_eq!(report.revision, 1);
    let ids: Vec<&str> = report.resources.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            "directory[/etc/app]",
            "file[/etc/app/motd]",
            "file[/etc/app/web.conf]",
            "symlink[/etc/app/current]"
        ]
    );
    assert!(
        report
            .resources
            .iter()
            .all(|r| r.outcome == pb::Outcome::Changed as i32),
        "{report:?}"
    );
    let facts: serde_json::Value = serde_json::from_str(&detail.facts_json).unwrap();
    assert!(
        facts["hostname"].is_string() && facts["os"]["id"].is_string(),
        "facts: {facts}"
    );
    // Enrolled before the first apply: converged on the empty revision 0, then on 1.
    let stages: Vec<(&str, &str)> = detail
        .timeline
        .iter()
        .map(|e| (e.stage.as_str(), e.detail.as_str()))
        .collect();
    assert_eq!(
        stages[..2].iter().map(|s| s.0).collect::<Vec<_>>(),
        vec!["enrolled", "first-report"]
    );
    assert_eq!(stages.last(), Some(&("converged", "revision 1")));

    // Queries: --where on labels and facts, JSON shape, node show, health.
    let (code, out) = ctl
        .cli(&["nodes", "--where", "role=web", "-o", "json"])
        .await;
    assert_eq!(code, ExitCode::SUCCESS);
    let nodes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    for key in [
        "name",
        "labels",
        "status",
        "desired_revision",
        "applied_revision",
        "last_seen",
        "failed_resources",
    ] {
        assert!(nodes[0].get(key).is_some(), "nodes JSON has {key}: {out}");
    }
    assert_eq!(nodes[0]["name"], "web-1");
    let os_id = facts["os"]["id"].as_str().unwrap().to_owned();
    let (_, out) = ctl
        .cli(&["nodes", "--where", &format!("os.id={os_id}"), "-o", "json"])
        .await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (_, out) = ctl
        .cli(&["nodes", "--where", "os.id=plan9", "-o", "json"])
        .await;
    assert_eq!(out.trim(), "[]");
    let (code, out) = ctl.cli(&["node", "show", "web-1"]).await;
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(
        out.contains("status:    converged")
            && out.contains("file[/etc/app/web.conf]")
            && out.contains("first-report"),
        "{out}"
    );
    let (code, out) = ctl.cli(&["health"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.contains("2 converged"), "{out}");

    // A change reaches only the nodes whose state changed.
    let resp = ctl
        .apply(&web_spec("hello").replace("listen 8080", "listen 9090"))
        .await
        .unwrap();
    assert_eq!(resp.affected_nodes, vec!["web-1"]);
    ctl.wait_node("web-1", WAIT, |n| {
        n.applied_revision == 2 && n.status() == pb::NodeStatus::Converged
    })
    .await;
    assert_eq!(
        read(&web, "/etc/app/web.conf").as_deref(),
        Some("listen 9090\n")
    );
    let db_node = ctl.node("db-1").await.unwrap();
    assert_eq!(
        (db_node.desired_revision, db_node.applied_revision),
        (1, 1),
        "db-1 got nothing new"
    );

    // Applying the same content again stores nothing.
    let again = ctl
        .apply(&web_spec("hello").replace("listen 8080", "listen 9090"))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.revision, 2);

    // History and rollback.
    let (code, out) = ctl.cli(&["history"]).await;
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(
        out.lines().nth(1).unwrap().starts_with("2 ")
            && out.lines().nth(2).unwrap().starts_with("1 "),
        "{out}"
    );
    let (code, out) = ctl.cli(&["rollback", "1", "--wait"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(
        out.contains("revision 3 created") && out.contains("converged 1/1"),
        "{out}"
    );
    assert_eq!(
        read(&web, "/etc/app/web.conf").as_deref(),
        Some("listen 8080\n")
    );
    let history = ctl
        .admin()
        .await
        .history(pb::HistoryRequest { limit: 10 })
        .await
        .unwrap()
        .into_inner()
        .revisions;
    assert_eq!(history[0].restored_from, 1);
    assert_eq!(
        history[0].hash, history[2].hash,
        "a rollback restores the same content"
    );

    // Removing a role removes what the agent created for it.
    ctl.cli(&["node", "label", "web-1", "role=db"]).await;
    ctl.wait_node("web-1", WAIT, |n| {
        n.status() == pb::NodeStatus::Converged
            && n.desired_revision == 3
            && n.applied_revision == 3
    })
    .await;
    eventually(WAIT, "web.conf removed and db.conf written", || {
        read(&web, "/etc/app/web.conf").is_none() && read(&web, "/etc/app/db.conf").is_some()
    })
    .await;

    web.stop().await;
    db.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_enforces_its_cache_while_the_controller_is_away_and_reconnects() {
    let mut ctl = TestController::start().await;
    let mut agent = TestAgent::enroll(&ctl, "edge-1", &[("role", "web")]).await;
    agent.start(Duration::from_millis(400));
    ctl.apply(&web_spec("v1")).await.unwrap();
    ctl.wait_node("edge-1", WAIT, |n| {
        n.status() == pb::NodeStatus::Converged && n.applied_revision == 1
    })
    .await;

    ctl.stop().await;
    // Drift while the controller is down is repaired from the cache.
    std::fs::write(agent.path("/etc/app/motd"), "tampered\n").unwrap();
    eventually(WAIT, "drift repaired with the controller down", || {
        read(&agent, "/etc/app/motd").as_deref() == Some("v1\n")
    })
    .await;
    // And a restarted agent enforces the cache without any controller.
    agent.stop().await;
    std::fs::remove_file(agent.path("/etc/app/web.conf")).unwrap();
    agent.start(Duration::from_secs(300));
    eventually(WAIT, "startup run restores from cache", || {
        read(&agent, "/etc/app/web.conf").is_some()
    })
    .await;

    ctl.restart().await;
    ctl.apply(&web_spec("v2")).await.unwrap();
    eventually(WAIT, "new revision after reconnect", || {
        read(&agent, "/etc/app/motd").as_deref() == Some("v2\n")
    })
    .await;
    let n = ctl
        .wait_node("edge-1", WAIT, |n| {
            n.applied_revision == 2 && n.status() == pb::NodeStatus::Converged
        })
        .await;
    assert_eq!(n.desired_revision, 2);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_repair_is_reported_as_drifted_and_failures_as_failed() {
    let ctl = TestController::start().await;
    let mut agent = TestAgent::enroll(&ctl, "drifty", &[]).await;
    agent.start(Duration::from_millis(500));
    ctl.apply(&web_spec("one")).await.unwrap();
    ctl.wait_node("drifty", WAIT, |n| n.status() == pb::NodeStatus::Converged)
        .await;
    std::fs::write(agent.path("/etc/app/motd"), "edited by hand\n").unwrap();
    ctl.wait_node("drifty", WAIT, |n| n.status() == pb::NodeStatus::Drifted)
        .await;
    assert_eq!(read(&agent, "/etc/app/motd").as_deref(), Some("one\n"));
    ctl.wait_node("drifty", WAIT, |n| n.status() == pb::NodeStatus::Converged)
        .await;

    // A directory where a file is wanted: the file fails, the node is failed,
    // health says so with a non-zero exit, and apply --wait fails.
    std::fs::create_dir_all(agent.path("/etc/blocked")).unwrap();
    let spec = web_spec("one")
        .replace(
            "groups:\n  all:",
            "  extra:\n    files: [{path: /etc/blocked, content: x}]\ngroups:\n  all:",
        )
        .replace("roles: [base]", "roles: [base, extra]");
    let path = agent.state.path().join("spec.yaml");
    std::fs::write(&path, spec).unwrap();
    let (code, out) = ctl
        .cli(&[
            "apply",
            "-f",
            path.to_str().unwrap(),
            "--wait",
            "--timeout",
            "20s",
        ])
        .await;
    assert_eq!(code, ExitCode::FAILURE, "{out}");
    assert!(
        out.contains("node drifty failed:\n  file[/etc/blocked]: "),
        "{out}"
    );
    let n = ctl
        .wait_node("drifty", WAIT, |n| n.status() == pb::NodeStatus::Failed)
        .await;
    assert_eq!(n.failed_resources, vec!["file[/etc/blocked]"]);
    let (code, out) = ctl.cli(&["health"]).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(
        out.contains("drifty failed (failing: file[/etc/blocked])"),
        "{out}"
    );
    let (_, out) = ctl.cli(&["node", "show", "drifty"]).await;
    assert!(
        out.contains("failing") && out.contains("failing at file[/etc/blocked]"),
        "{out}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_nodes_become_stale() {
    let ctl = TestController::start_with(|c| c.stale_after = Duration::from_secs(1)).await;
    let mut agent = TestAgent::enroll(&ctl, "quiet", &[]).await;
    agent.start(Duration::from_secs(300));
    ctl.apply(&web_spec("x")).await.unwrap();
    ctl.wait_node("quiet", WAIT, |n| n.status() == pb::NodeStatus::Converged)
        .await;
    agent.stop().await;
    ctl.wait_node("quiet", WAIT, |n| n.status() == pb::NodeStatus::Stale)
        .await;
    let (code, out) = ctl.cli(&["health"]).await;
    assert_eq!(code, ExitCode::FAILURE, "{out}");
}
