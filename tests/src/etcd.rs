//! A real etcd cluster for tests: members on 127.0.0.1 with free ports, data
//! in a temp dir, killed and removed when dropped. Needs Debian's
//! `etcd-server` and `etcd-client` packages (scripts/test.sh installs them
//! as root); tests skip, saying so, where `etcd` is not installed.
//!
//! [`EtcdCluster::start_partitionable`] puts each member in a network
//! namespace of its own instead, on a bridge the cluster creates with a
//! private /24 that exists only there (the host holds `.1`, so controllers
//! on the host reach every member), so that [`EtcdCluster::partition`] can
//! cut one member from its peers honestly: members on 127.0.0.1 cannot be,
//! as all their peer traffic comes from one address.

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
    /// The address it listens on: 127.0.0.1, or its namespace's.
    host: String,
    /// The network namespace it runs in, when partitionable.
    netns: Option<String>,
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
        let mut cmd = match &self.netns {
            // `ip netns exec` execs etcd in place: the child is etcd itself.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcd"]);
                c
            }
            None => Command::new("etcd"),
        };
        let child = cmd
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

/// A running etcd cluster on loopback (or on a bridge of namespaces).
pub struct EtcdCluster {
    dir: TempDir,
    members: Vec<Member>,
    tls: Option<EtcdPki>,
    /// Dropped after the members (fields drop in order): the namespaces
    /// and the bridge go once nothing runs in them.
    net: Option<Net>,
}

/// The network of a partitionable cluster: a bridge with the host on `.1`
/// and one namespace per member on `.10`, `.11`, ...; removed on drop.
struct Net {
    bridge: String,
    subnet: String,
    namespaces: Vec<String>,
}

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// `None` (the caller skips) without root, `ip` or `iptables`.
    fn create(n: usize) -> Option<Net> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tools = [("ip", "-V"), ("iptables", "--version")]
            .iter()
            .all(|(t, v)| {
                Command::new(t)
                    .arg(v)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            });
        if !nix::unistd::geteuid().is_root() || !tools {
            eprintln!("skipped: partitions need root, ip and iptables (apt-get install iptables)");
            return None;
        }
        let k = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // Interface names stay under 16 bytes; the /24 is unique per cluster.
        let id = format!("{:x}{}", pid % 0xfff, k % 100);
        let net = Net {
            bridge: format!("blb{id}"),
            subnet: format!("10.{}.{}", 200 + pid % 50, k % 250),
            namespaces: (0..n).map(|i| format!("bln{id}m{i}")).collect(),
        };
        let (br, host) = (net.bridge.clone(), format!("{}.1/24", net.subnet));
        // Leftovers of a killed run with these names go first.
        let _ = sh(&["ip", "link", "del", &br]);
        let mut steps: Vec<Vec<String>> = vec![
            vec![
                "ip".into(),
                "link".into(),
                "add".into(),
                br.clone(),
                "type".into(),
                "bridge".into(),
            ],
            vec![
                "ip".into(),
                "addr".into(),
                "add".into(),
                host,
                "dev".into(),
                br.clone(),
            ],
            vec![
                "ip".into(),
                "link".into(),
                "set".into(),
                br.clone(),
                "up".into(),
            ],
        ];
        for (i, ns) in net.namespaces.iter().enumerate() {
            let _ = sh(&["ip", "netns", "del", ns]);
            let (vh, vn) = (format!("blv{id}h{i}"), format!("blv{id}n{i}"));
            let addr = format!("{}/24", net.host(i));
            for step in [
                vec!["ip", "netns", "add", ns],
                vec![
                    "ip", "link", "add", &vh, "type", "veth", "peer", "name", &vn,
                ],
                vec!["ip", "link", "set", &vn, "netns", ns],
                vec!["ip", "-n", ns, "link", "set", &vn, "name", "eth0"],
                vec!["ip", "-n", ns, "addr", "add", &addr, "dev", "eth0"],
                vec!["ip", "-n", ns, "link", "set", "eth0", "up"],
                vec!["ip", "-n", ns, "link", "set", "lo", "up"],
                vec!["ip", "link", "set", &vh, "master", &br],
                vec!["ip", "link", "set", &vh, "up"],
            ] {
                steps.push(step.into_iter().map(String::from).collect());
            }
        }
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            sh(&args).unwrap_or_else(|e| panic!("set up the test network: {e}"));
        }
        Some(net)
    }

    fn host(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 10 + i)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and so the pair.
        for ns in &self.namespaces {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge]);
    }
}

/// Who holds the fleet's leader key ("" when nobody): the holder names the
/// controller's address.
pub fn leader_holder(store: &EtcdStore) -> String {
    use ballast_controller::store::Store;
    store
        .get(ballast_controller::fleet::LEADER_KEY)
        .expect("read the leader key")
        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
        .unwrap_or_default()
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

    /// Starts `n` members, each in a network namespace of its own on a
    /// bridge, so that [`EtcdCluster::partition`] works; `None` (the test
    /// skips) without etcd, root, `ip` or `iptables`.
    pub fn start_partitionable(n: usize) -> Option<EtcdCluster> {
        if !etcd_installed() {
            return None;
        }
        let net = Net::create(n)?;
        Self::start_on(n, false, &[], Some(net))
    }

    /// Starts `n` members with `extra` flags each.
    pub fn start_with(n: usize, tls: bool, extra: &[&str]) -> Option<EtcdCluster> {
        if !etcd_installed() {
            return None;
        }
        Self::start_on(n, tls, extra, None)
    }

    fn start_on(n: usize, tls: bool, extra: &[&str], net: Option<Net>) -> Option<EtcdCluster> {
        let dir = tempfile::tempdir().expect("etcd temp dir");
        let pki = tls.then(|| EtcdPki::generate(dir.path()));
        let host = |i: usize| match &net {
            Some(net) => net.host(i),
            None => "127.0.0.1".to_owned(),
        };
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://{}:{peer}", host(i)))
            .collect();
        let scheme = if tls { "https" } else { "http" };
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let name = format!("m{i}");
                let h = host(i);
                let mut args: Vec<String> = [
                    "--name",
                    &name,
                    "--data-dir",
                    &dir.path().join(&name).display().to_string(),
                    "--listen-client-urls",
                    &format!("{scheme}://{h}:{client}"),
                    "--advertise-client-urls",
                    &format!("{scheme}://{h}:{client}"),
                    "--listen-peer-urls",
                    &format!("http://{h}:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://{h}:{peer}"),
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
                    netns: net.as_ref().map(|net| net.namespaces[i].clone()),
                    host: h,
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
            net,
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
            .map(|m| format!("{}:{}", m.host, m.client_port))
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
                format!("{scheme}://{}:{}", m.host, m.client_port)
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

    /// Cuts member `i` from its peers (not from the controllers): DROP
    /// rules inside its namespace for every other member's address. Needs
    /// [`EtcdCluster::start_partitionable`].
    pub fn partition(&self, i: usize) {
        let net = self.net.as_ref().expect("a partitionable cluster");
        let ns = &net.namespaces[i];
        for j in (0..self.members.len()).filter(|j| *j != i) {
            let peer = net.host(j);
            for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
                sh(&[
                    "ip", "netns", "exec", ns, "iptables", "-A", chain, dir, &peer, "-j", "DROP",
                ])
                .unwrap_or_else(|e| panic!("partition member {i}: {e}"));
            }
        }
    }

    /// Whether [`EtcdCluster::partition`] works on this cluster.
    pub fn is_partitionable(&self) -> bool {
        self.net.is_some()
    }

    /// The member that is raft leader now, as the members say.
    pub fn leader(&self) -> Option<usize> {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        doc.as_array()?.iter().find_map(|e| {
            let status = &e["Status"];
            let leads = status["leader"] == status["header"]["member_id"];
            let endpoint = e["Endpoint"].as_str()?;
            let i = self
                .members
                .iter()
                .position(|m| endpoint.ends_with(&format!("//{}:{}", m.host, m.client_port)))?;
            leads.then_some(i)
        })
    }

    /// Undoes [`EtcdCluster::partition`] of member `i`.
    pub fn heal(&self, i: usize) {
        let net = self.net.as_ref().expect("a partitionable cluster");
        let ns = &net.namespaces[i];
        for chain in ["INPUT", "OUTPUT"] {
            sh(&["ip", "netns", "exec", ns, "iptables", "-F", chain])
                .unwrap_or_else(|e| panic!("heal member {i}: {e}"));
        }
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
