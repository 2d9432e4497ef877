//! A leader change in the middle of a rollout: two `ballast serve`
//! processes on a real 3-member etcd, six agents (temp roots) in three
//! waves, the leader SIGKILLed during wave 1's bake. The other controller
//! takes the lead and resumes at the same gate: no node of a later wave
//! receives the revision before the wave before it has baked for the full
//! bake, measured on the agents' disks from when that wave converged; the
//! rollout completes, and the dead controller's agents fail over.

use ballast_agent::daemon::controller_order;
use ballast_proto::pb;
use ballast_tests::etcd::{EtcdCluster, leader_holder};
use ballast_tests::{ControllerProcess, TestAgent};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longer than a failover (the leader key's 10 s lease, tried for every
/// 5 s), so the new leader takes over while wave 1 is still baking.
const BAKE: Duration = Duration::from_secs(20);
const WAVES: [&str; 3] = ["dev", "qa", "prod"];

fn spec(content: &str, policy: bool) -> String {
    let rollout = if policy {
        format!(
            "rollout:\n  waves: [{{match: {{env: dev}}}}, {{match: {{env: qa}}}}, {{match: {{env: prod}}}}]\n  bake: {}s\n",
            BAKE.as_secs()
        )
    } else {
        String::new()
    };
    format!(
        "roles:\n  app:\n    directories: [{{path: /etc/app}}]\n    files: [{{path: /etc/app/v, content: \"{content}\"}}]\ngroups:\n  all: {{roles: [app]}}\n{rollout}"
    )
}

fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The revision an agent has cached as desired, and when it was cached.
fn cached(agent: &TestAgent) -> Option<(u64, u64)> {
    let path = agent.state.path().join("desired.json");
    let text = std::fs::read_to_string(&path).ok()?;
    let doc: serde_json::Value = serde_json::from_str(&text).ok()?;
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    Some((doc["revision"].as_u64()?, ms_of(modified)))
}

/// When the agent wrote `content` to its managed file, if it has.
fn written(agent: &TestAgent, content: &str) -> Option<u64> {
    let path = agent.path("/etc/app/v");
    if std::fs::read_to_string(&path).ok()? != content {
        return None;
    }
    Some(ms_of(std::fs::metadata(&path).ok()?.modified().ok()?))
}

async fn rollout(ctl: &ControllerProcess) -> Option<pb::RolloutStatus> {
    let mut admin = ctl.admin().await.ok()?;
    Some(
        admin
            .get_rollout(pb::GetRolloutRequest {})
            .await
            .ok()?
            .into_inner(),
    )
}

async fn token(ctl: &ControllerProcess, env: &str) -> String {
    ctl.labelled_token(&[("env", env)]).await
}

/// A node name of `env` that tries `first` first among `list`.
fn name_preferring(env: &str, list: &[String], first: &str, taken: &[String]) -> String {
    (0..1000)
        .map(|i| format!("{env}-{i}"))
        .find(|n| !taken.contains(n) && controller_order(list.to_vec(), n)[0] == first)
        .expect("some name hashes to each controller")
}

async fn wait_for(timeout: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_rollout_resumes_at_the_same_gate_without_shortening_the_bake() {
    let Some(cluster) = EtcdCluster::start(3) else {
        return;
    };
    let url = cluster.url();
    let store = cluster.store("/ballast/");
    // A publishes no liveness summary within the test, so the runs it takes
    // reach B only through the store: the window every controller that dies
    // leaves (up to one period, 5 s by default), made certain.
    let a = ControllerProcess::start_with_args("liveness_period: 300s", &["--store", &url]).await;
    wait_for(Duration::from_secs(10), "A leads", async || {
        leader_holder(&store).contains(&a.controller())
    })
    .await;
    let b = ControllerProcess::start_with_args("", &["--store", &url]).await;
    let list = vec![a.controller(), b.controller()];

    // Two nodes per wave: one held by the leader A, one by B.
    let mut agents: Vec<TestAgent> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for env in WAVES {
        for first in &list {
            let name = name_preferring(env, &list, first, &names);
            let t = token(&a, env).await;
            let mut agent = TestAgent::enroll_at(&list.join(","), &a.fingerprint, &t, &name).await;
            agent.start(Duration::from_secs(3600));
            names.push(name);
            agents.push(agent);
        }
    }
    a.apply(&spec("one", false))
        .await
        .expect("apply revision 1");
    wait_for(Duration::from_secs(20), "every agent on one", async || {
        agents.iter().all(|g| written(g, "one").is_some())
    })
    .await;

    let applied = a.apply(&spec("two", true)).await.expect("apply revision 2");
    assert_eq!(applied.revision, 2);
    let mut affected = applied.affected_nodes.clone();
    affected.sort();
    let mut wave1 = names[..2].to_vec();
    wave1.sort();
    assert_eq!(affected, wave1, "only wave 1 moves at apply");

    // Wave 1 converges and starts to bake on A.
    wait_for(
        Duration::from_secs(20),
        "wave 1's bake starts",
        async || {
            rollout(&a)
                .await
                .is_some_and(|s| s.wave == 1 && s.healthy_since_ms > 0)
        },
    )
    .await;
    let baking = rollout(&a).await.unwrap();
    let healthy_since = baking.healthy_since_ms;
    let wave1_done = agents[..2]
        .iter()
        .map(|g| written(g, "two").expect("wave 1 has the new file"))
        .max()
        .unwrap();

    // The leader dies a second into the bake.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut a = a;
    a.kill();
    let killed = Instant::now();
    for g in &agents[2..] {
        assert_eq!(cached(g).map(|c| c.0), Some(1), "{} moved early", g.name);
    }

    // B takes the lead; the rollout goes on from the stored record. Watch
    // every later node's cache and disk until the rollout is done.
    wait_for(
        Duration::from_secs(30),
        "B leads once A's lease ends",
        async || leader_holder(&store).contains(&b.controller()),
    )
    .await;
    eprintln!("B leads {:?} after A's kill", killed.elapsed());
    let deadline = Instant::now() + 3 * BAKE + Duration::from_secs(40);
    loop {
        let s = rollout(&b).await;
        if s.as_ref().is_some_and(|s| s.phase == "done") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout did not finish on B; B's rollout: {s:?}\nB's log:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("rollout done {:?} after A's kill", killed.elapsed());

    // Each later wave received revision 2 (its cache) only after the wave
    // before it converged (the new file on its disks) and baked in full.
    let bake = BAKE.as_millis() as u64;
    let mut converged = wave1_done;
    for (w, env) in WAVES.iter().enumerate().skip(1) {
        let wave = &agents[2 * w..2 * w + 2];
        let received = wave
            .iter()
            .map(|g| {
                let (rev, at) = cached(g).expect("a cached state");
                assert_eq!(rev, 2, "{} is on revision 2", g.name);
                at
            })
            .min()
            .unwrap();
        assert!(
            received >= converged + bake,
            "wave {env} received revision 2 {} ms after the wave before converged, before its bake of {bake} ms",
            received.saturating_sub(converged)
        );
        if w == 1 {
            assert!(
                received >= healthy_since + bake,
                "the bake A started at {healthy_since} was shortened: qa received at {received}"
            );
        }
        converged = wave
            .iter()
            .map(|g| written(g, "two").expect("the new file"))
            .max()
            .unwrap();
    }

    // Every agent converged, the dead leader's through B.
    let mut admin = b.admin().await.expect("B answers");
    let nodes = admin
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .nodes;
    for name in &names {
        let n = nodes.iter().find(|n| &n.name == name).expect("listed");
        assert_eq!(
            (n.applied_revision, n.status()),
            (2, pb::NodeStatus::Converged),
            "{name}"
        );
    }
    for g in &mut agents {
        g.stop().await;
    }
}
