//! `ballast-agent run --once --noop` against a real controller: the node's
//! current desired state, fetched with its enrolled identity, dry-run
//! against the node; nothing applied, cached or reported.

use ballast_agent::cli::{Cli, NOOP_CHANGES, execute};
use ballast_tests::{TestAgent, TestController};
use clap::Parser;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

fn site(motd: &str, extra: bool) -> String {
    let extra = if extra {
        ", {path: /etc/extra, content: x}"
    } else {
        ""
    };
    format!(
        "roles:\n  base:\n    files: [{{path: /etc/motd, content: {motd}}}{extra}]\ngroups:\n  all: {{roles: [base]}}\n"
    )
}

/// `ballast-agent run --once --noop` for `agent`: exit code and output.
async fn dry_run(agent: &TestAgent) -> (ExitCode, String) {
    let cli = Cli::try_parse_from([
        "ballast-agent",
        "run",
        "--once",
        "--noop",
        "--state-dir",
        agent.state.path().to_str().unwrap(),
        "--root",
        agent.root.path().to_str().unwrap(),
        "--facts-dir",
        agent.state.path().join("facts.d").to_str().unwrap(),
    ])
    .unwrap();
    let mut out = Vec::new();
    let code = tokio::time::timeout(TIMEOUT, execute(cli.command, &mut out))
        .await
        .expect("a dry run ends")
        .unwrap_or_else(|e| panic!("dry run: {e:#}"));
    (code, String::from_utf8(out).unwrap())
}

/// Every file under `dir` with its content and modification time.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>, std::time::SystemTime)> {
    let mut all = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                todo.push(e.path());
            }
            let bytes = if meta.is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            all.push((
                e.path().display().to_string(),
                bytes,
                meta.modified().unwrap(),
            ));
        }
    }
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_noop_shows_the_controllers_change_and_applies_caches_and_reports_nothing() {
    let ctl = TestController::start().await;
    let mut agent = TestAgent::enroll(&ctl, "web-1", &[]).await;
    std::fs::create_dir(agent.path("/etc")).unwrap();
    let first = ctl.apply(&site("one", true)).await.unwrap().revision;
    agent.start(Duration::from_secs(3600));
    ctl.wait_node("web-1", TIMEOUT, |n| n.applied_revision == first)
        .await;
    agent.stop().await;
    let second = ctl.apply(&site("two", false)).await.unwrap().revision;
    let before = ctl.node_detail("web-1").await;
    let state_before = snapshot(agent.state.path());

    let (code, out) = dry_run(&agent).await;
    assert_eq!(code, ExitCode::from(NOOP_CHANGES), "{out}");
    assert!(
        out.starts_with(&format!("desired state of web-1: revision {second}\n")),
        "{out}"
    );
    assert!(out.contains("would change file[/etc/motd]: "), "{out}");
    assert!(
        out.contains("would change file[/etc/extra]: remove file")
            && out.contains("(no longer in desired state)"),
        "{out}"
    );
    // Nothing applied, nothing cached as desired, nothing queued or written.
    assert_eq!(std::fs::read(agent.path("/etc/motd")).unwrap(), b"one");
    assert!(agent.path("/etc/extra").exists());
    assert_eq!(snapshot(agent.state.path()), state_before);
    // Nothing reported: the controller's view is what the daemon last did.
    let after = ctl.node_detail("web-1").await;
    assert_eq!(after.summary.as_ref().unwrap().applied_revision, first);
    assert_eq!(after.last_report, before.last_report);

    // Once the daemon has run the new state, a dry run has nothing to do.
    agent.start(Duration::from_secs(3600));
    ctl.wait_node("web-1", TIMEOUT, |n| n.applied_revision == second)
        .await;
    agent.stop().await;
    let (code, out) = dry_run(&agent).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
}

/// A dry run that cannot reach any controller is an error (exit 1), never
/// a dry run of the cached state passed off as the controller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_noop_fails_when_no_controller_answers() {
    let mut ctl = TestController::start().await;
    let agent = TestAgent::enroll(&ctl, "web-1", &[]).await;
    ctl.stop().await;
    let cli = Cli::try_parse_from([
        "ballast-agent",
        "run",
        "--once",
        "--noop",
        "--state-dir",
        agent.state.path().to_str().unwrap(),
        "--root",
        agent.root.path().to_str().unwrap(),
    ])
    .unwrap();
    let mut out = Vec::new();
    let err = tokio::time::timeout(TIMEOUT, execute(cli.command, &mut out))
        .await
        .expect("a dry run ends")
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("no controller answered"),
        "{err:#}"
    );
}
