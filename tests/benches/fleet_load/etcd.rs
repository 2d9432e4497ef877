//! `fleet_load --etcd`: the replicated control plane under N simulated
//! agents. A real 3-member etcd cluster (loopback), three `ballast serve`
//! processes on one prefix, and N agents spread over them, each a real
//! mutual-TLS client that knows all three controllers and, like the agent's
//! `Link`, moves to the next one at once when its watch ends and backs off
//! (jittered) only after a whole round of them failed.
//!
//! Prints: enrollment rate (spread over the controllers), controller memory
//! per agent, apply (on one controller) → every agent (on all three), the
//! store writes seen at idle and whose they are, and failover: one
//! controller SIGKILLed, time until each of its agents holds a watch on a
//! survivor, then apply → every agent again.
//!
//!     cargo bench -p ballast-tests --bench fleet_load -- --etcd 10000 20000

use super::{Controller, ms, percentile, rss_kib, spec};
use ballast_controller::store::{Store, WatchEvent};
use ballast_proto::pb;
use ballast_tests::etcd::EtcdCluster;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use tokio_stream::StreamExt;

/// Controllers unless `--controllers=N` says otherwise.
pub const CONTROLLERS: usize = 3;
/// How long the idle store is watched (a smoke run of under 1,000 agents
/// watches it for a tenth of that).
const IDLE: Duration = Duration::from_secs(30);
/// How long every agent has to be back after a kill before the run gives up.
const FAILOVER_LIMIT: Duration = Duration::from_secs(120);

/// What a simulated agent saw: a state (its revision) from controller `ctl`,
/// when it arrived (`wall_us`); `first` when it is the first on a new watch.
struct Seen {
    agent: usize,
    revision: u64,
    at: u64,
    ctl: usize,
    first: bool,
}

/// Wall-clock time in microseconds: the clock the workers and the parent
/// share (one process's `Instant` means nothing to another).
fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_micros() as u64
}

/// From `from` to `at`, both `wall_us`.
fn since(from: u64, at: u64) -> Duration {
    Duration::from_micros(at.saturating_sub(from))
}

/// Simulated agents per worker process.
const SHARD: usize = 8_000;

/// Worker mode (`--sim DIR FROM TO ADDRS`): agents FROM..TO, enrolled in
/// DIR/agent-I, each line of stdout one `Seen`: `agent revision controller
/// first at`, flushed as soon as nothing else is waiting. `at` is stamped
/// by the simulated agent as the message arrives, so the figures do not
/// count the pipe or the parent's reading. Ends when the parent goes.
pub fn sim(args: &[String]) {
    super::raise_nofile();
    let (dir, nodes, addrs) = super::sim_args(args);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Seen>();
        let connecting = Arc::new(tokio::sync::Semaphore::new(32));
        for i in nodes.clone() {
            let (tx, addrs, connecting) = (tx.clone(), addrs.clone(), connecting.clone());
            let state = dir.join(format!("agent-{i}"));
            tokio::spawn(async move {
                // A fleet does not all boot at once: the first connection
                // waits its turn, and holds it until its watch is open (or
                // the attempt failed), as the single-controller mode does.
                let boot = connecting.acquire_owned().await.unwrap();
                agent(i, state, addrs, tx, boot).await
            });
        }
        drop(tx);
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        while let Some(seen) = rx.recv().await {
            use std::io::Write;
            let line = format!(
                "{} {} {} {} {}\n",
                seen.agent, seen.revision, seen.ctl, seen.first as u8, seen.at
            );
            if out.write_all(line.as_bytes()).is_err() {
                return;
            }
            if rx.is_empty() && out.flush().is_err() {
                return;
            }
        }
    });
}

/// One simulated agent: watch the controllers in turn, for ever.
async fn agent(
    i: usize,
    state: std::path::PathBuf,
    addrs: Arc<Vec<String>>,
    tx: UnboundedSender<Seen>,
    boot: tokio::sync::OwnedSemaphorePermit,
) {
    let mut boot = Some(boot);
    let enrolled = ballast_agent::client::Enrolled::load(&state).unwrap();
    // The real agent's order (rendezvous hashing of its name): a dead
    // controller's agents spread over the survivors.
    let order: Vec<usize> =
        ballast_agent::daemon::controller_order(addrs.to_vec(), &enrolled.config.name)
            .iter()
            .map(|a| addrs.iter().position(|x| x == a).expect("one of the list"))
            .collect();
    // Its own loopback address, as every real node has its own: from one
    // address the kernel runs short of local ports towards one controller
    // past about 14,000 connections, and every connect then scans them all.
    let source = super::sim_source(i);
    let targets: Vec<ballast_agent::client::Target> = addrs
        .iter()
        .map(|a| ballast_agent::client::Target {
            name: a.clone(),
            addr: Some(a.parse().expect("controllers listen on an address")),
        })
        .collect();
    // Paced by the real agent's rule: the next controller at once (within
    // a small jitter), jittered exponential backoff after a failed round.
    let mut pacing = ballast_agent::daemon::Pacing::new();
    loop {
        pacing.start_round(order.len());
        for &ctl in &order {
            let started = Instant::now();
            let watched = async {
                let channel = enrolled.channel_from(&targets[ctl], Some(source)).await?;
                let mut client = ballast_agent::client::agent_client(channel);
                let stream = client
                    .watch(pb::WatchRequest::default())
                    .await?
                    .into_inner();
                anyhow::Ok((client, stream))
            };
            let watched = tokio::time::timeout(Duration::from_secs(10), watched).await;
            drop(boot.take());
            if let Ok(Ok((_client, mut stream))) = watched {
                let mut first = true;
                while let Some(Ok(msg)) = stream.next().await {
                    let seen = Seen {
                        agent: i,
                        revision: msg.revision,
                        at: wall_us(),
                        ctl,
                        first,
                    };
                    if tx.send(seen).is_err() {
                        return;
                    }
                    first = false;
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(pacing.session_ended(started.elapsed())).await;
        }
    }
}

/// Applies the bench's spec at `version` through `conn`; the new revision.
pub async fn apply(conn: &ballast_controller::cli::Conn, version: u32) -> u64 {
    let mut admin = ballast_controller::cli::connect(conn).await.unwrap();
    admin
        .apply(pb::ApplyRequest {
            sources: vec![pb::SourceFile {
                name: "bench.yaml".into(),
                content: spec(version),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revision
}

/// Waits until every agent in `who` has seen `revision`; the delays from `from`.
async fn deliveries(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
    on: &mut [usize],
    n: usize,
    revision: u64,
    from: u64,
) -> Vec<Duration> {
    let mut got = vec![false; n];
    let mut delays = Vec::with_capacity(n);
    while delays.len() < n {
        let seen = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("every agent receives the new state within 60 s")
            .unwrap();
        on[seen.agent] = seen.ctl;
        if seen.revision == revision && !got[seen.agent] {
            got[seen.agent] = true;
            delays.push(since(from, seen.at));
        }
    }
    delays.sort();
    delays
}

fn spread(label: &str, d: &[Duration]) {
    println!(
        "  {label}: p50 {}, p99 {}, max {}",
        ms(percentile(d, 0.5)),
        ms(percentile(d, 0.99)),
        ms(*d.last().unwrap())
    );
}

/// Processor time a process has used so far (user and system), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which ends at the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12] // utime and stime: fields 14 and 15 of stat(5)
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // In USER_HZ: 100 on x86 and ARM Linux, where this bench runs.
    ticks as f64 / 100.0
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub async fn run(n: usize, count: usize) {
    let Some(cluster) = EtcdCluster::start(3) else {
        println!("fleet_load --etcd: skipped, etcd is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.url();
    let mut controllers: Vec<Controller> = Vec::new();
    for c in 0..count {
        // One at a time: the first publishes the fleet's CA, the others take it.
        controllers
            .push(super::start_controller(&dir.path().join(format!("c{c}")), Some(&url)).await);
    }
    let addrs: Arc<Vec<String>> = Arc::new(controllers.iter().map(|c| c.addr.clone()).collect());
    let fingerprint = controllers[0].fingerprint.clone();
    apply(&controllers[0].conn, 1).await;

    // Enroll N nodes, each through controller i % 3 with a token made there.
    let t = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for i in 0..n {
        let c = &controllers[i % count];
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
            state
        }));
    }
    let mut states = Vec::with_capacity(n);
    for t in tasks {
        states.push(t.await.unwrap());
    }
    let enroll_time = t.elapsed();
    let rss_before: Vec<u64> = controllers.iter().map(|c| rss_kib(c.child.id())).collect();

    // Every agent holds a watch on its controller. The agents run in worker
    // processes of at most SHARD each: a process here may not hold more than
    // 20,000 descriptors, and each agent holds a connection.
    drop(states);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Seen>();
    let t = Instant::now();
    let mut workers = Vec::new();
    for from in (0..n).step_by(SHARD) {
        let to = (from + SHARD).min(n);
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--sim",
                dir.path().to_str().unwrap(),
                &from.to_string(),
                &to.to_string(),
            ])
            .arg(addrs.join(","))
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
                let f: Vec<u64> = line.split(' ').filter_map(|v| v.parse().ok()).collect();
                let [agent, revision, ctl, first, at] = f[..] else {
                    continue;
                };
                let seen = Seen {
                    agent: agent as usize,
                    revision,
                    at,
                    ctl: ctl as usize,
                    first: first == 1,
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        workers.push(child);
    }
    drop(tx);
    let mut on = vec![usize::MAX; n];
    let mut connected = 0;
    while connected < n {
        let seen = rx.recv().await.unwrap();
        if on[seen.agent] == usize::MAX {
            connected += 1;
        }
        on[seen.agent] = seen.ctl;
    }
    let connect_time = t.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after: Vec<u64> = controllers.iter().map(|c| rss_kib(c.child.id())).collect();
    let per_ctl: Vec<usize> = (0..count)
        .map(|c| on.iter().filter(|o| **o == c).count())
        .collect();

    println!(
        "fleet_load --etcd: {n} agents over {count} controllers on a 3-member etcd (load average at start {})",
        load_average()
    );
    println!(
        "  enroll {n} nodes over {count} controllers: {:.1} s, {:.0} enrollments/s",
        enroll_time.as_secs_f64(),
        n as f64 / enroll_time.as_secs_f64()
    );
    println!(
        "  connect {n} watches: {:.1} s ({per_ctl:?} per controller)",
        connect_time.as_secs_f64()
    );
    let grown: u64 = rss_after
        .iter()
        .zip(&rss_before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    for c in 0..count {
        println!(
            "  controller {c} RSS: {:.1} MiB before the watches, {:.1} MiB with {} ({:.1} KiB per agent)",
            rss_before[c] as f64 / 1024.0,
            rss_after[c] as f64 / 1024.0,
            per_ctl[c],
            rss_after[c].saturating_sub(rss_before[c]) as f64 / per_ctl[c].max(1) as f64
        );
    }
    println!(
        "  controller memory per connected agent (all three): {:.1} KiB",
        grown as f64 / n as f64
    );

    // Apply on controller 0; every agent, wherever it is, gets it.
    let mut delays = Vec::new();
    let mut rpc = Vec::new();
    for round in 0..3u32 {
        let (called, called_us) = (Instant::now(), wall_us());
        let revision = apply(&controllers[0].conn, round + 2).await;
        rpc.push(called.elapsed());
        delays.extend(deliveries(&mut rx, &mut on, n, revision, called_us).await);
    }
    delays.sort();
    rpc.sort();
    println!(
        "  apply RPC on controller 0: median {}",
        ms(percentile(&rpc, 0.5))
    );
    spread(
        &format!(
            "apply called -> agent has it ({} deliveries over 3 applies, agents on all controllers)",
            delays.len()
        ),
        &delays,
    );

    // Idle: what is written to the store while nothing changes.
    let store = cluster.store(ballast_controller::store::DEFAULT_PREFIX);
    let from = store.list_at("meta/").unwrap().revision;
    let mut watch = store.watch("", from + 1).unwrap();
    let mut writes: BTreeMap<String, usize> = BTreeMap::new();
    let mut revisions = 0;
    let idle = if n < 1000 { IDLE / 10 } else { IDLE };
    let idle_until = Instant::now() + idle;
    while let Ok(Some(ev)) = tokio::time::timeout_at(idle_until.into(), watch.next()).await {
        if let WatchEvent::Changes { changes, .. } = ev {
            revisions += 1;
            for c in changes {
                let kind = c.key.split('/').next().unwrap_or("").to_owned();
                *writes.entry(kind).or_default() += 1;
            }
        }
    }
    drop(watch);
    println!(
        "  store at idle over {}s: {revisions} committed revisions ({:.2}/s), keys written by prefix {writes:?}",
        idle.as_secs(),
        revisions as f64 / idle.as_secs_f64()
    );

    // Failover: kill controller 2; its agents move to the survivors.
    let victims: Vec<usize> = (0..n).filter(|i| on[*i] == 2).collect();
    // Where the processor time of the failover goes: the survivors (their
    // side of the handshakes and watches) and the simulated agents (theirs,
    // which in a real fleet runs on the nodes, not beside the controllers).
    let survivors: Vec<u32> = (0..count)
        .filter(|c| *c != 2)
        .map(|c| controllers[c].child.id())
        .collect();
    let sims: Vec<u32> = workers.iter().filter_map(|w| w.id()).collect();
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let (survivors_cpu, sims_cpu) = (cpu(&survivors), cpu(&sims));
    let (killed, killed_us) = (Instant::now(), wall_us());
    let _ = controllers[2].child.kill();
    let _ = controllers[2].child.wait();
    let mut back: BTreeMap<usize, Duration> = BTreeMap::new();
    while back.len() < victims.len() {
        assert!(
            killed.elapsed() < FAILOVER_LIMIT,
            "only {} of {} agents were back within {FAILOVER_LIMIT:?}",
            back.len(),
            victims.len()
        );
        let Ok(Some(seen)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await else {
            continue;
        };
        on[seen.agent] = seen.ctl;
        if seen.first && seen.ctl != 2 && victims.binary_search(&seen.agent).is_ok() {
            back.entry(seen.agent).or_insert(since(killed_us, seen.at));
        }
    }
    let window = killed.elapsed().as_secs_f64();
    let (survivors_cpu, sims_cpu) = (cpu(&survivors) - survivors_cpu, cpu(&sims) - sims_cpu);
    let mut back: Vec<Duration> = back.into_values().collect();
    back.sort();
    spread(
        &format!(
            "failover: controller 2 killed -> each of its {} agents watching a survivor",
            victims.len()
        ),
        &back,
    );
    println!(
        "  failover processor time over its {window:.1} s: survivors {survivors_cpu:.1} s ({:.2} ms per agent moved), simulated agents {sims_cpu:.1} s ({:.2} ms per agent moved), of the machine's {:.1} s",
        survivors_cpu * 1000.0 / victims.len().max(1) as f64,
        sims_cpu * 1000.0 / victims.len().max(1) as f64,
        window * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
    );
    let called_us = wall_us();
    let revision = apply(&controllers[0].conn, 100).await;
    let after = deliveries(&mut rx, &mut on, n, revision, called_us).await;
    spread("after the kill, apply called -> every agent has it", &after);
    println!(
        "  failover: controller killed -> last agent has the next revision: {}",
        ms(since(killed_us, called_us) + *after.last().unwrap())
    );
    // What the reconnect storm left: the survivors' memory per agent they
    // now hold (a burst of handshakes leaves the allocator holding more).
    let (mut grown, mut held) = (0u64, 0usize);
    for c in (0..count).filter(|c| *c != 2) {
        grown += rss_kib(controllers[c].child.id()).saturating_sub(rss_before[c]);
        held += on.iter().filter(|o| **o == c).count();
    }
    println!(
        "  survivors' memory per agent they hold after the failover: {:.1} KiB",
        grown as f64 / held.max(1) as f64
    );
    println!("  load average at the end: {}", load_average());
    drop(rx);
    drop(workers);
    drop(controllers);
    drop(cluster);
}
