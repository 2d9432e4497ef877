//! Real Debian nodes for tests: a copy of the cached bookworm root
//! (`scripts/node-root.sh`) booted with `systemd-nspawn --boot`, so systemd is
//! PID 1 and systemctl, cron, useradd and apt are the real ones. The node
//! shares the host's network (a controller on 127.0.0.1 is reachable), or
//! has a network namespace of its own ([`TestNode::boot_private_network`]:
//! `net.*` sysctls are then the node's, never the host's).

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/node-root.sh` caches the root.
pub fn root_cache() -> PathBuf {
    std::env::var_os("BALLAST_NODE_ROOT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ballast-test/bookworm"))
}

/// Whether real-node tests run: `BALLAST_NODE_TESTS=1` (set by scripts/test.sh).
/// When set, missing prerequisites fail loudly rather than skip.
pub fn enabled() -> bool {
    if std::env::var("BALLAST_NODE_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: real-node test; set BALLAST_NODE_TESTS=1 (scripts/test.sh does)");
        return false;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "BALLAST_NODE_TESTS=1 needs root"
    );
    assert!(
        root_cache().join(".ballast-root-complete").exists(),
        "no node root at {}: run scripts/node-root.sh",
        root_cache().display()
    );
    true
}

/// The agent binary installed into nodes.
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BALLAST_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/ballast-agent");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p ballast-agent` first",
        p.display()
    );
    p
}

/// A booted Debian node.
pub struct TestNode {
    pub name: String,
    /// The node's own root filesystem, seen from the host.
    pub root: PathBuf,
    child: Child,
    leader: u32,
    log: PathBuf,
    /// Booted with `--private-network`.
    private_network: bool,
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

impl TestNode {
    /// Copies the cached root, installs the agent binary, boots the node and
    /// waits until systemd says the system is up.
    pub fn boot(name: &str) -> anyhow::Result<TestNode> {
        Self::boot_with(name, |_| Ok(()))
    }

    /// Like [`TestNode::boot`], with `prepare` run on the node's root before
    /// it boots (to seed cloud-init, say).
    pub fn boot_with(
        name: &str,
        prepare: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<TestNode> {
        Self::boot_opts(name, prepare, false)
    }

    /// Like [`TestNode::boot`], in a network namespace of its own
    /// (`systemd-nspawn --private-network`: only a loopback interface).
    pub fn boot_private_network(name: &str) -> anyhow::Result<TestNode> {
        Self::boot_opts(name, |_| Ok(()), true)
    }

    fn boot_opts(
        name: &str,
        prepare: impl FnOnce(&Path) -> anyhow::Result<()>,
        private_network: bool,
    ) -> anyhow::Result<TestNode> {
        let base = PathBuf::from("/var/tmp/ballast-nodes");
        std::fs::create_dir_all(&base)?;
        let mut rnd = [0u8; 4];
        getrandom::fill(&mut rnd).map_err(|e| anyhow::anyhow!("random node suffix: {e}"))?;
        let root = base.join(format!(
            "{name}-{}",
            rnd.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ));
        let status = Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(root_cache())
            .arg(&root)
            .status()
            .context("copy node root")?;
        if !status.success() {
            bail!(
                "copying {} to {} failed",
                root_cache().display(),
                root.display()
            );
        }
        std::fs::copy(agent_binary(), root.join("usr/local/bin/ballast-agent"))
            .context("install agent binary in node")?;
        std::fs::write(root.join("etc/hostname"), format!("{name}\n"))?;
        prepare(&root)?;
        let log = root.with_extension("log");
        let child = spawn(&root, name, &log, private_network)?;
        let mut node = TestNode {
            name: name.into(),
            root,
            leader: 0,
            child,
            log,
            private_network,
        };
        node.wait_booted()?;
        Ok(node)
    }

    /// Halts the node cleanly and boots the same root again (what a reboot
    /// keeps, the root filesystem, is kept; its /tmp and kernel state are not).
    pub fn reboot(&mut self) -> anyhow::Result<()> {
        self.halt();
        self.child = spawn(&self.root, &self.name, &self.log, self.private_network)?;
        self.leader = 0;
        self.wait_booted()
    }

    /// SIGTERM to systemd-nspawn is a clean halt of the node; waits up to 20 s.
    fn halt(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn wait_booted(&mut self) -> anyhow::Result<()> {
        let name = self.name.clone();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(90);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "systemd-nspawn exited ({status}) while booting {name}: {}",
                    self.log_tail()
                );
            }
            if self.leader == 0 {
                // nspawn's child is the container's PID 1 (systemd).
                self.leader = children(self.child.id())
                    .into_iter()
                    .find(|p| {
                        std::fs::read_to_string(format!("/proc/{p}/comm"))
                            .is_ok_and(|c| c.trim() == "systemd")
                    })
                    .unwrap_or(0);
            }
            if self.leader != 0
                && let Ok(out) = self.exec(&["systemctl", "is-system-running"])
            {
                let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if state == "running" || state == "degraded" {
                    eprintln!(
                        "node {name} booted in {:.1}s ({state})",
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "node {name} did not finish booting in 90 s: {}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Runs a command inside the node (all of its namespaces, its root).
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("nsenter")
            .args([
                "-t",
                &self.leader.to_string(),
                "-a",
                "--",
                "/usr/bin/env",
                "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LC_ALL=C",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("nsenter into {}", self.name))
    }

    /// `sh -c SCRIPT` inside the node; an error carries stdout and stderr.
    pub fn sh(&self, script: &str) -> anyhow::Result<String> {
        let out = self.exec(&["sh", "-c", script])?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "in {}: `{script}` failed ({}):\n{stdout}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// A path inside the node, seen from the host (not for the node's /tmp, a tmpfs).
    pub fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// Copies a local apt repository into the node as its only source.
    pub fn install_apt_repo(&self, dir: &Path) -> anyhow::Result<()> {
        let dest = self.path("/srv/repo");
        std::fs::create_dir_all(&dest)?;
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            std::fs::copy(e.path(), dest.join(e.file_name()))?;
        }
        std::fs::write(
            self.path("/etc/apt/sources.list.d/local.list"),
            "deb [trusted=yes] file:/srv/repo ./\n",
        )?;
        self.sh("apt-get -q update >/dev/null")?;
        Ok(())
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.halt();
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Starts systemd-nspawn booting `root`; its output goes to `log` (appended,
/// so a reboot keeps the first boot's lines).
fn spawn(root: &Path, name: &str, log: &Path, private_network: bool) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = Command::new("systemd-nspawn");
    cmd.arg("-D").arg(root).args([
        "--boot",
        "--machine",
        name,
        "--register=no",
        "--keep-unit",
        "--quiet",
    ]);
    if private_network {
        cmd.arg("--private-network");
    }
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("start systemd-nspawn")
}

/// A tiny Debian package for a local repository.
pub struct TinyDeb {
    pub name: String,
    pub version: String,
    /// (absolute path, content)
    pub files: Vec<(String, String)>,
}

/// Builds tiny packages with dpkg-deb and indexes them with dpkg-scanpackages into `dir`.
pub fn build_apt_repo(dir: &Path, packages: &[TinyDeb]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for p in packages {
        let tree = tempfile::tempdir()?;
        std::fs::create_dir_all(tree.path().join("DEBIAN"))?;
        std::fs::write(
            tree.path().join("DEBIAN/control"),
            format!(
                "Package: {}\nVersion: {}\nArchitecture: all\nMaintainer: Ballast tests <tests@ballast.invalid>\nDescription: test package\n",
                p.name, p.version
            ),
        )?;
        for (path, content) in &p.files {
            let dest = tree.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().expect("file has a parent"))?;
            std::fs::write(dest, content)?;
        }
        let deb = dir.join(format!("{}_{}_all.deb", p.name, p.version));
        let out = Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(tree.path())
            .arg(&deb)
            .output()
            .context("run dpkg-deb")?;
        if !out.status.success() {
            bail!("dpkg-deb: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let out = Command::new("dpkg-scanpackages")
        .args(["--multiversion", "."])
        .current_dir(dir)
        .output()
        .context("run dpkg-scanpackages")?;
    if !out.status.success() {
        bail!(
            "dpkg-scanpackages: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(dir.join("Packages"), &out.stdout)?;
    Ok(())
}

/// A tool the tests need: present, or (on CI, where real-node tests are on) a
/// failure; for a developer without it, a skip with a message.
pub fn require_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if !found {
        assert!(
            std::env::var("BALLAST_NODE_TESTS").as_deref() != Ok("1"),
            "{tool} is required (scripts/test.sh installs it)"
        );
        eprintln!("skipped: {tool} is not installed");
    }
    found
}
