//! A real etcd cluster for tests: members on 127.0.0.1 with free ports, data
//! in a temp dir, killed and removed when dropped. Needs Debian's
//! `etcd-server` and `etcd-client` packages (scripts/test.sh installs them
//! as root); tests skip, saying so, where `etcd` is not installed.

use crate::free_port;
use ballast_controller::store::{EtcdOptions, EtcdStore, EtcdTls};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a cluster may take to become healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

/// PEM files for client TLS to etcd: a CA, the members' server certificate,
/// and a client certificate the members accept.
pub struct EtcdPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdPki {
    /// Generates a CA, a server certificate for 127.0.0.1 and a client
    /// certificate, all signed by the CA, into `dir`.
    pub fn generate(dir: &Path) -> EtcdPki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "etcd test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, client: bool| {
            let key = KeyPair::generate().expect("leaf key");
            let mut p = CertificateParams::new(names).expect("leaf params");
            p.extended_key_usages = if client {
                vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]
            } else {
                vec![
                    rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                    rcgen::ExtendedKeyUsagePurpose::ClientAuth,
                ]
            };
            let cert = p.signed_by(&key, &issuer).expect("leaf certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()], false);
        let (client_cert, client_key) = leaf(vec!["ballast-controller".into()], true);
        let write = |name: &str, pem: &str| {
            let p = dir.join(name);
            std::fs::write(&p, pem).expect("write PEM");
            p
        };
        EtcdPki {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
        }
    }

    /// The client side: CA, certificate and key.
    pub fn client(&self) -> EtcdTls {
        EtcdTls {
            ca: Some(self.ca.clone()),
            cert: Some(self.client_cert.clone()),
            key: Some(self.client_key.clone()),
        }
    }
}

struct Member {
    name: String,
    client_port: u16,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("etcd log");
        let child = Command::new("etcd")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running etcd cluster on loopback.
pub struct EtcdCluster {
    dir: TempDir,
    members: Vec<Member>,
    tls: Option<EtcdPki>,
}

/// Whether `etcd` can be run here; prints why a test is skipped if not.
pub fn etcd_installed() -> bool {
    let ok = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: etcd is not installed (apt-get install etcd-server etcd-client)");
    }
    ok
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one is healthy; `None`
    /// (the test skips) when etcd is not installed.
    pub fn start(n: usize) -> Option<EtcdCluster> {
        Self::start_with(n, false, &[])
    }

    /// Like [`EtcdCluster::start`], with client TLS: the members require
    /// a client certificate signed by [`EtcdCluster::pki`]'s CA.
    pub fn start_tls(n: usize) -> Option<EtcdCluster> {
        Self::start_with(n, true, &[])
    }

    /// Starts `n` members with `extra` flags each.
    pub fn start_with(n: usize, tls: bool, extra: &[&str]) -> Option<EtcdCluster> {
        if !etcd_installed() {
            return None;
        }
        let dir = tempfile::tempdir().expect("etcd temp dir");
        let pki = tls.then(|| EtcdPki::generate(dir.path()));
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let scheme = if tls { "https" } else { "http" };
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let name = format!("m{i}");
                let mut args: Vec<String> = [
                    "--name",
                    &name,
                    "--data-dir",
                    &dir.path().join(&name).display().to_string(),
                    "--listen-client-urls",
                    &format!("{scheme}://127.0.0.1:{client}"),
                    "--advertise-client-urls",
                    &format!("{scheme}://127.0.0.1:{client}"),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "ballast-test",
                    "--heartbeat-interval",
                    "100",
                    "--election-timeout",
                    "1000",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                if let Some(p) = &pki {
                    for (flag, path) in [
                        ("--trusted-ca-file", &p.ca),
                        ("--cert-file", &p.server_cert),
                        ("--key-file", &p.server_key),
                    ] {
                        args.push(flag.into());
                        args.push(path.display().to_string());
                    }
                    args.push("--client-cert-auth".into());
                }
                args.extend(extra.iter().map(|s| s.to_string()));
                Member {
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    client_port: *client,
                    args,
                    child: None,
                }
            })
            .collect();
        let mut cluster = EtcdCluster {
            dir,
            members,
            tls: pki,
        };
        for m in &mut cluster.members {
            m.spawn();
        }
        cluster.wait_healthy();
        Some(cluster)
    }

    /// `HOST:PORT` of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// `etcd://HOST:PORT,...` for `ballast serve --store`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    /// The certificates of a TLS cluster.
    pub fn pki(&self) -> &EtcdPki {
        self.tls.as_ref().expect("a TLS cluster")
    }

    /// Store options for this cluster under `prefix` (with the client
    /// certificate on a TLS cluster).
    pub fn options(&self, prefix: &str) -> EtcdOptions {
        EtcdOptions {
            endpoints: self.endpoints(),
            prefix: prefix.into(),
            tls: self.tls.as_ref().map(EtcdPki::client),
        }
    }

    /// A store on this cluster under `prefix`.
    pub fn store(&self, prefix: &str) -> EtcdStore {
        EtcdStore::connect(&self.options(prefix)).expect("connect to the test etcd")
    }

    /// `etcdctl` (API v3) against every live member.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://127.0.0.1:{}", m.client_port)
            })
            .collect();
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=5s");
        if let Some(p) = &self.tls {
            cmd.arg(format!("--cacert={}", p.ca.display()))
                .arg(format!("--cert={}", p.client_cert.display()))
                .arg(format!("--key={}", p.client_key.display()));
        }
        cmd.args(args).output().expect("run etcdctl")
    }

    /// Waits until every live member reports healthy.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            let out = self.etcdctl(&["endpoint", "health"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy within {HEALTHY_WITHIN:?}: {}{}\nlogs:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to member `i`.
    pub fn signal(&self, i: usize, signal: nix::sys::signal::Signal) {
        let child = self.members[i].child.as_ref().expect("member runs");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)
            .expect("signal etcd");
    }

    /// Starts member `i` again on its data dir, and waits for health.
    pub fn restart(&mut self, i: usize) {
        self.members[i].kill();
        self.members[i].spawn();
        self.wait_healthy();
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The end of every member's log, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let text = std::fs::read_to_string(&m.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("== {}\n{}\n", m.name, tail.join("\n"))
            })
            .collect()
    }

    /// The temp dir holding data dirs, logs and certificates.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            // SIGKILL ends a stopped process too.
            m.kill();
        }
    }
}
