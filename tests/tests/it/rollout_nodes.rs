//! A rollout across three real Debian nodes (systemd-nspawn, systemd as PID
//! 1), labelled env=dev, env=qa and env=prod, each running the real
//! `ballast-agent` daemon as a systemd unit against an in-process
//! controller. A good change goes wave by wave, each later node's file
//! written only once the wave before it baked; a bad change (a package no
//! apt source has) fails on dev, the rollout pauses, qa and prod never
//! receive it (their disks and their agents' cached desired revision), and
//! `ballast rollout abort` returns dev to the previous revision on its disk.

use ballast_proto::pb;
use ballast_tests::TestController;
use ballast_tests::node::{self, TestNode};
use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};

const BAKE: Duration = Duration::from_secs(4);
const ENVS: [&str; 3] = ["dev", "qa", "prod"];
const STATE_DIR: &str = "/var/lib/ballast-agent";
const WAIT: Duration = Duration::from_secs(30);

fn spec(version: &str, package: Option<&str>, policy: bool) -> String {
    let packages = package
        .map(|p| format!("    packages: [{{name: {p}}}]\n"))
        .unwrap_or_default();
    let rollout = if policy {
        format!(
            "rollout:\n  waves: [{{match: {{env: dev}}}}, {{match: {{env: qa}}}}, {{match: {{env: prod}}}}]\n  bake: {}s\n",
            BAKE.as_secs()
        )
    } else {
        String::new()
    };
    format!(
        "roles:\n  app:\n    directories: [{{path: /etc/app, mode: \"0755\"}}]\n    files: [{{path: /etc/app/version, content: \"{version}\\n\"}}]\n{packages}groups:\n  all: {{roles: [app]}}\n{rollout}"
    )
}

/// The managed file on the node's disk, and when it was written (ms).
fn on_disk(node: &TestNode) -> Option<(String, u64)> {
    let path = node.path("/etc/app/version");
    let text = std::fs::read_to_string(&path).ok()?;
    let at = std::fs::metadata(&path).ok()?.modified().ok()?;
    let ms = at.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64;
    Some((text.trim().to_owned(), ms))
}

fn version(node: &TestNode) -> String {
    on_disk(node).map(|(v, _)| v).unwrap_or_default()
}

/// The revision the node's agent has cached as desired (on the node's disk).
fn cached_revision(node: &TestNode) -> u64 {
    let text = std::fs::read_to_string(node.path(&format!("{STATE_DIR}/desired.json")))
        .unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|d| d["revision"].as_u64())
        .unwrap_or(0)
}

fn agent_log(node: &TestNode) -> String {
    node.sh("journalctl -u ballast-agent --no-pager | tail -20")
        .unwrap_or_else(|e| format!("{e:#}"))
}

/// Enrolls the node with a token for `env` and starts the agent daemon in it
/// as a transient systemd unit.
async fn enroll(ctl: &TestController, node: &TestNode, env: &str) {
    let token = ctl.token(&[("env", env)]).await;
    let token_file = node.path("/root/token");
    std::fs::write(&token_file, token).unwrap();
    node.sh(&format!(
        "ballast-agent enroll --controller {} --ca-fingerprint {} --name {} --token-file /root/token --state-dir {STATE_DIR} && rm /root/token",
        ctl.controller(),
        ctl.fingerprint,
        node.name
    ))
    .unwrap_or_else(|e| panic!("enroll {}: {e:#}", node.name));
    node.sh(&format!(
        "systemd-run --unit ballast-agent --setenv BALLAST_LOG=info /usr/local/bin/ballast-agent run --state-dir {STATE_DIR} --interval 1h"
    ))
    .unwrap_or_else(|e| panic!("start the agent on {}: {e:#}", node.name));
}

async fn rollout(ctl: &TestController) -> pb::RolloutStatus {
    ctl.admin()
        .await
        .get_rollout(pb::GetRolloutRequest {})
        .await
        .expect("a rollout")
        .into_inner()
}

async fn wait_version(nodes: &[TestNode], want: &str) {
    let deadline = Instant::now() + WAIT;
    for n in nodes {
        while version(n) != want {
            assert!(
                Instant::now() < deadline,
                "{} never had {want} on disk; its agent:\n{}",
                n.name,
                agent_log(n)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_across_real_nodes_bakes_each_wave_and_a_bad_change_stops_at_dev() {
    if !node::enabled() {
        return;
    }
    let started = Instant::now();
    let boots: Vec<_> = ENVS
        .iter()
        .map(|env| {
            let name = format!("roll-{env}");
            tokio::task::spawn_blocking(move || TestNode::boot(&name).expect("node boots"))
        })
        .collect();
    let mut nodes = Vec::new();
    for b in boots {
        nodes.push(b.await.unwrap());
    }
    let ctl = TestController::start().await;
    for (node, env) in nodes.iter().zip(ENVS) {
        enroll(&ctl, node, env).await;
    }
    ctl.apply(&spec("v1", None, false)).await.unwrap();
    wait_version(&nodes, "v1").await;
    eprintln!("three nodes on v1 after {:?}", started.elapsed());

    // A good change, wave by wave.
    let applied = ctl.apply(&spec("v2", None, true)).await.unwrap();
    assert_eq!(
        applied.affected_nodes,
        ["roll-dev"],
        "only dev moves at apply"
    );
    let deadline = Instant::now() + WAIT + 3 * BAKE;
    loop {
        // The disks first, then the rollout (which only moves forward):
        // while a wave bakes, the later waves are on v1.
        let seen: Vec<(String, u64)> = nodes
            .iter()
            .map(|n| (version(n), cached_revision(n)))
            .collect();
        let s = rollout(&ctl).await;
        let later = if s.phase == "done" {
            3
        } else {
            s.wave as usize
        };
        for (n, seen) in nodes.iter().zip(&seen).skip(later) {
            assert_eq!(
                seen,
                &("v1".to_owned(), 1),
                "{} moved before wave {} passed: {s:?}",
                n.name,
                s.wave
            );
        }
        if s.phase == "done" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout did not finish: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_version(&nodes, "v2").await;
    let written: Vec<u64> = nodes.iter().map(|n| on_disk(n).unwrap().1).collect();
    let bake = BAKE.as_millis() as u64;
    for w in 1..3 {
        assert!(
            written[w] >= written[w - 1] + bake,
            "{} wrote v2 {} ms after {}, within its bake of {bake} ms",
            nodes[w].name,
            written[w].saturating_sub(written[w - 1]),
            nodes[w - 1].name
        );
    }
    eprintln!(
        "v2 reached dev, qa, prod {} and {} ms apart (bake {bake} ms)",
        written[1] - written[0],
        written[2] - written[1]
    );

    // A bad change: dev cannot install a package no source has.
    let applied = ctl
        .apply(&spec("v3", Some("ballast-no-such-package"), true))
        .await
        .unwrap();
    assert_eq!(applied.affected_nodes, ["roll-dev"]);
    let deadline = Instant::now() + WAIT;
    let s = loop {
        let s = rollout(&ctl).await;
        if s.phase == "paused" {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout did not pause: {s:?}; dev's agent:\n{}",
            agent_log(&nodes[0])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (s.wave, s.waves[0].failed.clone()),
        (1, vec!["roll-dev".to_owned()])
    );
    assert!(s.reason.contains("more than max_failed 0"), "{}", s.reason);
    assert_eq!(
        (version(&nodes[0]), cached_revision(&nodes[0])),
        ("v3".into(), 3)
    );
    // Twice the bake later, qa and prod have still not received it.
    tokio::time::sleep(2 * BAKE).await;
    assert_eq!(rollout(&ctl).await.phase, "paused");
    for n in &nodes[1..] {
        assert_eq!(
            (version(n), cached_revision(n)),
            ("v2".to_owned(), 2),
            "{} received the bad change",
            n.name
        );
    }

    // Abort: dev goes back to revision 2, on its disk.
    let (code, out) = ctl.cli(&["rollout", "abort"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.contains("aborted"), "{out}");
    wait_version(&nodes[..1], "v2").await;
    let deadline = Instant::now() + WAIT;
    while cached_revision(&nodes[0]) != 2 {
        assert!(
            Instant::now() < deadline,
            "dev's agent did not cache revision 2"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        nodes[0]
            .sh("dpkg-query -W ballast-no-such-package")
            .is_err()
    );
    for n in &nodes[1..] {
        assert_eq!((version(n), cached_revision(n)), ("v2".to_owned(), 2));
    }
    eprintln!("done in {:?}", started.elapsed());
    // The three halt side by side.
    let halts: Vec<_> = nodes
        .into_iter()
        .map(|n| tokio::task::spawn_blocking(move || drop(n)))
        .collect();
    for h in halts {
        h.await.unwrap();
    }
}
