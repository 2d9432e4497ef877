//! The `ballast` CLI against a real controller: what a node sends shows
//! escaped on the operator's terminal, and every printing command speaks
//! JSON and YAML.

use ballast_proto::pb;
use ballast_tests::{TestAgent, TestController};
use std::process::ExitCode;
use tokio_stream::StreamExt;

const HOSTILE: &str = "\x1b[2J\x1b]0;owned\x07\u{9b}31m\x7f";

fn assert_no_raw_control(text: &str) {
    let raw: Vec<char> = text
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert!(raw.is_empty(), "raw control characters {raw:?} in:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sent_escapes_show_escaped_in_node_show_and_health() {
    let ctl = TestController::start().await;
    let agent = TestAgent::enroll(&ctl, "node-a", &[]).await;
    let mut client = agent.agent_client().await.unwrap();
    let desired = client
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    client
        .put_facts(pb::Facts {
            json: serde_json::json!({"os": {"pretty_name": HOSTILE}, "hostname": HOSTILE})
                .to_string(),
        })
        .await
        .unwrap();
    client
        .report(pb::RunReport {
            revision: desired.revision,
            state_hash: desired.hash,
            started_at_ms: 1,
            trigger: pb::Trigger::Change.into(),
            resources: vec![pb::ResourceOutcome {
                id: format!("file[/etc/{HOSTILE}]"),
                outcome: pb::Outcome::Failed as i32,
                changes: vec![format!("content {HOSTILE}")],
                error: format!("boom {HOSTILE}"),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();

    let escaped = "\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\x7f";
    let (code, out) = ctl.cli(&["node", "show", "node-a"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert_no_raw_control(&out);
    for shown in [
        format!("file[/etc/{escaped}]"),
        format!("error: boom {escaped}"),
        format!("content {escaped}"),
        // The trigger is a closed enum: no text of the node's reaches here.
        "(change, ".to_owned(),
        format!("facts:     {escaped}"),
    ] {
        assert!(out.contains(&shown), "{shown:?} missing in:\n{out}");
    }

    let (code, out) = ctl.cli(&["health"]).await;
    assert_eq!(code, ExitCode::FAILURE, "{out}");
    assert_no_raw_control(&out);
    assert!(
        out.contains(&format!("node-a failed (failing: file[/etc/{escaped}])")),
        "{out}"
    );

    let (_, out) = ctl.cli(&["nodes"]).await;
    assert_no_raw_control(&out);

    // JSON keeps the exact text, escaped as JSON; YAML escapes it too.
    let (_, out) = ctl.cli(&["node", "show", "node-a", "-o", "json"]).await;
    assert_no_raw_control(&out);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc["last_run"]["resources"][0]["error"],
        format!("boom {HOSTILE}")
    );
    let (_, out) = ctl.cli(&["node", "show", "node-a", "-o", "yaml"]).await;
    assert_no_raw_control(&out);
    assert!(out.contains("\\x1b[2J"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_printing_command_speaks_json_and_yaml() {
    let ctl = TestController::start().await;
    let _node = TestAgent::enroll(&ctl, "web-1", &[("role", "web")]).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("site.yaml");
    std::fs::write(
        &spec,
        "roles:\n  base:\n    files: [{path: /etc/motd, content: \"hi\\n\"}]\ngroups:\n  all: {roles: [base]}\n",
    )
    .unwrap();
    let spec = spec.to_str().unwrap();
    let creds = dir.path().join("creds");
    let creds = creds.to_str().unwrap();
    let cases: [(&[&str], &str); 10] = [
        (&["apply", "-f", spec, "-m", "first"], "revision"),
        (&["history"], "author"),
        (&["diff", "-f", spec], "current_revision"),
        (&["nodes"], "name"),
        (&["node", "show", "web-1"], "timeline"),
        (&["health"], "statuses"),
        (&["token", "create", "--labels", "role=web"], "token"),
        (&["ca", "fingerprint"], "fingerprint"),
        (&["admin", "credentials", "--out", creds], "files"),
        (&["rollback", "1"], "affected_nodes"),
    ];
    for (args, field) in cases {
        for format in ["json", "yaml"] {
            let mut argv = args.to_vec();
            argv.extend(["-o", format]);
            let (code, out) = ctl.cli(&argv).await;
            assert_eq!(code, ExitCode::SUCCESS, "{argv:?}: {out}");
            if format == "json" {
                let doc: serde_json::Value = serde_json::from_str(&out)
                    .unwrap_or_else(|e| panic!("{argv:?} is not JSON ({e}): {out}"));
                let doc = doc.as_array().and_then(|a| a.first()).unwrap_or(&doc);
                assert!(doc.get(field).is_some(), "{argv:?}: no {field} in {out}");
            } else {
                assert!(out.contains(&format!("{field}:")), "{argv:?}: {out}");
            }
        }
    }
    let (_, out) = ctl.cli(&["history", "-o", "json"]).await;
    let revs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(revs[0]["revision"], 1);
    assert_eq!(revs[0]["message"], "first");
    assert!(revs[0]["author"].as_str().unwrap().contains('@'));
}

/// `ballast diff` speaks in exit codes scripts can use, as diff(1) does:
/// 0 when no node would change, 2 when some would, 1 on an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_exits_0_without_changes_2_with_changes_1_on_error() {
    let ctl = TestController::start().await;
    let _node = TestAgent::enroll(&ctl, "web-1", &[("role", "web")]).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("site.yaml");
    let write = |motd: &str| {
        std::fs::write(
            &spec,
            format!("roles:\n  base:\n    files: [{{path: /etc/motd, content: \"{motd}\\n\"}}]\ngroups:\n  all: {{roles: [base]}}\n"),
        )
        .unwrap()
    };
    let spec_arg = spec.to_str().unwrap();
    write("one");
    let (code, out) = ctl.cli(&["diff", "-f", spec_arg]).await;
    assert_eq!(
        code,
        ExitCode::from(2),
        "a first apply changes web-1: {out}"
    );
    assert!(out.contains("+ file[/etc/motd]"), "{out}");
    let (code, out) = ctl.cli(&["apply", "-f", spec_arg]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let (code, out) = ctl.cli(&["diff", "-f", spec_arg, "-o", "json"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "nothing would change: {out}");
    write("two");
    let (code, out) = ctl.cli(&["diff", "-f", spec_arg]).await;
    assert_eq!(code, ExitCode::from(2), "{out}");
    assert!(out.contains("~ file[/etc/motd]"), "{out}");
    std::fs::write(&spec, "roles: [").unwrap();
    let (code, out) = ctl.cli(&["diff", "-f", spec_arg]).await;
    assert_eq!(code, ExitCode::FAILURE, "{out}");
}
