//! A bounded nemesis run against the replicated control plane: a 3-member
//! etcd cluster (each member in a network namespace of its own, on a bridge
//! the test creates) and three `ballast serve` processes on one prefix,
//! apply clients on random controllers and agents holding watches, while a
//! nemesis SIGKILLs, SIGSTOPs and partitions etcd members (the raft leader
//! first) and SIGKILLs and SIGSTOPs controllers in turn (one fault at a time,
//! each healed before the next).
//!
//! Beside it, a fenced ex-leader as processes: the controller holding the
//! leader key is frozen (SIGSTOP) past its lease, another controller takes
//! the lead, and once the old one resumes, its single-owner write (a sweep
//! of tokens it finds long expired) is refused: the tokens stay, and it
//! says it was deposed. (`store_etcd` covers the fence at the store level.)

use ballast_proto::pb;
use ballast_tests::etcd::{EtcdCluster, leader_holder};
use ballast_tests::{ControllerProcess, TestAgent, eventually};
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the nemesis runs.
const RUN: Duration = Duration::from_secs(30);
const CONTROLLERS: usize = 3;
const CLIENTS: usize = 3;
const AGENTS: usize = 4;
const ENROLLMENTS: usize = 50;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

fn spec(tag: &str) -> String {
    format!(
        "roles:\n  base:\n    directories: [{{path: /etc/app, mode: \"0755\"}}]\n    files: [{{path: /etc/app/tag, content: \"{tag}\\n\"}}]\ngroups:\n  all:\n    roles: [base]\n"
    )
}

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b) % n
}

/// An apply a controller acknowledged.
#[derive(Debug, Clone)]
struct Acked {
    client: usize,
    revision: u64,
    hash: String,
    message: String,
}

async fn apply_on(
    conn: &ballast_controller::cli::Conn,
    message: &str,
) -> Option<pb::ApplyResponse> {
    let call = async {
        let mut admin = ballast_controller::cli::connect(conn).await.ok()?;
        admin
            .apply(pb::ApplyRequest {
                sources: vec![pb::SourceFile {
                    name: "spec.yaml".into(),
                    content: spec(message),
                }],
                author: "nemesis".into(),
                message: message.into(),
                allow_prune: true,
            })
            .await
            .ok()
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .ok()
        .flatten()
        .map(|r| r.into_inner())
}

/// Applies unique content on a random controller at a time until `stop`.
async fn applier(
    conns: Vec<ballast_controller::cli::Conn>,
    client: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
) {
    let mut seq = 0;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let message = format!("client {client} apply {seq}");
        let conn = &conns[random_below(conns.len() as u64) as usize];
        match apply_on(conn, &message).await {
            Some(resp) => {
                assert!(resp.created, "unique content creates a revision: {message}");
                acked.lock().unwrap().push(Acked {
                    client,
                    revision: resp.revision,
                    hash: resp.hash,
                    message,
                });
            }
            // Refused or cut off: the outcome is unknown; go on elsewhere.
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// One fault, held for a while, then healed.
/// Cuts an etcd member from its peers (the leader when `leader`), holds,
/// heals, and waits until the cluster is whole again.
async fn partition(cluster: &EtcdCluster, leader: bool, hold: Duration) -> String {
    let i = match cluster.leader() {
        Some(l) if leader => l,
        _ => random_below(cluster.len() as u64) as usize,
    };
    cluster.partition(i);
    tokio::time::sleep(hold).await;
    cluster.heal(i);
    cluster.wait_healthy();
    format!(
        "etcd {i}{} partitioned",
        if leader { " (the leader)" } else { "" }
    )
}

async fn fault(
    cluster: &mut EtcdCluster,
    controllers: &mut [ControllerProcess],
    round: usize,
) -> String {
    let hold = Duration::from_millis(1000 + random_below(1500));
    let kill = random_below(2) == 0;
    if cluster.is_partitionable() && (round == 0 || random_below(3) == 0) {
        // The first fault cuts off the raft leader; later ones any member.
        partition(cluster, round == 0, hold).await
    } else if random_below(2) == 0 {
        let i = random_below(cluster.len() as u64) as usize;
        if kill {
            cluster.kill(i);
            tokio::time::sleep(hold).await;
            cluster.restart(i);
        } else {
            cluster.signal(i, Signal::SIGSTOP);
            tokio::time::sleep(hold).await;
            cluster.signal(i, Signal::SIGCONT);
        }
        format!("etcd {i} {}", if kill { "killed" } else { "stopped" })
    } else {
        let i = random_below(controllers.len() as u64) as usize;
        if kill {
            controllers[i].kill();
            tokio::time::sleep(hold).await;
            controllers[i].restart().await;
        } else {
            controllers[i].signal(Signal::SIGSTOP);
            tokio::time::sleep(hold).await;
            controllers[i].signal(Signal::SIGCONT);
        }
        format!("controller {i} {}", if kill { "killed" } else { "stopped" })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_keeps_its_promises_under_kills_and_stops() {
    let Some(mut cluster) = EtcdCluster::start_partitionable(3) else {
        return;
    };
    let url = cluster.url();
    let mut controllers = Vec::new();
    for _ in 0..CONTROLLERS {
        controllers.push(ControllerProcess::start_with_args("", &["--store", &url]).await);
    }
    let fingerprint = controllers[0].fingerprint.clone();
    for c in &controllers {
        assert_eq!(c.fingerprint, fingerprint, "every controller serves one CA");
    }
    let list = controllers
        .iter()
        .map(|c| c.controller())
        .collect::<Vec<_>>()
        .join(",");

    // One token, 50 concurrent enrollments spread over every controller:
    // exactly one succeeds.
    let token = controllers[0].token().await;
    let dirs: Vec<_> = (0..ENROLLMENTS)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let mut enrolling = tokio::task::JoinSet::new();
    for (i, dir) in dirs.iter().enumerate() {
        let (path, at) = (
            dir.path().to_owned(),
            controllers[i % CONTROLLERS].controller(),
        );
        let (token, fingerprint) = (token.clone(), fingerprint.clone());
        enrolling.spawn(async move {
            ballast_agent::client::enroll(&path, &at, &token, &fingerprint, &format!("race-{i}"))
                .await
                .is_ok()
        });
    }
    let enrolled = enrolling
        .join_all()
        .await
        .into_iter()
        .filter(|ok| *ok)
        .count();
    assert_eq!(
        enrolled, 1,
        "one token enrolls exactly one node across controllers"
    );

    // Agents that know every controller.
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let token = controllers[i % CONTROLLERS].token().await;
        let mut agent = TestAgent::enroll_at(&list, &fingerprint, &token, &format!("n{i}")).await;
        agent.start(Duration::from_secs(3600));
        agents.push(agent);
    }

    // The run: clients apply on random controllers while the nemesis works.
    let conns: Vec<_> = controllers.iter().map(|c| c.conn()).collect();
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| tokio::spawn(applier(conns.clone(), client, stop.clone(), acked.clone())))
        .collect();
    let started = Instant::now();
    let mut faults = Vec::new();
    while started.elapsed() < RUN {
        let round = faults.len();
        faults.push(fault(&mut cluster, &mut controllers, round).await);
        tokio::time::sleep(Duration::from_millis(300 + random_below(700))).await;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("apply client");
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} faults ({}); {} applies acknowledged",
        faults.len(),
        faults.join(", "),
        acked.len()
    );
    assert!(
        acked.len() >= 10,
        "too few applies were acknowledged to mean anything: {}",
        acked.len()
    );

    // Revision numbers never repeat, and never go backwards for one client.
    let mut by_number: BTreeMap<u64, &Acked> = BTreeMap::new();
    for a in &acked {
        if let Some(other) = by_number.insert(a.revision, a) {
            panic!(
                "revision {} acknowledged twice: {:?} and {:?}",
                a.revision, other.message, a.message
            );
        }
    }
    for client in 0..CLIENTS {
        let mine: Vec<u64> = acked
            .iter()
            .filter(|a| a.client == client)
            .map(|a| a.revision)
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "client {client}'s revisions went backwards: {mine:?}"
        );
    }

    // No acknowledged revision is lost or changed, as every controller sees it.
    for (i, c) in controllers.iter().enumerate() {
        let history = c
            .admin()
            .await
            .expect("admin connects")
            .history(pb::HistoryRequest { limit: u32::MAX })
            .await
            .expect("history")
            .into_inner()
            .revisions;
        let stored: BTreeMap<u64, &pb::Revision> = history.iter().map(|r| (r.number, r)).collect();
        for a in &acked {
            let r = stored.get(&a.revision).unwrap_or_else(|| {
                panic!(
                    "controller {i}: acknowledged revision {} ({}) is missing",
                    a.revision, a.message
                )
            });
            assert!(
                r.hash == a.hash && r.message == a.message,
                "controller {i}: revision {} changed: stored {:?}, acknowledged {:?}",
                a.revision,
                r.message,
                a.message
            );
        }
    }

    // Every agent ends on the last revision.
    let last = apply_on(&conns[1], "after the nemesis")
        .await
        .expect("apply after the nemesis");
    let on = |agent: &TestAgent, tag: &str| {
        std::fs::read_to_string(agent.path("/etc/app/tag"))
            .ok()
            .as_deref()
            == Some(&format!("{tag}\n"))
    };
    eventually(
        Duration::from_secs(60),
        &format!("every agent on revision {}", last.revision),
        || agents.iter().all(|a| on(a, "after the nemesis")),
    )
    .await;

    // A controller dies for good: its agents are on another within 15 s.
    controllers[0].kill();
    let killed = Instant::now();
    apply_on(&conns[2], "controller 0 is gone")
        .await
        .expect("apply with controller 0 gone");
    eventually(
        Duration::from_secs(15),
        "every agent gets the next revision within 15 s of the kill",
        || agents.iter().all(|a| on(a, "controller 0 is gone")),
    )
    .await;
    eprintln!(
        "after the kill, every agent had the new revision in {:?}",
        killed.elapsed()
    );
    for agent in &mut agents {
        agent.stop().await;
    }
}

/// A token record that expired long ago: any leader's sweep deletes it.
fn long_expired_token() -> Vec<u8> {
    br#"{"name":null,"labels":{},"created_at_ms":0,"expires_at_ms":1,"used_by":null}"#.to_vec()
}

async fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_ex_leaders_single_owner_write_is_refused_after_another_leads() {
    use ballast_controller::store::{Op, Store};
    let Some(cluster) = EtcdCluster::start(3) else {
        return;
    };
    let url = cluster.url();
    let store = cluster.store("/ballast/");
    // A runs its jobs every 2 s (the test hook), so it has a round soon
    // after it resumes; B keeps the default (a round when it takes the lead,
    // the next in 5 minutes).
    let a = ControllerProcess::start_with_env(
        "",
        &["--store", &url],
        &[("BALLAST_TEST_JOBS_EVERY_MS", "2000")],
    )
    .await;
    wait_for(Duration::from_secs(10), "A leads", || {
        leader_holder(&store).contains(&a.controller())
    })
    .await;
    let b = ControllerProcess::start_with_args("", &["--store", &url]).await;

    // A freezes past its lease (10 s): B takes the lead, and its first round
    // sweeps a long-expired token.
    a.signal(Signal::SIGSTOP);
    let canary = "tokens/canary";
    assert!(
        store
            .txn(&[], &[Op::Put(canary.into(), long_expired_token())])
            .unwrap()
    );
    wait_for(
        Duration::from_secs(30),
        "B leads once A's lease ends",
        || leader_holder(&store).contains(&b.controller()),
    )
    .await;
    wait_for(Duration::from_secs(10), "B's first round sweeps", || {
        store.get(canary).unwrap().is_none()
    })
    .await;

    // Tokens only A will see before B's next round: A resumes, still
    // thinking itself leader, and its round tries to sweep them.
    let planted: Vec<String> = (0..5).map(|i| format!("tokens/fenced-{i}")).collect();
    let ops: Vec<Op> = planted
        .iter()
        .map(|k| Op::Put(k.clone(), long_expired_token()))
        .collect();
    assert!(store.txn(&[], &ops).unwrap());
    a.signal(Signal::SIGCONT);
    wait_for(
        Duration::from_secs(15),
        "A says its fenced writes were refused",
        || a.log().contains("deposed: the leader key has moved on"),
    )
    .await;
    for k in &planted {
        assert!(
            store.get(k).unwrap().is_some(),
            "the deposed leader deleted {k}; A's log:\n{}",
            a.log()
        );
    }
    assert!(
        leader_holder(&store).contains(&b.controller()),
        "B still leads"
    );
    assert!(
        !a.log().contains("single-owner jobs failed"),
        "A's round after resuming ran to the fence; A's log:\n{}",
        a.log()
    );
}
