//! The dashboard in a real headless Chromium over WebDriver: log in through
//! the one-time link, the fleet page's counts, filtering nodes, a failing
//! node's error, what a node sends shown as text, the link refused a second
//! time, nothing but the login page without a session, and no console error
//! on any page; a rollout followed live on its page while it moves through
//! its waves, and the diff of two revisions. Screenshots go to
//! `$CARGO_TARGET_TMPDIR/dashboard/`.

use ballast_controller::fleet::Clock;
use ballast_proto::pb;
use ballast_tests::webdriver::{Browser, browser_installed};
use ballast_tests::{TestAgent, TestController, start_ok_and_broken};
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
    // The chart of its run durations: one bar per run, a failed one red.
    assert!(
        browser.find("#durations rect.run.failed").is_some(),
        "{}",
        browser.source()
    );
    browser.screenshot(&shots.join("node.png"));
    assert_no_console_errors(&browser, "the node page");

    browser.goto(&format!("{base}/revisions"));
    assert!(browser.text("#revisions").contains("1"));
    assert_no_console_errors(&browser, "the revisions page");

    // A hostile node's report: markup in resource ids, changes and errors
    // is text on every page that shows it.
    let hash = ctl
        .node_detail("bad-1")
        .await
        .last_report
        .expect("a report")
        .state_hash;
    agents[2]
        .agent_client()
        .await
        .unwrap()
        .report(pb::RunReport {
            revision: 1,
            state_hash: hash,
            started_at_ms: 1,
            duration_ms: 7,
            trigger: pb::Trigger::Resync as i32,
            resources: vec![pb::ResourceOutcome {
                id: format!("file[/etc/{HOSTILE}]"),
                outcome: pb::Outcome::Failed as i32,
                changes: vec![HOSTILE.into()],
                error: HOSTILE.into(),
                backup: String::new(),
                diff: format!("diff (+1 -0 lines)\n+{HOSTILE}\n"),
            }],
            ..Default::default()
        })
        .await
        .expect("report");
    for page in ["/", "/nodes", "/nodes/bad-1", "/rollout", "/revisions"] {
        browser.goto(&format!("{base}{page}"));
        assert!(
            browser.find("#injected").is_none(),
            "a node's markup became markup on {page}"
        );
        assert_ne!(browser.text("main"), "", "{page}");
        assert_no_console_errors(&browser, page);
    }
    browser.goto(&format!("{base}/"));
    assert!(
        browser.text("#problems").contains("<b id=\"injected\">"),
        "{}",
        browser.source()
    );
    browser.goto(&format!("{base}/nodes/bad-1"));
    assert!(browser.text("#run").contains("<script>document.title"));

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

/// The spec of the rollout test: revision 1 without a policy, then a
/// change rolled out to `env=dev`, then `env=prod`, each baking a minute
/// of the controller's manual clock.
fn rollout_spec(content: &str, policy: bool) -> String {
    let rollout = if policy {
        "rollout:\n  waves: [{match: {env: dev}}, {match: {env: prod}}]\n  bake: 1m\n"
    } else {
        ""
    };
    format!(
        "roles:\n  app:\n    directories: [{{path: /etc/app}}]\n    files: [{{path: /etc/app/v, content: \"{content}\"}}]\ngroups:\n  all: {{roles: [app]}}\n{rollout}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_page_follows_the_rollout_live_without_a_reload() {
    if !browser_installed() {
        return;
    }
    let clock = Clock::manual();
    let c = clock.clone();
    let ctl = TestController::start_with(move |cfg| {
        cfg.dashboard_listen = Some("127.0.0.1:0".parse().unwrap());
        cfg.clock = c;
    })
    .await;
    let base = format!("https://{}", ctl.dashboard().expect("dashboard on"));
    let mut agents = Vec::new();
    for env in ["dev", "prod"] {
        let mut a = TestAgent::enroll(&ctl, &format!("{env}-1"), &[("env", env)]).await;
        a.start(Duration::from_secs(300));
        agents.push(a);
    }
    ctl.apply(&rollout_spec("one", false)).await.unwrap();
    for name in ["dev-1", "prod-1"] {
        ctl.wait_node(name, WAIT, |n| n.status() == pb::NodeStatus::Converged)
            .await;
    }
    let resp = ctl.apply(&rollout_spec("two", true)).await.unwrap();
    assert_eq!(resp.affected_nodes, ["dev-1"], "only the first wave moves");

    let shots = shots();
    let browser = tokio::task::spawn_blocking(Browser::start).await.unwrap();
    let (code, out) = ctl.cli(&["dashboard", "url"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    browser.goto(out.lines().last().expect("the link"));
    assert!(browser.text("#fleet-rollout").contains("wave 1 of 2"));
    browser.screenshot(&shots.join("fleet-rollout.png"));
    assert_no_console_errors(&browser, "the fleet page");
    browser.click("#rollout-link");
    browser.wait_url("/rollout", WAIT);
    let page = browser.find("#rollout").expect("the rollout page");
    assert_eq!(browser.text("#phase"), "running");
    assert_eq!(browser.text("#wave"), "1");
    assert!(browser.text("#waves").contains("not started"));
    // dev-1 converges and wave 1 starts baking: the page shows it by itself.
    browser.wait_text("#baking", "1m left", WAIT);
    browser.screenshot(&shots.join("rollout-baking.png"));
    // A browser without JavaScript: the page says it reloads itself.
    let plain = tokio::task::spawn_blocking(Browser::start_without_javascript)
        .await
        .unwrap();
    let (code, out) = ctl.cli(&["dashboard", "url"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    plain.goto(out.lines().last().expect("the link"));
    plain.goto(&format!("{base}/rollout"));
    assert!(plain.text("#live").contains("reloads every 5 s"));
    let plain_page = plain.find("#rollout").expect("the rollout page");

    // Past the bake: wave 2 starts, prod-1 moves, bakes, and it is done.
    clock.advance(Duration::from_secs(61));
    browser.wait_text("#wave", "2", WAIT);
    browser.wait_text("#wave-1 .state", "passed", WAIT);
    // Without JavaScript the same change arrives by a reload.
    plain.wait_text("#wave", "2", WAIT);
    assert!(
        !plain.still_attached(&plain_page),
        "no reload without scripts"
    );
    drop(plain);
    browser.wait_text("#baking", "left", WAIT);
    clock.advance(Duration::from_secs(61));
    browser.wait_text("#phase", "done", WAIT);
    browser.wait_text("#wave-2 .state", "passed", WAIT);
    assert_eq!(browser.text("#moved"), "2");
    browser.wait_text("#live", "no longer refreshes", WAIT);
    assert!(
        browser.still_attached(&page),
        "the page was loaded again instead of updated in place"
    );
    browser.screenshot(&shots.join("rollout.png"));
    assert_no_console_errors(&browser, "the rollout page");

    // The fleet page's recent revisions say how each one's rollout went.
    browser.goto(&format!("{base}/"));
    assert_eq!(
        browser.text("#revisions tr:nth-child(2) td.rollout-outcome"),
        "done"
    );
    assert_eq!(
        browser.text("#revisions tr:nth-child(3) td.rollout-outcome"),
        "at once"
    );

    // The two revisions' sources, diffed.
    browser.goto(&format!("{base}/revisions"));
    browser.click("#revisions a.changes");
    browser.wait_url("from=1&to=2", WAIT);
    let diff = browser.text("#diff");
    assert!(
        diff.contains("-    files: [{path: /etc/app/v, content: \"one\"}]"),
        "{diff}"
    );
    assert!(diff.contains("+rollout:"), "{diff}");
    browser.screenshot(&shots.join("revisions-diff.png"));
    assert_no_console_errors(&browser, "the revisions page");
    browser.goto(&format!("{base}/revisions?from=1&to=9"));
    assert!(
        browser
            .text("#diff-error")
            .contains("revision 9 does not exist")
    );

    drop(browser);
    for a in &mut agents {
        a.stop().await;
    }
}
