//! `ballast apply --wait` says why it ended: per failed node, each failing
//! resource with its error text (escaped: it is the node's text); on a
//! timeout, each pending node with its status and when it was last seen.

use ballast_controller::cli::output::time;
use ballast_proto::enums::NodeStatus;
use ballast_proto::pb;
use ballast_tests::{TestAgent, TestController};
use std::process::ExitCode;
use tokio_stream::StreamExt;

const HOSTILE: &str = "\x1b[2J\x1b]0;owned\x07";

fn site(dir: &std::path::Path, motd: &str) -> String {
    let spec = dir.join("site.yaml");
    std::fs::write(
        &spec,
        format!("roles:\n  base:\n    files: [{{path: /etc/motd, content: {motd}}}, {{path: /etc/issue, content: x}}]\ngroups:\n  all: {{roles: [base]}}\n"),
    )
    .unwrap();
    spec.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_wait_shows_each_failing_resource_with_its_error_escaped() {
    let ctl = TestController::start().await;
    let agent = TestAgent::enroll(&ctl, "node-a", &[]).await;
    let mut client = agent.agent_client().await.unwrap();
    let mut stream = client
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    // The node: reports every revision the applies make as failed.
    let node = tokio::spawn(async move {
        loop {
            let desired = stream.next().await.unwrap().unwrap();
            if desired.revision == 0 {
                continue;
            }
            let outcome = |id: &str, outcome: pb::Outcome, error: &str| pb::ResourceOutcome {
                id: id.into(),
                outcome: outcome as i32,
                changes: Vec::new(),
                error: error.into(),
                ..Default::default()
            };
            client
                .report(pb::RunReport {
                    revision: desired.revision,
                    state_hash: desired.hash,
                    started_at_ms: 1,
                    trigger: pb::Trigger::Change.into(),
                    resources: vec![
                        outcome("file[/etc/issue]", pb::Outcome::Unchanged, ""),
                        outcome(
                            "file[/etc/motd]",
                            pb::Outcome::Failed,
                            &format!("write /etc/motd: disk full {HOSTILE}"),
                        ),
                    ],
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let spec = site(dir.path(), "one");
    let (code, out) = ctl
        .cli(&["apply", "-f", &spec, "--wait", "--timeout", "30s"])
        .await;
    assert_eq!(code, ExitCode::FAILURE, "{out}");
    assert!(
        !out.chars().any(|c| c.is_control() && c != '\n'),
        "raw control characters in:\n{out}"
    );
    assert!(
        out.contains(
            "node node-a failed:\n  file[/etc/motd]: write /etc/motd: disk full \\x1b[2J\\x1b]0;owned\\x07\n"
        ),
        "{out}"
    );
    assert!(!out.contains("file[/etc/issue]"), "{out}");

    // JSON keeps the exact text.
    let spec = site(dir.path(), "two");
    let (code, out) = ctl
        .cli(&[
            "apply",
            "-f",
            &spec,
            "--wait",
            "--timeout",
            "30s",
            "-o",
            "json",
        ])
        .await;
    node.abort();
    assert_eq!(code, ExitCode::FAILURE, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc["wait"]["failed"][0]["errors"][0]["error"],
        format!("write /etc/motd: disk full {HOSTILE}"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_wait_timeout_names_each_pending_node_and_when_it_was_last_seen() {
    let ctl = TestController::start().await;
    let seen = TestAgent::enroll(&ctl, "seen-1", &[]).await;
    let _quiet = TestAgent::enroll(&ctl, "quiet-1", &[]).await;
    // seen-1 opens a watch and runs nothing; quiet-1 was last seen enrolling.
    let mut client = seen.agent_client().await.unwrap();
    let _stream = client.watch(pb::WatchRequest::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = site(dir.path(), "one");
    let (code, out) = ctl
        .cli(&["apply", "-f", &spec, "--wait", "--timeout", "1s"])
        .await;
    assert_eq!(code, ExitCode::FAILURE, "{out}");
    assert!(out.contains("2 pending:"), "{out}");
    for n in ctl.nodes().await {
        let line = format!(
            "  {} {} (applied revision 0, desired 1), last seen {}\n",
            n.name,
            NodeStatus::try_from(n.status).unwrap().as_str(),
            time(n.last_seen_ms)
        );
        assert!(out.contains(&line), "{line:?} missing in:\n{out}");
        assert!(n.last_seen_ms > 0, "{n:?}");
    }
}
