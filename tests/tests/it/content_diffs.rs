//! Content diffs with real agents on temp roots: the diff a run made reaches
//! `node show` (escaped) and `GetNode`; `ballast diff` shows what each node
//! (or group of nodes) would get, rendered by the controller.

use ballast_proto::pb;
use ballast_tests::{TestAgent, TestController};
use std::process::ExitCode;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn spec(motd: &str) -> String {
    format!(
        r#"
roles:
  base:
    directories: [{{path: /etc/app, mode: "0755"}}]
    files:
      - {{path: /etc/app/motd, content: "{motd}", mode: "0644"}}
      - {{path: /etc/app/name, content: "I am {{{{ node.name }}}}\n", template: true}}
groups:
  all:
    roles: [base]
"#
    )
}

async fn converged(ctl: &TestController, name: &str, revision: u64) {
    ctl.wait_node(name, WAIT, |n| {
        n.status() == pb::NodeStatus::Converged && n.applied_revision == revision
    })
    .await;
}

/// A run that changes a file reports its diff; the controller keeps it with
/// the last run; `node show` prints it a line at a time, escaping what the
/// node's old content held, and `-o json` carries it exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_show_shows_the_last_runs_content_diffs_escaped() {
    let ctl = TestController::start().await;
    let mut a = TestAgent::enroll(&ctl, "a", &[]).await;
    a.start(Duration::from_secs(300));
    ctl.apply(&spec("one\\ntwo\\nthree\\n"))
        .await
        .expect("apply");
    converged(&ctl, "a", 1).await;
    let first = ctl.node_detail("a").await.last_report.unwrap();
    let name = first
        .resources
        .iter()
        .find(|r| r.id == "file[/etc/app/name]")
        .unwrap();
    assert_eq!(
        name.diff,
        "diff (+1 -0 lines)\n--- /dev/null\n+++ /etc/app/name\n@@ -1,0 +1,1 @@\n+I am a\n"
    );

    // Someone wrote a terminal escape into the file by hand; the next
    // revision replaces it.
    std::fs::write(a.path("/etc/app/motd"), "one\n\x1b[2Jtwo\nthree\n").unwrap();
    ctl.apply(&spec("one\\nTWO\\nthree\\n"))
        .await
        .expect("apply");
    converged(&ctl, "a", 2).await;
    let report = ctl.node_detail("a").await.last_report.unwrap();
    let motd = report
        .resources
        .iter()
        .find(|r| r.id == "file[/etc/app/motd]")
        .unwrap();
    assert_eq!(
        motd.diff,
        "diff (+1 -1 lines)\n--- /etc/app/motd\n+++ /etc/app/motd\n@@ -1,3 +1,3 @@\n one\n-\x1b[2Jtwo\n+TWO\n three\n"
    );
    // Only this run's diffs: the name file did not change.
    let changed: Vec<&str> = report
        .resources
        .iter()
        .filter(|r| !r.diff.is_empty())
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(changed, ["file[/etc/app/motd]"]);

    let (code, out) = ctl.cli(&["node", "show", "a"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(
        out.contains("              @@ -1,3 +1,3 @@\n               one\n              -\\x1b[2Jtwo\n              +TWO\n"),
        "{out}"
    );
    assert!(
        !out.contains('\x1b'),
        "a raw escape reached the terminal:\n{out}"
    );
    let (code, out) = ctl.cli(&["node", "show", "a", "-o", "json"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let resources = doc["last_run"]["resources"].as_array().unwrap();
    let shown = resources
        .iter()
        .find(|r| r["id"] == "file[/etc/app/motd]")
        .unwrap();
    assert_eq!(shown["diff"], motd.diff.as_str());
    a.stop().await;
}

/// `ballast diff` renders each node's files from the current and the
/// proposed sources: a literal change is the same for every node, a
/// template that names the node differs per node, so each node is its own
/// group here; it exits 2 (changes) and `-o json` carries the diffs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_shows_the_content_each_node_would_get() {
    let ctl = TestController::start().await;
    let mut agents = Vec::new();
    for name in ["a", "b"] {
        agents.push(TestAgent::enroll(&ctl, name, &[]).await);
    }
    ctl.apply(&spec("one\\n")).await.expect("apply");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spec.yaml");
    let next = spec("one\\ntwo\\n").replace("I am ", "I am node ");
    std::fs::write(&file, next).unwrap();
    let file = file.display().to_string();

    let (code, out) = ctl.cli(&["diff", "-f", &file]).await;
    assert_eq!(code, ExitCode::from(2), "{out}");
    for node in ["a", "b"] {
        let expected = format!(
            "content on node {node}:\n  ~ file[/etc/app/motd]\n      diff (+1 -0 lines)\n      --- /etc/app/motd\n      +++ /etc/app/motd\n      @@ -1,1 +1,2 @@\n       one\n      +two\n  ~ file[/etc/app/name]\n      diff (+1 -1 lines)\n      --- /etc/app/name\n      +++ /etc/app/name\n      @@ -1,1 +1,1 @@\n      -I am {node}\n      +I am node {node}\n"
        );
        assert!(out.contains(&expected), "{out}");
    }

    let (code, out) = ctl.cli(&["diff", "-f", &file, "-o", "json"]).await;
    assert_eq!(code, ExitCode::from(2), "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let groups = doc["content"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{doc:#}");
    assert_eq!(groups[0]["nodes"], serde_json::json!(["a"]));
    assert_eq!(groups[0]["files"][0]["id"], "file[/etc/app/motd]");
    assert_eq!(doc["content_left_out"], 0);

    // The same literal change alone: one group of both nodes.
    std::fs::write(&file, spec("one\\ntwo\\n")).unwrap();
    let (_, out) = ctl.cli(&["diff", "-f", &file, "-o", "json"]).await;
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc["content"][0]["nodes"],
        serde_json::json!(["a", "b"]),
        "{doc:#}"
    );
    drop(agents);
}

/// A run whose diffs pass the report's bound is still reported and taken:
/// the first diffs whole, then a note saying how many were left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_more_diffs_than_a_report_holds_is_fitted_and_taken() {
    use ballast_proto::limits::MAX_REPORT_DIFF_BYTES;
    let ctl = TestController::start().await;
    let mut a = TestAgent::enroll(&ctl, "a", &[]).await;
    a.start(Duration::from_secs(300));
    let body: String = (0..200)
        .map(|i| format!("line {i:03} of a long file\\n"))
        .collect();
    let files: String = (0..40)
        .map(|k| format!("      - {{path: /etc/app/f{k:02}, content: \"{body}\"}}\n"))
        .collect();
    let yaml = format!(
        "roles:\n  base:\n    directories: [{{path: /etc/app}}]\n    files:\n{files}groups:\n  all: {{roles: [base]}}\n"
    );
    ctl.apply(&yaml).await.expect("apply");
    converged(&ctl, "a", 1).await;
    let report = ctl.node_detail("a").await.last_report.unwrap();
    let diffs: Vec<&str> = report
        .resources
        .iter()
        .map(|r| r.diff.as_str())
        .filter(|d| !d.is_empty())
        .collect();
    let total: usize = diffs.iter().map(|d| d.len()).sum();
    assert!(total <= MAX_REPORT_DIFF_BYTES, "{total}");
    let whole = diffs
        .iter()
        .filter(|d| d.starts_with("diff (+200 -0 lines)"))
        .count();
    assert!((5..40).contains(&whole), "{whole} whole diffs");
    assert_eq!(
        diffs[whole],
        format!(
            "diff left out: this report's diffs reached their bound of {MAX_REPORT_DIFF_BYTES} bytes ({} files' diffs left out)\n",
            40 - whole
        )
    );
    a.stop().await;
}
