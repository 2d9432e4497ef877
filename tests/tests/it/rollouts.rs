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
        // No rollout yet (an apply still on its way) reads as the default.
        let s = match ctl
            .admin()
            .await
            .get_rollout(pb::GetRolloutRequest {})
            .await
        {
            Ok(s) => s.into_inner(),
            Err(e) if e.code() == tonic::Code::NotFound => Default::default(),
            Err(e) => panic!("rollout status: {e}"),
        };
        if s.revision > 0 && pred(&s) {
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

/// The status of one policy of the current rollout.
fn policy<'a>(s: &'a pb::RolloutStatus, name: &str) -> &'a pb::RolloutPolicyStatus {
    s.policies
        .iter()
        .find(|p| p.policy == name)
        .unwrap_or_else(|| panic!("no policy {name} in {s:?}"))
}

/// A spec whose node group db paces its nodes by its own policy (half,
/// then the rest, baking 10 minutes) while the top-level policy paces
/// the others (dev, then prod, baking 1 minute).
fn two_policies(content: &str, extra_file: Option<&str>) -> String {
    let extra = extra_file
        .map(|p| format!(", {{path: {p}, content: x}}"))
        .unwrap_or_default();
    format!(
        "roles:\n  app:\n    directories: [{{path: /etc/app}}]\n    files: [{{path: /etc/app/v, content: \"{content}\"}}{extra}]\ngroups:\n  all: {{roles: [app]}}\n  db:\n    match: {{role: db}}\n    roles: [app]\n    rollout: {{waves: [{{percent: 50}}, {{percent: 100}}], bake: 10m}}\nrollout:\n  waves: [{{match: {{env: dev}}}}, {{match: {{env: prod}}}}]\n  bake: 1m\n"
    )
}

/// web-dev and web-prod under the top-level policy, db-1 and db-2 under
/// node group db's, all on revision 1.
async fn two_policy_fleet() -> (TestController, Clock, Vec<TestAgent>) {
    let clock = Clock::manual();
    let c = clock.clone();
    let ctl = TestController::start_with(move |cfg| cfg.clock = c).await;
    let mut agents = Vec::new();
    for (name, labels) in [
        ("web-dev", [("role", "web"), ("env", "dev")]),
        ("web-prod", [("role", "web"), ("env", "prod")]),
        ("db-1", [("role", "db"), ("env", "prod")]),
        ("db-2", [("role", "db"), ("env", "prod")]),
    ] {
        let mut a = TestAgent::enroll(&ctl, name, &labels).await;
        a.start(Duration::from_secs(300));
        agents.push(a);
    }
    ctl.apply(&spec("one", None, false)).await.unwrap();
    for a in &agents {
        wait_disk(a, "one").await;
    }
    (ctl, clock, agents)
}

/// A failure beyond one policy's budget pauses the whole rollout: the
/// other policy's next wave never starts either, however long it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_under_one_policy_pauses_every_policy() {
    let (ctl, clock, mut agents) = two_policy_fleet().await;
    // Only db-1 cannot write /etc/app/blocked: a directory is in the way.
    std::fs::create_dir_all(agents[2].path("/etc/app/blocked")).unwrap();
    ctl.apply(&two_policies("two", Some("/etc/app/blocked")))
        .await
        .unwrap();
    let s = wait_rollout(&ctl, "the failed wave to pause", |s| s.phase == "paused").await;
    assert!(s.gate_failed, "{s:?}");
    assert_eq!(
        s.reason,
        "groups.db.rollout wave 1 failed on 1 node(s), more than max_failed 0: db-1"
    );
    wait_disk(&agents[0], "two").await;
    clock.advance(Duration::from_secs(3600));
    tokio::time::sleep(A_FEW_ROUNDS).await;
    let s = status(&ctl).await;
    assert_eq!(
        (s.phase.as_str(), policy(&s, "rollout").wave),
        ("paused", 1)
    );
    for a in [&agents[1], &agents[3]] {
        assert_eq!(on_disk(a), "one", "{}", a.name);
        assert!(!a.path("/etc/app/blocked").exists(), "{}", a.name);
    }
    for a in &mut agents {
        a.stop().await;
    }
}

/// A node group's own policy overrides the top-level one for its nodes:
/// each policy's waves move at their own bake, checked on the agents'
/// disks; `ballast nodes` and `node show` say which rollout, policy and
/// wave hold a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_with_their_own_policies_progress_as_each_says() {
    let (ctl, clock, mut agents) = two_policy_fleet().await;
    let disk = |name: &str| on_disk(agents.iter().find(|a| a.name == name).unwrap());

    let resp = ctl.apply(&two_policies("two", None)).await.unwrap();
    assert_eq!(
        resp.affected_nodes,
        ["db-1", "web-dev"],
        "the first wave of each policy"
    );
    let s = status(&ctl).await;
    let names: Vec<&str> = s.policies.iter().map(|p| p.policy.as_str()).collect();
    assert_eq!(names, ["rollout", "groups.db.rollout"]);
    assert_eq!(policy(&s, "groups.db.rollout").waves[1].nodes, ["db-2"]);

    // Both first waves converge and bake; a minute passes the top-level
    // gate only.
    wait_rollout(&ctl, "both bakes to start", |s| {
        s.policies.iter().all(|p| p.healthy_since_ms > 0)
    })
    .await;
    clock.advance(Duration::from_secs(61));
    wait_disk(&agents[1], "two").await;
    tokio::time::sleep(A_FEW_ROUNDS).await;
    assert_eq!(disk("db-2"), "one", "db's bake is 10 minutes");

    // Where each node stands, and why.
    let (code, out) = ctl.cli(&["nodes", "-o", "json"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let node = |name: &str| {
        doc.as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap()["rollout"]
            .clone()
    };
    let db2 = node("db-2");
    assert_eq!(
        (
            &db2["state"],
            &db2["policy"],
            &db2["wave"],
            &db2["current_wave"]
        ),
        (
            &"waiting".into(),
            &"groups.db.rollout".into(),
            &2.into(),
            &1.into()
        )
    );
    assert_eq!(node("db-1")["state"], "current");
    assert_eq!(node("web-prod")["state"], "current");
    assert_eq!(node("web-dev")["state"], "passed");
    let (code, out) = ctl.cli(&["node", "show", "db-2"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(
        out.contains("revision:  desired 1, applied 1\nrollout:   desired 1: held by the rollout of 2 in wave 2/2 of policy groups.db.rollout: starts when wave 1 passes (now at wave 1)"),
        "{out}"
    );
    let (_, out) = ctl.cli(&["nodes"]).await;
    let line = out.lines().find(|l| l.starts_with("db-2 ")).unwrap();
    assert!(line.contains("2 w2/2 held"), "{out}");

    // Ten minutes: db's first wave passes too; each policy ends on its own.
    wait_rollout(&ctl, "the prod wave to bake", |s| {
        policy(s, "rollout").wave == 2 && policy(s, "rollout").healthy_since_ms > 0
    })
    .await;
    clock.advance(Duration::from_secs(540));
    wait_disk(&agents[3], "two").await;
    let s = wait_rollout(&ctl, "the top-level policy to finish", |s| {
        policy(s, "rollout").done
    })
    .await;
    assert_eq!(s.phase, "running", "db's last wave still bakes");
    wait_rollout(&ctl, "db's last bake to start", |s| {
        policy(s, "groups.db.rollout").healthy_since_ms > 0
    })
    .await;
    clock.advance(Duration::from_secs(601));
    wait_rollout(&ctl, "the rollout to finish", |s| s.phase == "done").await;
    for a in &mut agents {
        assert_eq!(on_disk(a), "two", "{}", a.name);
        a.stop().await;
    }
}

/// `apply --wait` without a terminal prints the rollout's progress as
/// plain lines, each only when it changed, and ends 0 when the rollout is
/// done; on a failing first wave it ends 1 with the node and its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_wait_follows_the_rollout_and_says_why_it_stopped() {
    let (ctl, clock, mut agents) = fleet_on_one().await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, spec("two", None, true)).unwrap();
    let args = [
        "apply",
        "-f",
        good.to_str().unwrap(),
        "--wait",
        "--timeout",
        "60s",
    ];
    let ((code, out), ()) = tokio::join!(ctl.cli(&args), async {
        for wave in 1..=3 {
            wait_rollout(&ctl, "the bake to start", |s| {
                s.wave == wave && s.healthy_since_ms > 0
            })
            .await;
            // Long enough for `--wait`, polling every 250 ms, to show it.
            tokio::time::sleep(A_FEW_ROUNDS).await;
            clock.advance(Duration::from_secs(61));
        }
    });
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(!out.contains('\x1b'), "no redraw without a terminal: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.windows(2).all(|w| w[0] != w[1]),
        "a line is printed only when it changed: {out}"
    );
    assert!(out.starts_with("revision 2 created"), "{out}");
    for want in [
        "rollout of revision 2 from 1: running",
        "  rollout wave 1/3: 1 current, baking: 1/1 converged, 0 failed, 0 pending | 2 waiting (1 node(s)) | 3 waiting (1 node(s))",
        "  rollout wave 3/3: 1 passed: 1/1 converged, 0 failed, 0 pending | 2 passed: 1/1 converged, 0 failed, 0 pending | 3 current, baking: 1/1 converged, 0 failed, 0 pending",
        "rollout of revision 2 from 1: done",
        "rollout of revision 2 done",
    ] {
        assert!(lines.contains(&want), "missing {want:?} in:\n{out}");
    }
    for a in &agents {
        assert_eq!(on_disk(a), "two", "{}", a.name);
    }

    // Only dev-1 cannot write /etc/app/blocked: a directory is in the way.
    std::fs::create_dir_all(agents[0].path("/etc/app/blocked")).unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, spec("three", Some("/etc/app/blocked"), true)).unwrap();
    let (code, out) = ctl
        .cli(&[
            "apply",
            "-f",
            bad.to_str().unwrap(),
            "--wait",
            "--timeout",
            "60s",
        ])
        .await;
    assert_eq!(code, ExitCode::FAILURE, "{out}");
    let tail: Vec<&str> = out.lines().rev().take(3).collect();
    assert_eq!(
        tail[2],
        "rollout of revision 3 stopped: rollout wave 1 failed on 1 node(s), more than max_failed 0: dev-1",
        "{out}"
    );
    assert_eq!(tail[1], "node dev-1 failed:", "{out}");
    assert!(tail[0].starts_with("  file[/etc/app/blocked]: "), "{out}");
    for a in &agents[1..] {
        assert_eq!(on_disk(a), "two", "{}", a.name);
    }

    // Aborted while it waits: it says so and fails; the rollout in flight
    // kept its base, revision 2. (The fix drops the blocked file: --prune.)
    let fix = dir.path().join("fix.yaml");
    std::fs::write(&fix, spec("four", None, true)).unwrap();
    let args = [
        "apply",
        "-f",
        fix.to_str().unwrap(),
        "--prune",
        "--wait",
        "--timeout",
        "60s",
    ];
    let ((code, out), ()) = tokio::join!(ctl.cli(&args), async {
        wait_rollout(&ctl, "revision 4 to roll", |s| s.revision == 4).await;
        let (code, out) = ctl.cli(&["rollout", "abort"]).await;
        assert_eq!(code, ExitCode::SUCCESS, "{out}");
    });
    assert_eq!(code, ExitCode::FAILURE, "{out}");
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("rollout of revision 4 aborted (aborted by ")
            && last.ends_with("); moved nodes are back on revision 2"),
        "{out}"
    );
    for a in &mut agents {
        a.stop().await;
    }
}
