//! The dashboard in a real headless Chromium over WebDriver: log in through
//! the one-time link, the fleet page's counts, filtering nodes, a failing
//! node's error, what a node sends shown as text, the link refused a second
//! time, nothing but the login page without a session, and no console error
//! on any page. Screenshots go to `$CARGO_TARGET_TMPDIR/dashboard/`.

use ballast_proto::pb;
use ballast_tests::webdriver::{Browser, browser_installed};
use ballast_tests::{TestController, start_ok_and_broken};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// What a hostile node puts in its facts: markup and a script.
const HOSTILE: &str = "<script>document.title='owned'</script><b id=\"injected\">x</b>";

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn assert_no_console_errors(browser: &Browser, page: &str) {
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "console errors on {page}: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser_and_only_with_a_session() {
    if !browser_installed() {
        return;
    }
    let ctl = TestController::start_with(|cfg| {
        cfg.dashboard_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let base = format!("https://{}", ctl.dashboard().expect("dashboard on"));
    let mut agents = start_ok_and_broken(
        &ctl,
        &[("web-1", "ok"), ("web-2", "ok"), ("bad-1", "broken")],
    )
    .await;
    // The failing node also sends hostile facts.
    agents[2]
        .agent_client()
        .await
        .unwrap()
        .put_facts(pb::Facts {
            json: serde_json::json!({ "custom": { "note": HOSTILE } }).to_string(),
        })
        .await
        .expect("facts");

    let shots = shots();
    let browser = tokio::task::spawn_blocking(Browser::start).await.unwrap();

    // No session: the login page, and nothing of the fleet.
    browser.goto(&format!("{base}/nodes/bad-1"));
    assert!(browser.find("#login").is_some(), "{}", browser.source());
    assert!(!browser.source().contains("/etc/blocked"));
    browser.screenshot(&shots.join("login.png"));
    // The login page is a 401, which the console notes; nothing else.
    let errors = browser.console_errors();
    assert!(
        errors.iter().all(|e| e.contains("status of 401")),
        "{errors:?}"
    );

    // The one-time link opens a session and lands on the fleet page.
    let (code, out) = ctl.cli(&["dashboard", "url"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let link = out
        .lines()
        .last()
        .expect("the link on the last line")
        .to_owned();
    assert!(link.starts_with(&format!("{base}/login?code=")), "{out}");
    browser.goto(&link);
    assert!(browser.find("#fleet").is_some(), "{}", browser.source());
    assert_eq!(browser.text("#count-converged .n"), "2");
    assert_eq!(browser.text("#count-failed .n"), "1");
    assert_eq!(browser.text("#total"), "3");
    assert!(browser.text("#problems").contains("bad-1"));
    assert!(browser.text("#problems").contains("file[/etc/blocked]"));
    browser.screenshot(&shots.join("fleet.png"));
    assert_no_console_errors(&browser, "the fleet page");

    // Filter the nodes as with --where.
    browser.goto(&format!("{base}/nodes"));
    browser.type_into("#where", "kind=ok");
    browser.click("#filter");
    browser.wait_url("where=kind%3Dok", WAIT);
    let list = browser.text("#node-list");
    assert!(list.contains("web-1") && list.contains("web-2"), "{list}");
    assert!(!list.contains("bad-1"), "{list}");
    browser.screenshot(&shots.join("nodes.png"));
    assert_no_console_errors(&browser, "the nodes page");

    // The failing node: its error, and its hostile facts as text.
    browser.goto(&format!("{base}/"));
    browser.click("#problems a");
    browser.wait_url("/nodes/bad-1", WAIT);
    assert_eq!(browser.text("#node"), "bad-1");
    assert_eq!(browser.text("#status"), "failed");
    let run = browser.text("#run");
    assert!(
        run.contains("file[/etc/blocked]") && run.contains("failed"),
        "{run}"
    );
    // Shown as the text it is (inside JSON, so its quotes are escaped).
    let facts = browser.text("#facts");
    assert!(
        facts.contains("<script>document.title='owned'</script><b id=\\\"injected\\\">"),
        "{facts}"
    );
    assert!(
        browser.find("#injected").is_none(),
        "a node's markup became markup"
    );
    assert!(browser.source().contains("&lt;script&gt;"));
    browser.screenshot(&shots.join("node.png"));
    assert_no_console_errors(&browser, "the node page");

    browser.goto(&format!("{base}/revisions"));
    assert!(browser.text("#revisions").contains("1"));
    assert_no_console_errors(&browser, "the revisions page");

    // The link works once.
    browser.goto(&link);
    assert!(browser.find("#login").is_some());
    assert!(browser.text("main").contains("used already"));

    drop(browser);
    for agent in &mut agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_url_says_when_the_dashboard_is_off() {
    let ctl = TestController::start().await;
    let (code, out) = ctl.cli(&["dashboard", "url"]).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(out.contains("--dashboard-listen"), "{out}");
}

/// The node page shows the last run's content diffs: removed and added
/// lines in their own classed spans, and markup the node's old content held
/// shown as text. (Added by the content-diffs work; a separate test so the
/// main walk above stays as it is.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_page_shows_the_last_runs_content_diffs() {
    if !browser_installed() {
        return;
    }
    let ctl = TestController::start_with(|cfg| {
        cfg.dashboard_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let base = format!("https://{}", ctl.dashboard().expect("dashboard on"));
    let mut agent = ballast_tests::TestAgent::enroll(&ctl, "web-1", &[]).await;
    agent.start(Duration::from_secs(300));
    let site = |motd: &str| {
        format!(
            "roles:\n  base:\n    directories: [{{path: /etc/app}}]\n    files: [{{path: /etc/app/motd, content: \"{motd}\"}}]\ngroups:\n  all: {{roles: [base]}}\n"
        )
    };
    let converged = |revision: u64| {
        move |n: &pb::NodeSummary| {
            n.status() == pb::NodeStatus::Converged && n.applied_revision == revision
        }
    };
    ctl.apply(&site("one\\ntwo\\n")).await.expect("apply");
    ctl.wait_node("web-1", WAIT, converged(1)).await;
    std::fs::write(agent.path("/etc/app/motd"), format!("one\n{HOSTILE}\n")).unwrap();
    ctl.apply(&site("one\\nTWO\\n")).await.expect("apply");
    ctl.wait_node("web-1", WAIT, converged(2)).await;

    let browser = tokio::task::spawn_blocking(Browser::start).await.unwrap();
    let (_, out) = ctl.cli(&["dashboard", "url"]).await;
    browser.goto(out.lines().last().expect("the link"));
    browser.goto(&format!("{base}/nodes/web-1"));
    assert_eq!(browser.text("#node"), "web-1");
    assert_eq!(
        browser.text("#run pre.diff span.del"),
        format!("-{HOSTILE}")
    );
    assert_eq!(browser.text("#run pre.diff span.add"), "+TWO");
    assert_eq!(browser.text("#run pre.diff span.hunk"), "@@ -1,2 +1,2 @@");
    assert!(
        browser.find("#injected").is_none(),
        "a node's markup became markup"
    );
    browser.screenshot(&shots().join("node-diff.png"));
    assert_no_console_errors(&browser, "the node page with diffs");
    drop(browser);
    agent.stop().await;
}
