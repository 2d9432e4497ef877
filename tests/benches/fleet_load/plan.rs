//! `fleet_load --plan`: `ballast plan` over N simulated agents. Each agent
//! is a real mutual-TLS client holding a watch and a plan stream on one
//! connection, and answers every plan with a dry run of its simulated
//! state (the document checked as the agent checks it, then each resource
//! compared with what the simulated node has): every tenth node has its
//! file edited by hand, so the answer has two groups. With `--etcd`, three
//! controllers on a real 3-member etcd, the agents spread over them, and
//! the plan asked of one: the others serve theirs through the store.
//!
//! Prints the time from asking the plan to its grouped answer (3 plans).
//!
//!     cargo bench -p ballast-tests --bench fleet_load -- --plan 10000
//!     cargo bench -p ballast-tests --bench fleet_load -- --plan --etcd 10000

use super::{Controller, ms, percentile, rss_kib, spec};
use ballast_proto::enums::{Outcome, Trigger};
use ballast_proto::pb;
use ballast_proto::spec::{NodeState, Resource};
use ballast_tests::etcd::EtcdCluster;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

/// Simulated agents per worker process (each holds a connection).
const SHARD: usize = 8_000;
/// How long one plan may wait for its answers.
const PLAN_TIMEOUT_MS: u32 = 120_000;

/// What simulated node `i` has in its managed file: the revision's
/// content, edited by hand on every tenth node.
fn motd(i: usize) -> String {
    if i.is_multiple_of(10) {
        "version 1, edited by hand\n".into()
    } else {
        "version 1\n".into()
    }
}

/// A dry run of plan `req` against simulated node `i`'s state.
fn dry_run(i: usize, name: &str, req: pb::PlanRequest) -> pb::PlanResultRequest {
    let refuse = |error: String| pb::PlanResultRequest {
        id: req.id.clone(),
        report: None,
        error,
    };
    if ballast_proto::sha256_tag(&req.document) != req.hash {
        return refuse("plan document does not match its hash".into());
    }
    let state = match NodeState::from_document(&req.document) {
        Ok(s) => s,
        Err(e) => return refuse(format!("plan document is invalid: {e}")),
    };
    if state.node.name != name {
        return refuse(format!("plan document is for node {:?}", state.node.name));
    }
    let have = motd(i);
    let resources = state
        .resources
        .iter()
        .map(|r| {
            let changes = match r {
                Resource::File(f) => match &f.content {
                    Some(want) if *want != have => vec![format!(
                        "replace content ({} -> {} bytes)",
                        have.len(),
                        want.len()
                    )],
                    _ => vec![],
                },
                _ => vec![],
            };
            pb::ResourceOutcome {
                id: r.id(),
                outcome: i32::from(if changes.is_empty() {
                    Outcome::Unchanged
                } else {
                    Outcome::Changed
                }),
                changes,
                ..Default::default()
            }
        })
        .collect();
    pb::PlanResultRequest {
        id: req.id.clone(),
        report: Some(pb::RunReport {
            state_hash: req.hash,
            noop: true,
            trigger: i32::from(Trigger::Change),
            resources,
            ..Default::default()
        }),
        error: String::new(),
    }
}

/// Worker mode (`--plan-sim DIR FROM TO ADDRS`): agents FROM..TO enrolled in
/// DIR/agent-I, agent I on controller I mod the number of ADDRS; prints one
/// line per agent once its watch and plan stream are open. Ends when the
/// parent goes.
pub fn sim(args: &[String]) {
    super::raise_nofile();
    let (dir, nodes, addrs) = super::sim_args(args);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let connecting = Arc::new(tokio::sync::Semaphore::new(32));
        for i in nodes.clone() {
            let (tx, addrs, connecting) = (tx.clone(), addrs.clone(), connecting.clone());
            let state = dir.join(format!("agent-{i}"));
            tokio::spawn(async move {
                let permit = connecting.acquire().await.unwrap();
                let enrolled = ballast_agent::client::Enrolled::load(&state).unwrap();
                let addr = &addrs[i % addrs.len()];
                let channel = enrolled.channel(Some(addr)).await.unwrap();
                let mut client = ballast_agent::client::agent_client(channel);
                let mut watch = client
                    .watch(pb::WatchRequest::default())
                    .await
                    .unwrap()
                    .into_inner();
                let mut plans = client
                    .plans(pb::PlansRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                drop(permit);
                let _ = watch.next().await;
                tokio::spawn(async move { while let Some(Ok(_)) = watch.next().await {} });
                if tx.send(i).is_err() {
                    return;
                }
                let name = format!("sim-{i:05}");
                while let Some(Ok(req)) = plans.next().await {
                    let result = dry_run(i, &name, req);
                    let _ = client.plan_result(result).await;
                }
            });
        }
        drop(tx);
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        while let Some(i) = rx.recv().await {
            use std::io::Write;
            if writeln!(out, "{i}").is_err() {
                return;
            }
            if rx.is_empty() && out.flush().is_err() {
                return;
            }
        }
        // Keep answering plans until the parent goes.
        std::future::pending::<()>().await;
    });
}

async fn plan(conn: &ballast_controller::cli::Conn) -> (Duration, pb::PlanResponse) {
    let mut admin = ballast_controller::cli::connect(conn).await.unwrap();
    let asked = Instant::now();
    let resp = admin
        .plan(pb::PlanNodesRequest {
            sources: vec![pb::SourceFile {
                name: "bench.yaml".into(),
                content: spec(1),
            }],
            r#where: Vec::new(),
            timeout_ms: PLAN_TIMEOUT_MS,
        })
        .await
        .unwrap()
        .into_inner();
    (asked.elapsed(), resp)
}

pub async fn run(n: usize, etcd: bool) {
    let cluster = if etcd {
        let Some(c) = EtcdCluster::start(3) else {
            println!("fleet_load --plan --etcd: skipped, etcd is not installed");
            return;
        };
        Some(c)
    } else {
        None
    };
    let url = cluster.as_ref().map(|c| c.url());
    let dir = tempfile::tempdir().unwrap();
    let mut controllers: Vec<Controller> = Vec::new();
    for c in 0..if etcd { 3 } else { 1 } {
        let at = dir.path().join(format!("c{c}"));
        controllers.push(super::start_controller(&at, url.as_deref()).await);
    }
    let addrs: Vec<String> = controllers.iter().map(|c| c.addr.clone()).collect();
    let fingerprint = controllers[0].fingerprint.clone();
    super::etcd_mode::apply(&controllers[0].conn, 1).await;

    // Enroll N nodes, node i through controller i mod the count.
    let t = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for i in 0..n {
        let c = &controllers[i % controllers.len()];
        let (sem, addr, fp, conn) = (
            sem.clone(),
            c.addr.clone(),
            fingerprint.clone(),
            c.conn.clone(),
        );
        let state = dir.path().join(format!("agent-{i}"));
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            super::enroll_sim(i, &state, &addr, &conn, &fp).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let enroll_time = t.elapsed();

    // Every agent holds a watch and a plan stream, in worker processes.
    let t = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let mut workers = Vec::new();
    for from in (0..n).step_by(SHARD) {
        let to = (from + SHARD).min(n);
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--plan-sim",
                dir.path().to_str().unwrap(),
                &from.to_string(),
                &to.to_string(),
                &addrs.join(","),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start a worker of simulated agents");
        let stdout = child.stdout.take().unwrap();
        let tx = tx.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(i) = line.parse() {
                    let _ = tx.send(i);
                }
            }
        });
        workers.push(child);
    }
    drop(tx);
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(600), rx.recv())
            .await
            .expect("every simulated agent connects within 10 minutes")
            .expect("the workers run");
    }
    let connect_time = t.elapsed();
    // Peers learn who holds which node from the liveness summaries (5 s).
    tokio::time::sleep(Duration::from_secs(if etcd { 8 } else { 1 })).await;

    let edited = (0..n).filter(|i| i.is_multiple_of(10)).count() as u32;
    let mut took = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let (d, resp) = plan(&controllers[0].conn).await;
        let answered = resp.changed_nodes + resp.unchanged_nodes + resp.failed_nodes;
        println!(
            "  plan: {answered} of {n} answered in {} ({} changed, {} unchanged, {} groups, {} unanswered)",
            ms(d),
            resp.changed_nodes,
            resp.unchanged_nodes,
            resp.groups.len(),
            resp.unanswered.len()
        );
        assert_eq!(answered as usize, n, "every agent answers");
        assert_eq!(resp.changed_nodes, edited, "the hand-edited nodes change");
        took.push(d);
        last = Some(resp);
    }
    took.sort();
    let rss: Vec<String> = controllers
        .iter()
        .map(|c| format!("{:.1} MiB", rss_kib(c.child.id()) as f64 / 1024.0))
        .collect();
    let mode = if etcd {
        "3 controllers on a 3-member etcd, asked of one"
    } else {
        "one controller"
    };
    println!("fleet_load --plan: {n} agents, {mode}");
    println!(
        "  enroll {n} nodes: {:.1} s; connect {n} watches and plan streams: {:.1} s",
        enroll_time.as_secs_f64(),
        connect_time.as_secs_f64()
    );
    println!(
        "  plan asked -> grouped answer from all {n} agents (3 plans): median {}, max {}",
        ms(percentile(&took, 0.5)),
        ms(*took.last().unwrap())
    );
    let groups = last.map(|r| r.groups.len()).unwrap_or(0);
    println!("  {groups} groups ({edited} nodes edited by hand); controller RSS after: {rss:?}");
    drop(workers);
    drop(controllers);
    drop(cluster);
}
