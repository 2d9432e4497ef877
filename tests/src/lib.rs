//! Shared harness for the integration tests and benchmarks: the real
//! controller and real agents, in-process, over loopback mutual TLS, with
//! temporary data dirs, state dirs and `--root` sandboxes.
//!
//! Just over 600 lines: one harness for the in-process controller, the
//! controller process and the agent, which the tests use together.

use anyhow::Context;
use ballast_agent::daemon::DaemonConfig;
use ballast_controller::cli::{Cli, Conn};
use ballast_controller::config::ServeConfig;
use ballast_controller::server::{self, Running};
use ballast_proto::pb;
use ballast_proto::pb::admin_client::AdminClient;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tonic::transport::Channel;

/// A controller on `127.0.0.1` with a temporary data dir.
pub struct TestController {
    pub dir: TempDir,
    pub addr: SocketAddr,
    pub fingerprint: String,
    cfg: ServeConfig,
    running: Option<Running>,
}

impl TestController {
    pub async fn start() -> TestController {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut ServeConfig)) -> TestController {
        let dir = tempfile::tempdir().expect("temp data dir");
        let mut cfg = ServeConfig::defaults();
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg.data_dir = dir.path().join("data");
        adjust(&mut cfg);
        let running = server::start(&cfg).await.expect("controller starts");
        let addr = running.addr;
        // Restarts reuse the port, so agents reconnect to the same address.
        cfg.listen = addr;
        TestController {
            dir,
            addr,
            fingerprint: running.fingerprint.clone(),
            cfg,
            running: Some(running),
        }
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("controller stops");
        }
    }

    /// Starts again on the same address and data dir.
    pub async fn restart(&mut self) {
        self.stop().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match server::start(&self.cfg).await {
                Ok(r) => {
                    self.running = Some(r);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("controller restarts: {e:#}"),
            }
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.cfg.data_dir
    }

    /// The dashboard's address, when started with `dashboard_listen`.
    pub fn dashboard(&self) -> Option<SocketAddr> {
        self.running.as_ref().and_then(|r| r.dashboard)
    }

    pub fn controller(&self) -> String {
        self.addr.to_string()
    }

    pub fn conn(&self) -> Conn {
        Conn {
            controller: self.controller(),
            data_dir: Some(self.cfg.data_dir.clone()),
        }
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        ballast_controller::cli::connect(&self.conn())
            .await
            .expect("admin client connects")
    }

    /// Runs `ballast ARGS...` against this controller; returns exit code and stdout.
    pub async fn cli(&self, args: &[&str]) -> (ExitCode, String) {
        use clap::Parser;
        let mut argv = vec!["ballast".to_string()];
        argv.extend(args.iter().map(|s| s.to_string()));
        argv.extend([
            "--controller".into(),
            self.controller(),
            "--data-dir".into(),
            self.cfg.data_dir.display().to_string(),
        ]);
        let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("parse {argv:?}: {e}"));
        let mut out = Vec::new();
        let code = match ballast_controller::cli::execute(cli.command, &mut out).await {
            Ok(code) => code,
            Err(e) => {
                out.extend_from_slice(format!("error: {e:#}\n").as_bytes());
                ExitCode::FAILURE
            }
        };
        (code, String::from_utf8(out).unwrap())
    }

    pub async fn token(&self, labels: &[(&str, &str)]) -> String {
        self.admin()
            .await
            .create_token(pb::CreateTokenRequest {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ttl_seconds: 600,
                name: String::new(),
                replace_revoked: false,
            })
            .await
            .expect("token created")
            .into_inner()
            .token
    }

    pub async fn apply(&self, yaml: &str) -> Result<pb::ApplyResponse, tonic::Status> {
        let sources = vec![pb::SourceFile {
            name: "spec.yaml".into(),
            content: yaml.into(),
        }];
        self.admin()
            .await
            .apply(pb::ApplyRequest {
                sources,
                author: "test".into(),
                message: String::new(),
                allow_prune: true,
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn nodes(&self) -> Vec<pb::NodeSummary> {
        self.admin()
            .await
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .expect("list nodes")
            .into_inner()
            .nodes
    }

    /// `ballast node show NAME` as data: facts, last report, timeline.
    pub async fn node_detail(&self, name: &str) -> pb::NodeDetail {
        self.admin()
            .await
            .get_node(pb::GetNodeRequest { name: name.into() })
            .await
            .expect("node exists")
            .into_inner()
    }

    pub async fn node(&self, name: &str) -> Option<pb::NodeSummary> {
        self.nodes().await.into_iter().find(|n| n.name == name)
    }

    /// Polls until `pred` holds for node `name`, or panics after `timeout`.
    pub async fn wait_node(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&pb::NodeSummary) -> bool,
    ) -> pb::NodeSummary {
        let deadline = Instant::now() + timeout;
        let mut client = self.admin().await;
        loop {
            let nodes = client
                .list_nodes(pb::ListNodesRequest::default())
                .await
                .expect("list nodes")
                .into_inner()
                .nodes;
            let node = nodes.into_iter().find(|n| n.name == name);
            if let Some(n) = &node
                && pred(n)
            {
                return n.clone();
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for node {name}; last seen as {node:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An agent with its own state dir and `--root` sandbox.
pub struct TestAgent {
    pub name: String,
    pub state: TempDir,
    pub root: TempDir,
    pub controller: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestAgent {
    /// Enrolls a new node with a fresh token carrying `labels`.
    pub async fn enroll(ctl: &TestController, name: &str, labels: &[(&str, &str)]) -> TestAgent {
        let token = ctl.token(labels).await;
        let state = tempfile::tempdir().expect("state dir");
        let root = tempfile::tempdir().expect("root dir");
        ballast_agent::client::enroll(
            state.path(),
            &ctl.controller(),
            &token,
            &ctl.fingerprint,
            name,
        )
        .await
        .expect("enrollment succeeds");
        TestAgent {
            name: name.into(),
            state,
            root,
            controller: ctl.controller(),
            shutdown: None,
            task: None,
        }
    }

    /// Enrolls a new node with `token` at a controller given by address and CA
    /// fingerprint (e.g. a [`ControllerProcess`]).
    pub async fn enroll_at(
        controller: &str,
        fingerprint: &str,
        token: &str,
        name: &str,
    ) -> TestAgent {
        let state = tempfile::tempdir().expect("state dir");
        let root = tempfile::tempdir().expect("root dir");
        ballast_agent::client::enroll(state.path(), controller, token, fingerprint, name)
            .await
            .expect("enrollment succeeds");
        TestAgent {
            name: name.into(),
            state,
            root,
            controller: controller.into(),
            shutdown: None,
            task: None,
        }
    }

    /// Starts the daemon in this process.
    pub fn start(&mut self, interval: Duration) {
        let cfg = DaemonConfig {
            state_dir: ballast_agent::state::StateDir::new(self.state.path()),
            root: Some(self.root.path().to_owned()),
            interval,
            heartbeat: Duration::from_millis(500),
            facts_dir: self.state.path().join("facts.d"),
            controller: None,
            host_figures_every: ballast_agent::facts::DEFAULT_HOST_FIGURES_EVERY,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.shutdown = Some(tx);
        self.task = Some(tokio::spawn(ballast_agent::daemon::run(cfg, async {
            let _ = rx.await;
        })));
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("agent task").expect("agent ends cleanly");
        }
    }

    /// A path inside the sandbox, given as the managed absolute path.
    pub fn path(&self, managed: &str) -> PathBuf {
        self.root.path().join(managed.trim_start_matches('/'))
    }

    /// A raw Agent-service client with this node's certificate.
    pub async fn agent_client(&self) -> anyhow::Result<pb::agent_client::AgentClient<Channel>> {
        let enrolled = ballast_agent::client::Enrolled::load(self.state.path())?;
        let channel = enrolled.channel(None).await.context("node channel")?;
        Ok(ballast_agent::client::agent_client(channel))
    }
}

/// Polls a condition until it holds or the timeout passes.
pub async fn eventually(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
/// The `ballast` binary: `BALLAST_BIN`, else beside the test binary's `deps/`
/// (scripts/test.sh builds it first), else under the workspace's `target/debug`.
pub fn controller_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BALLAST_BIN") {
        return PathBuf::from(p);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("ballast")));
    let p = beside
        .filter(|p| p.exists())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/ballast"));
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p ballast-controller` first",
        p.display()
    );
    p
}

/// A real `ballast serve` process on `127.0.0.1` with a temporary data dir;
/// killed (SIGKILL) when dropped.
pub struct ControllerProcess {
    pub dir: TempDir,
    pub addr: SocketAddr,
    pub fingerprint: String,
    data: PathBuf,
    config: PathBuf,
    /// Flags after `serve --config FILE`.
    args: Vec<String>,
    /// Environment variables set for the process (test hooks).
    env: Vec<(String, String)>,
    child: Option<std::process::Child>,
}

impl ControllerProcess {
    /// Starts `ballast serve --config FILE` where FILE holds `listen`,
    /// `data_dir` and the `key: value` lines of `extra_config`.
    pub async fn start(extra_config: &str) -> ControllerProcess {
        Self::start_at(None, extra_config).await
    }

    /// Like [`ControllerProcess::start`], with the data dir at `data_dir`
    /// (default: inside the process's temp dir).
    pub async fn start_at(data_dir: Option<&Path>, extra_config: &str) -> ControllerProcess {
        Self::start_full(data_dir, extra_config, &[], &[]).await
    }

    /// Like [`ControllerProcess::start`], with `args` after `serve --config FILE`
    /// (e.g. `--store etcd://...`).
    pub async fn start_with_args(extra_config: &str, args: &[&str]) -> ControllerProcess {
        Self::start_full(None, extra_config, args, &[]).await
    }

    /// Like [`ControllerProcess::start_with_args`], with environment
    /// variables `env` (test hooks such as `BALLAST_TEST_JOBS_EVERY_MS`).
    pub async fn start_with_env(
        extra_config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ControllerProcess {
        Self::start_full(None, extra_config, args, env).await
    }

    /// Like [`ControllerProcess::start_with_args`], listening on `addr`
    /// (another loopback address such as 127.0.0.2, to stand for a second
    /// machine behind one name).
    pub async fn start_listening(addr: SocketAddr, args: &[&str]) -> ControllerProcess {
        Self::start_on(addr, None, "", args, &[]).await
    }

    async fn start_full(
        data_dir: Option<&Path>,
        extra_config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ControllerProcess {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_on(addr, data_dir, extra_config, args, env).await
    }

    async fn start_on(
        addr: SocketAddr,
        data_dir: Option<&Path>,
        extra_config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ControllerProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("controller.yaml");
        let data = data_dir
            .map(Path::to_owned)
            .unwrap_or_else(|| dir.path().join("data"));
        std::fs::write(
            &config,
            format!(
                "listen: {addr}\ndata_dir: {}\n{extra_config}\n",
                data.display()
            ),
        )
        .expect("write controller config");
        let mut c = ControllerProcess {
            dir,
            addr,
            fingerprint: String::new(),
            data,
            config,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        };
        c.restart().await;
        let pem = std::fs::read_to_string(c.data_dir().join("pki/ca.pem")).expect("ca.pem");
        c.fingerprint = ballast_controller::cli::fingerprint_of_pem(&pem).expect("fingerprint");
        c
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }

    pub fn controller(&self) -> String {
        self.addr.to_string()
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.as_ref().expect("controller runs").id() as i32)
    }

    pub fn conn(&self) -> Conn {
        Conn {
            controller: self.controller(),
            data_dir: Some(self.data_dir()),
        }
    }

    pub async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        ballast_controller::cli::connect(&self.conn()).await
    }

    /// Kills the process (if running), starts it again on the same address
    /// and data dir, and waits until it answers an admin call.
    pub async fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("controller.log"))
            .expect("controller log");
        let child = std::process::Command::new(controller_binary())
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn ballast serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = self.admin().await
                && c.list_nodes(pb::ListNodesRequest::default()).await.is_ok()
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("controller exited with {status}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "controller did not answer within 30 s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process and starts it again on `addr`, with the same data
    /// dir (so the same CA, certificates and store).
    pub async fn restart_at(&mut self, addr: SocketAddr) {
        self.kill();
        let config = std::fs::read_to_string(&self.config).expect("controller config");
        let moved = config.replacen(
            &format!("listen: {}\n", self.addr),
            &format!("listen: {addr}\n"),
            1,
        );
        assert_ne!(moved, config, "the config names the listen address");
        std::fs::write(&self.config, moved).expect("write controller config");
        self.addr = addr;
        self.restart().await;
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (e.g. SIGSTOP, SIGCONT) to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("signal the controller");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }

    /// Applies `yaml` as the whole desired state (one source, `spec.yaml`).
    pub async fn apply(&self, yaml: &str) -> anyhow::Result<pb::ApplyResponse> {
        let resp = self
            .admin()
            .await?
            .apply(pb::ApplyRequest {
                sources: vec![pb::SourceFile {
                    name: "spec.yaml".into(),
                    content: yaml.into(),
                }],
                author: "test".into(),
                message: String::new(),
                allow_prune: true,
            })
            .await?;
        Ok(resp.into_inner())
    }

    pub async fn token(&self) -> String {
        self.labelled_token(&[]).await
    }

    /// A one-time token whose node gets `labels`.
    pub async fn labelled_token(&self, labels: &[(&str, &str)]) -> String {
        self.admin()
            .await
            .expect("admin client connects")
            .create_token(pb::CreateTokenRequest {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ttl_seconds: 600,
                name: String::new(),
                replace_revoked: false,
            })
            .await
            .expect("token created")
            .into_inner()
            .token
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
        self.kill();
    }
}

/// A small tmpfs mounted on a temporary directory (needs root), unmounted
/// when dropped: a filesystem a test can fill.
pub struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `32m`); `None` when not root.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().expect("mount point");
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "mount a tmpfs on {}", dir.path().display());
        Some(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes one file until the filesystem is full; returns its path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).expect("create filler");
        let block = vec![0u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&block[..512]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// A desired state under which nodes labelled `kind=broken` fail (see
/// [`start_ok_and_broken`]) and the others converge.
pub const OK_AND_BROKEN_SPEC: &str = r#"
roles:
  base:
    directories: [{path: /etc/app, mode: "0755"}]
    files: [{path: /etc/app/motd, content: "hello\n"}]
  broken:
    files: [{path: /etc/blocked, content: "x\n"}]
groups:
  all:
    roles: [base]
  broken:
    match: {kind: broken}
    roles: [broken]
"#;

/// Enrolls and starts one agent per `(name, kind)` (label `kind`); a
/// `broken` one has a directory where [`OK_AND_BROKEN_SPEC`] wants a file.
/// Applies that spec and waits until the others are converged and the
/// broken ones failed. The agents come back in the order given.
pub async fn start_ok_and_broken(ctl: &TestController, nodes: &[(&str, &str)]) -> Vec<TestAgent> {
    let wait = Duration::from_secs(20);
    let mut agents = Vec::new();
    for (name, kind) in nodes {
        let mut agent = TestAgent::enroll(ctl, name, &[("kind", kind)]).await;
        if *kind == "broken" {
            std::fs::create_dir_all(agent.path("/etc/blocked")).unwrap();
        }
        agent.start(Duration::from_secs(3600));
        agents.push(agent);
    }
    ctl.apply(OK_AND_BROKEN_SPEC).await.expect("apply");
    for (name, kind) in nodes {
        let want = if *kind == "broken" {
            pb::NodeStatus::Failed
        } else {
            pb::NodeStatus::Converged
        };
        ctl.wait_node(name, wait, |n| n.status() == want).await;
    }
    agents
}

/// A port nothing listens on right now, on loopback, that no other
/// caller in this process has been given.
///
/// Ports come from below the kernel's ephemeral range (32768 and up on
/// Debian), so an outgoing connection cannot take one between this call
/// and the server's bind, and a process-wide cursor hands each port out
/// once: two calls in a row can no longer return the same port, which
/// `bind(0)` and release did (an etcd member's peer port once equalled
/// another member's client port).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const LAST: u32 = 32_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Start where a concurrent test binary (another pid) is unlikely to.
    let _ = NEXT.compare_exchange(
        0,
        FIRST + (std::process::id() * 97) % (LAST - FIRST),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..(LAST - FIRST) {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (FIRST + (n - FIRST) % (LAST - FIRST)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{LAST}");
}

pub mod etcd;
pub mod node;
pub mod webdriver;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn free_port_hands_each_port_out_once_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..3000).map(|_| super::free_port()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        assert!(ports.iter().all(|p| *p < 32_768), "{ports:?}");
    }
}
