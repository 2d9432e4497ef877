//! Rollouts with real agents on temp roots: waves, bake times on a manual
//! clock, a failing wave that halts, pause, resume, abort and a controller
//! restart in the middle, checked on the agents' disks.

use ballast_controller::fleet::Clock;
use ballast_proto::pb;
use ballast_tests::{TestAgent, TestController};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);
/// A few rounds of the leader's rollout job (`leader::ROLLOUT_EVERY`).
const A_FEW_ROUNDS: Duration = Duration::from_millis(1600);

fn spec(content: &str, extra_file: Option<&str>, policy: bool) -> String {
    let extra = extra_file
        .map(|p| format!(", {{path: {p}, content: x}}"))
        .unwrap_or_default();
    let rollout = if policy {
        "rollout:\n  waves: [{match: {env: dev}}, {match: {env: qa}}, {match: {env: prod}}]\n  bake: 1m\n"
    } else {
        ""
    };
    format!(
        "roles:\n  app:\n    directories: [{{path: /etc/app}}]\n    files: [{{path: /etc/app/v, content: \"{content}\"}}{extra}]\ngroups:\n  all: {{roles: [app]}}\n{rollout}"
    )
}

fn on_disk(agent: &TestAgent) -> String {
    std::fs::read_to_string(agent.path("/etc/app/v")).unwrap_or_default()
}

async fn status(ctl: &TestController) -> pb::RolloutStatus {
    let mut admin = ctl.admin().await;
    admin
        .get_rollout(pb::GetRolloutRequest {})
        .await
        .expect("a rollout")
        .into_inner()
}

async fn wait_rollout(
    ctl: &TestController,
    what: &str,
    pred: impl Fn(&pb::RolloutStatus) -> bool,
) -> pb::RolloutStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(ctl).await;
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_disk(agent: &TestAgent, want: &str) {
    let deadline = Instant::now() + WAIT;
    while on_disk(agent) != want {
        assert!(
            Instant::now() < deadline,
            "{} never had {want:?} on disk",
            agent.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A controller on a manual clock with dev, qa and prod nodes on revision 1.
async fn fleet_on_one() -> (TestController, Clock, Vec<TestAgent>) {
    let clock = Clock::manual();
    let c = clock.clone();
    let ctl = TestController::start_with(move |cfg| cfg.clock = c).await;
    let mut agents = Vec::new();
    for env in ["dev", "qa", "prod"] {
        let mut a = TestAgent::enroll(&ctl, &format!("{env}-1"), &[("env", env)]).await;
        a.start(Duration::from_secs(300));
        agents.push(a);
    }
    ctl.apply(&spec("one", None, false)).await.unwrap();
    for a in &agents {
        wait_disk(a, "one").await;
    }
    (ctl, clock, agents)
}

/// Waits until the current wave is converged and its bake has started,
/// then moves the clock past the bake.
async fn bake(ctl: &TestController, clock: &Clock, wave: u32) {
    wait_rollout(ctl, "the bake to start", |s| {
        s.wave == wave && s.healthy_since_ms > 0
    })
    .await;
    clock.advance(Duration::from_secs(61));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_first_wave_halts_there_and_abort_returns_its_nodes() {
    let (ctl, clock, mut agents) = fleet_on_one().await;
    // Only dev-1 cannot write /etc/app/blocked: a directory is in the way.
    std::fs::create_dir_all(agents[0].path("/etc/app/blocked")).unwrap();
    let resp = ctl
        .apply(&spec("two", Some("/etc/app/blocked"), true))
        .await
        .unwrap();
    assert_eq!(resp.affected_nodes, ["dev-1"], "only the first wave moves");
    let s = wait_rollout(&ctl, "the failed wave to pause", |s| s.phase == "paused").await;
    assert_eq!(
        (s.wave, s.waves[0].failed.clone()),
        (1, vec!["dev-1".to_owned()])
    );
    assert!(s.reason.contains("more than max_failed 0"), "{}", s.reason);
    // However long it waits, the later waves never get revision 2.
    clock.advance(Duration::from_secs(3600));
    tokio::time::sleep(A_FEW_ROUNDS).await;
    assert_eq!(status(&ctl).await.phase, "paused");
    for a in &agents[1..] {
        assert_eq!(on_disk(a), "one", "{}", a.name);
        assert!(!a.path("/etc/app/blocked").exists(), "{}", a.name);
    }
    assert_eq!(on_disk(&agents[0]), "two");
    let (code, out) = ctl.cli(&["rollout", "status", "-o", "json"]).await;
    assert_eq!(code, ExitCode::SUCCESS);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["phase"], "paused");
    assert_eq!(doc["waves"][0]["failed"][0], "dev-1");
    assert_eq!(doc["waves"][1]["state"], "waiting");

    // Resuming does not pass a failed gate: it pauses again.
    let (code, out) = ctl.cli(&["rollout", "resume"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    wait_rollout(&ctl, "the failed wave to pause again", |s| {
        s.phase == "paused" && s.reason.contains("failed")
    })
    .await;

    let (code, out) = ctl.cli(&["rollout", "abort"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.contains("aborted"), "{out}");
    wait_disk(&agents[0], "one").await;
    let n = ctl.node("dev-1").await.unwrap();
    assert_eq!(n.desired_revision, 1);
    for a in &mut agents {
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_change_goes_wave_by_wave_with_bake_pause_and_restart() {
    let (mut ctl, clock, mut agents) = fleet_on_one().await;
    ctl.apply(&spec("two", None, true)).await.unwrap();
    wait_disk(&agents[0], "two").await;

    // Half the bake: the next wave waits.
    wait_rollout(&ctl, "the bake to start", |s| s.healthy_since_ms > 0).await;
    clock.advance(Duration::from_secs(30));
    tokio::time::sleep(A_FEW_ROUNDS).await;
    assert_eq!(
        (on_disk(&agents[1]), status(&ctl).await.wave),
        ("one".into(), 1)
    );

    // Paused, the bake's end starts nothing.
    let (code, out) = ctl.cli(&["rollout", "pause"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    clock.advance(Duration::from_secs(120));
    tokio::time::sleep(A_FEW_ROUNDS).await;
    assert_eq!(on_disk(&agents[1]), "one");

    // A restart resumes where it was: paused, at wave 1.
    ctl.restart().await;
    let s = status(&ctl).await;
    assert_eq!((s.phase.as_str(), s.wave), ("paused", 1));
    tokio::time::sleep(A_FEW_ROUNDS).await;
    assert_eq!(on_disk(&agents[1]), "one");

    // Resumed, wave 1 bakes again in full before wave 2 starts.
    let (code, out) = ctl.cli(&["rollout", "resume"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let s = wait_rollout(&ctl, "the bake to restart", |s| s.healthy_since_ms > 0).await;
    assert_eq!(s.phase, "running");
    clock.advance(Duration::from_secs(59));
    tokio::time::sleep(A_FEW_ROUNDS).await;
    assert_eq!(on_disk(&agents[1]), "one", "the bake is not over");
    clock.advance(Duration::from_secs(2));
    wait_disk(&agents[1], "two").await;
    assert_eq!(on_disk(&agents[2]), "one");

    bake(&ctl, &clock, 2).await;
    wait_disk(&agents[2], "two").await;
    bake(&ctl, &clock, 3).await;
    let s = wait_rollout(&ctl, "the rollout to finish", |s| s.phase == "done").await;
    assert!(s.waves.iter().all(|w| w.state == "passed"), "{s:?}");
    for a in &mut agents {
        assert_eq!(on_disk(a), "two");
        a.stop().await;
    }
}
