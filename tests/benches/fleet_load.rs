//! Fleet load benchmark (not a timed test): N simulated agents, each a real
//! mutual-TLS gRPC client with its own certificate and watch stream, against
//! one controller running in a child process (so its memory is its own).
//!
//! Prints: controller resident memory per connected agent, and the delay from
//! `apply` returning to each agent receiving the new state (p50, p99, max);
//! then the resident memory of one real agent daemon idling after it converged.
//!
//!     cargo bench -p ballast-tests --bench fleet_load -- 1000 2000
//!
//! With `--etcd`, three controllers on a real etcd cluster instead (see
//! `fleet_load/etcd.rs`):
//!
//!     cargo bench -p ballast-tests --bench fleet_load -- --etcd 10000 20000
//!
//! With `--plan` (and optionally `--etcd`), `ballast plan` over N simulated
//! agents that answer with dry runs (see `fleet_load/plan.rs`):
//!
//!     cargo bench -p ballast-tests --bench fleet_load -- --plan 10000
//!
//! Bounded: every agent connects to 127.0.0.1 only, and the run ends by itself.

use ballast_controller::config::ServeConfig;
use ballast_proto::pb;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_stream::StreamExt;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Every simulated agent holds a connection: lift the open-files limit, to
/// the kernel's most (`fs.nr_open`) when allowed (root), else to the hard
/// limit. Child processes (the controllers) inherit it.
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let most = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if most > 0 && setrlimit(Resource::RLIMIT_NOFILE, most, most).is_ok() {
        return;
    }
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Simulated agent `i`'s own loopback source address, from 127.1.0.1 up
/// (all of 127.0.0.0/8 is loopback).
fn sim_source(i: usize) -> std::net::IpAddr {
    let base = u32::from(std::net::Ipv4Addr::new(127, 1, 0, 1));
    let offset = u32::try_from(i).expect("fewer than 16 million agents");
    std::net::IpAddr::V4(std::net::Ipv4Addr::from(base + offset))
}

/// A `--sim` worker's arguments: the state dirs' parent, the range of node
/// numbers it runs, and the controllers' addresses (comma separated).
fn sim_args(args: &[String]) -> (std::path::PathBuf, std::ops::Range<usize>, Arc<Vec<String>>) {
    let parse = |i: usize| args[i].parse::<usize>().expect("a node number");
    let addrs = args[3].split(',').map(str::to_owned).collect();
    (
        std::path::PathBuf::from(&args[0]),
        parse(1)..parse(2),
        Arc::new(addrs),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[path = "fleet_load/etcd.rs"]
mod etcd_mode;
#[path = "fleet_load/plan.rs"]
mod plan_mode;

/// Child mode: run the controller until killed; on etcd when `store` is an
/// `etcd://` URL.
fn serve(data_dir: &str, port: u16, store: Option<&str>) {
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cfg = ServeConfig::defaults();
        cfg.data_dir = data_dir.into();
        cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
        // Every simulated agent connects from 127.0.0.1: lift the per-address
        // bound (1,024 by default) so more than that many can hold a watch.
        cfg.connections.max_connections_per_address = usize::MAX;
        if let Some(url) = store {
            cfg.store = ballast_controller::config::StoreConfig::Etcd(
                ballast_controller::store::EtcdOptions::from_url(url).expect("etcd URL"),
            );
        }
        let running = ballast_controller::server::start(&cfg)
            .await
            .expect("controller starts");
        running.wait_for_signal().await.unwrap();
    });
}

/// Child mode: run one agent daemon until killed.
fn agent(state_dir: &str, root: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = ballast_agent::daemon::DaemonConfig {
            state_dir: ballast_agent::state::StateDir::new(state_dir),
            root: Some(root.into()),
            interval: Duration::from_secs(300),
            heartbeat: Duration::from_secs(30),
            facts_dir: Path::new(state_dir).join("facts.d"),
            controller: None,
            host_figures_every: ballast_agent::facts::DEFAULT_HOST_FIGURES_EVERY,
        };
        ballast_agent::daemon::run(cfg, std::future::pending())
            .await
            .unwrap();
    });
}

struct Controller {
    child: Child,
    addr: String,
    conn: ballast_controller::cli::Conn,
    fingerprint: String,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_controller(dir: &Path, store: Option<&str>) -> Controller {
    let port = ballast_tests::free_port();
    let data = dir.join("data");
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--serve", data.to_str().unwrap(), &port.to_string()])
        .args(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let conn = ballast_controller::cli::Conn {
        controller: addr.clone(),
        data_dir: Some(data.clone()),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = ballast_controller::cli::connect(&conn).await
            && c.list_nodes(pb::ListNodesRequest::default()).await.is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "controller did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pem = std::fs::read_to_string(data.join("pki/ca.pem")).unwrap();
    let fingerprint = ballast_controller::cli::fingerprint_of_pem(&pem).unwrap();
    Controller {
        child,
        addr,
        conn,
        fingerprint,
    }
}

/// Enrolls simulated node `i` (`sim-0000i`) through one controller, with a
/// token made there, into the state dir `state`.
async fn enroll_sim(
    i: usize,
    state: &Path,
    addr: &str,
    conn: &ballast_controller::cli::Conn,
    fingerprint: &str,
) {
    let mut admin = ballast_controller::cli::connect(conn).await.unwrap();
    let token = admin
        .create_token(pb::CreateTokenRequest {
            ttl_seconds: 600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    ballast_agent::client::enroll(state, addr, &token, fingerprint, &format!("sim-{i:05}"))
        .await
        .unwrap();
}

fn spec(version: u32) -> String {
    format!(
        "roles:\n  base:\n    directories: [{{path: /srv/bench}}]\n    files: [{{path: /srv/bench/motd, content: \"version {version}\\n\"}}]\ngroups:\n  all:\n    roles: [base]\n"
    )
}

async fn run(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let ctl = start_controller(dir.path(), None).await;
    let mut admin = ballast_controller::cli::connect(&ctl.conn).await.unwrap();
    admin
        .apply(pb::ApplyRequest {
            sources: vec![pb::SourceFile {
                name: "bench.yaml".into(),
                content: spec(1),
            }],
            ..Default::default()
        })
        .await
        .unwrap();

    // Enroll N nodes (tokens, CSRs, certificates), a few at a time.
    let t = Instant::now();
    let states = Arc::new(Mutex::new(Vec::new()));
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (sem, states, addr, fp, conn) = (
            sem.clone(),
            states.clone(),
            ctl.addr.clone(),
            ctl.fingerprint.clone(),
            ctl.conn.clone(),
        );
        let state = dir.path().join(format!("agent-{i}"));
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            enroll_sim(i, &state, &addr, &conn, &fp).await;
            states.lock().await.push(state);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let enroll_time = t.elapsed();
    let rss_before = rss_kib(ctl.child.id());

    // Connect every agent (its own TCP + TLS connection) and hold its watch.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, u64, Instant)>();
    let states = states.lock().await.clone();
    let t = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    for (i, state) in states.iter().enumerate() {
        let (tx, sem, state) = (tx.clone(), sem.clone(), state.clone());
        tokio::spawn(async move {
            let permit = sem.acquire_owned().await.unwrap();
            let enrolled = ballast_agent::client::Enrolled::load(&state).unwrap();
            let channel = enrolled.channel(None).await.unwrap();
            let mut client = ballast_agent::client::agent_client(channel);
            let mut stream = client
                .watch(pb::WatchRequest::default())
                .await
                .unwrap()
                .into_inner();
            drop(permit);
            while let Some(Ok(msg)) = stream.next().await {
                let _ = tx.send((i, msg.revision, Instant::now()));
            }
            drop(client);
        });
    }
    let mut initial = 0;
    while initial < n {
        let (_, rev, _) = rx.recv().await.unwrap();
        if rev == 1 {
            initial += 1;
        }
    }
    let connect_time = t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib(ctl.child.id());

    // Apply a change; time from calling apply (and from its return) to each agent's receipt.
    let mut delays = Vec::with_capacity(3 * n);
    let mut after_return = Vec::with_capacity(3 * n);
    let mut apply_rpc = Vec::new();
    for round in 0..3u32 {
        let called = Instant::now();
        let resp = admin
            .apply(pb::ApplyRequest {
                sources: vec![pb::SourceFile {
                    name: "bench.yaml".into(),
                    content: spec(round + 2),
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let returned = Instant::now();
        apply_rpc.push(returned - called);
        let mut got = 0;
        while got < n {
            let (_, rev, at) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .expect("agents receive the new state")
                .unwrap();
            if rev == resp.revision {
                got += 1;
                delays.push(at - called);
                after_return.push(at.saturating_duration_since(returned));
            }
        }
    }
    delays.sort();
    after_return.sort();
    apply_rpc.sort();
    let per_agent = (rss_after.saturating_sub(rss_before)) as f64 / n as f64;
    println!("fleet_load: {n} agents, each a real mTLS client with its own watch");
    println!(
        "  enroll {n} nodes:                      {:.1} s",
        enroll_time.as_secs_f64()
    );
    println!(
        "  connect {n} watches:                    {:.1} s",
        connect_time.as_secs_f64()
    );
    println!(
        "  controller RSS: {:.1} MiB idle with 0 watches, {:.1} MiB with {n}",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    println!("  controller memory per connected agent:  {per_agent:.1} KiB");
    println!(
        "  apply RPC (validate, store durably, render {n} nodes, push): median {}",
        ms(percentile(&apply_rpc, 0.5))
    );
    println!(
        "  apply called -> agent has new state ({} deliveries over 3 applies): p50 {}, p99 {}, max {}",
        delays.len(),
        ms(percentile(&delays, 0.5)),
        ms(percentile(&delays, 0.99)),
        ms(*delays.last().unwrap())
    );
    println!(
        "  apply returned -> agent has new state (0 when it arrived before the reply): p50 {}, p99 {}, max {}",
        ms(percentile(&after_return, 0.5)),
        ms(percentile(&after_return, 0.99)),
        ms(*after_return.last().unwrap())
    );

    // One real agent daemon, idle after converging.
    let mut admin2 = ballast_controller::cli::connect(&ctl.conn).await.unwrap();
    let token = admin2
        .create_token(pb::CreateTokenRequest {
            ttl_seconds: 600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let state = dir.path().join("real-agent");
    let root = dir.path().join("real-root");
    std::fs::create_dir_all(&root).unwrap();
    ballast_agent::client::enroll(&state, &ctl.addr, &token, &ctl.fingerprint, "real-agent")
        .await
        .unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--agent", state.to_str().unwrap(), root.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed on every way out, a failed assertion included.
    let child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !root.join("srv/bench/motd").exists() {
        assert!(Instant::now() < deadline, "real agent did not converge");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "  agent daemon resident memory, idle after converging: {:.1} MiB",
        rss_kib(child.0.id()) as f64 / 1024.0
    );
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--serve") => {
            return serve(
                &args[2],
                args[3].parse().unwrap(),
                args.get(4).map(String::as_str),
            );
        }
        Some("--agent") => return agent(&args[2], &args[3]),
        Some("--sim") => return etcd_mode::sim(&args[2..]),
        Some("--plan-sim") => return plan_mode::sim(&args[2..]),
        _ => {}
    }
    raise_nofile();
    // `cargo bench` passes `--bench`; `cargo test` does not, and then this is a
    // small smoke run so the benchmark keeps working. Numbers are agent counts.
    let counts: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let etcd = args.iter().any(|a| a == "--etcd");
    let plan = args.iter().any(|a| a == "--plan");
    // `--controllers=N` for the etcd mode (a survivor of a kill must hold
    // its share within this machine's descriptor limit).
    let controllers = args
        .iter()
        .find_map(|a| a.strip_prefix("--controllers="))
        .map_or(etcd_mode::CONTROLLERS, |v| {
            v.parse().expect("--controllers=N: a number of controllers")
        });
    let counts = match (counts.is_empty(), args.iter().any(|a| a == "--bench")) {
        (false, _) => counts,
        (true, true) => vec![1000],
        (true, false) => vec![20],
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for n in counts {
        if plan {
            rt.block_on(plan_mode::run(n, etcd));
        } else if etcd {
            rt.block_on(etcd_mode::run(n, controllers));
        } else {
            rt.block_on(run(n));
        }
    }
    // The smoke run under `cargo test` also runs the etcd mode, small.
    if !etcd && !args.iter().any(|a| a == "--bench") && args.len() == 1 {
        rt.block_on(etcd_mode::run(30, etcd_mode::CONTROLLERS));
        rt.block_on(plan_mode::run(20, false));
        rt.block_on(plan_mode::run(30, true));
    }
}
