//! Bootstrap end to end on real Debian nodes: each node boots with nothing but
//! the cloud-init user-data `ballast bootstrap cloud-init` generated (NoCloud
//! seed) on an image without curl or openssl, installs the agent it downloads
//! from the controller, enrolls with its one-time token, and converges. A
//! reused token fails visibly. The python download helper is also checked on
//! this host against an in-process controller.

use ballast_controller::bootstrap;
use ballast_proto::pb;
use ballast_tests::TestController;
use ballast_tests::node::{self, TestNode};
use std::path::Path;
use std::time::{Duration, Instant};

fn spec(version: &str) -> String {
    format!(
        r#"roles:
  base:
    files: [{{path: /etc/motd, template: true, content: "{{{{ node.name }}}} is managed by Ballast ({version})\n"}}]
  web:
    groups: [{{name: www}}]
    users: [{{name: webadmin, group: www, shell: /bin/bash, authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIWebKey web@ballast"]}}]
    directories: [{{path: /srv/www}}]
    files: [{{path: /srv/www/index.html, content: "web {version}\n", notify: [webd]}}]
    cron: [{{name: web-rotate, schedule: "@daily", command: "true"}}]
    services:
      - name: webd
        ensure: running
        enabled: true
        unit: "[Unit]\nDescription=web\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n"
  db:
    users: [{{name: dbadmin, shell: /bin/sh}}]
    directories: [{{path: /etc/db}}]
    files: [{{path: /etc/db/db.conf, content: "db {version}\n"}}]
    cron: [{{name: db-backup, schedule: "0 3 * * *", command: "true"}}]
    services:
      - name: dbd
        ensure: running
        enabled: true
        unit: "[Unit]\nDescription=db\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n"
groups:
  all: {{roles: [base]}}
  web: {{match: {{role: web}}, roles: [web]}}
  db: {{match: {{role: db}}, roles: [db]}}
"#
    )
}

async fn token(ctl: &TestController, name: &str, role: &str, ttl: u64) -> String {
    let labels = [("role".to_string(), role.to_string())]
        .into_iter()
        .collect();
    ctl.admin()
        .await
        .create_token(pb::CreateTokenRequest {
            labels,
            ttl_seconds: ttl,
            name: name.into(),
            replace_revoked: false,
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

/// Tools a minimal cloud image need not have: the bootstrap must not use them.
const ABSENT_TOOLS: [&str; 3] = ["usr/bin/curl", "usr/bin/openssl", "usr/bin/wget"];

/// Boots a node whose only instruction is the generated user-data, on a root
/// without curl, openssl or wget (cloud-init and its python3 are there).
fn boot_seeded(name: &str, user_data: String) -> TestNode {
    let name_owned = name.to_owned();
    TestNode::boot_with(name, move |root: &Path| {
        for tool in ABSENT_TOOLS {
            match std::fs::remove_file(root.join(tool)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        let seed = root.join("var/lib/cloud/seed/nocloud");
        std::fs::create_dir_all(&seed)?;
        std::fs::write(seed.join("user-data"), &user_data)?;
        std::fs::write(
            seed.join("meta-data"),
            format!("instance-id: {name_owned}\nlocal-hostname: {name_owned}\n"),
        )?;
        Ok(())
    })
    .expect("node boots")
}

async fn wait_until(what: &str, timeout: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_bootstrap_from_cloud_init_and_converge() {
    if !node::enabled() {
        return;
    }
    let ctl = TestController::start_with(|c| c.agent_binary = Some(node::agent_binary())).await;
    ctl.apply(&spec("v1")).await.unwrap();

    let mut nodes = Vec::new();
    // web-1 is given a list whose first controller never answers: the
    // bootstrap, the installer, enrollment and the agent pass over it.
    let nobody = format!("127.0.0.1:{}", ballast_tests::free_port());
    for (name, role) in [("web-1", "web"), ("web-2", "web"), ("db-1", "db")] {
        let params = bootstrap::Params {
            controller: match name {
                "web-1" => format!("{nobody},{}", ctl.controller()),
                _ => ctl.controller(),
            },
            fingerprint: ctl.fingerprint.clone(),
            token: token(&ctl, name, role, 3600).await,
            name: String::new(),
        };
        let user_data = bootstrap::cloud_init(&params).unwrap();
        assert!(
            !user_data.contains("PRIVATE KEY"),
            "no secret but the one-time token"
        );
        let boot = tokio::task::spawn_blocking({
            let name = name.to_owned();
            move || boot_seeded(&name, user_data)
        });
        nodes.push((name, role, boot.await.unwrap()));
    }
    // The controller saw each node's bootstrap stages.
    let started = Instant::now();
    wait_until(
        "all three nodes converged",
        Duration::from_secs(180),
        async || {
            let list = ctl.nodes().await;
            ["web-1", "web-2", "db-1"].iter().all(|n| {
                list.iter().any(|x| {
                    x.name == *n
                        && x.status() == pb::NodeStatus::Converged
                        && x.applied_revision == 1
                })
            })
        },
    )
    .await;
    eprintln!(
        "three nodes from boot to converged in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let detail = ctl.node_detail("web-1").await;
    let stages: Vec<&str> = detail.timeline.iter().map(|e| e.stage.as_str()).collect();
    assert_eq!(
        &stages[..3],
        ["token-issued", "enrolled", "first-report"],
        "{stages:?}"
    );
    assert!(stages.contains(&"converged"), "{stages:?}");

    for (name, role, node) in &nodes {
        assert!(
            node.sh("command -v curl || command -v openssl").is_err(),
            "the node has neither curl nor openssl"
        );
        assert_eq!(
            node.sh("cat /etc/motd").unwrap(),
            format!("{name} is managed by Ballast (v1)\n")
        );
        assert_eq!(
            node.sh("systemctl is-active ballast-agent").unwrap(),
            "active\n"
        );
        if *role == "web" {
            assert!(
                node.sh("getent passwd webadmin")
                    .unwrap()
                    .ends_with(":/bin/bash\n")
            );
            assert_eq!(
                node.sh("stat -c %a /home/webadmin/.ssh/authorized_keys")
                    .unwrap(),
                "600\n"
            );
            assert_eq!(node.sh("cat /srv/www/index.html").unwrap(), "web v1\n");
            assert!(node.path("/etc/cron.d/ballast-web-rotate").exists());
            assert_eq!(
                node.sh("systemctl is-active webd; systemctl is-enabled webd")
                    .unwrap(),
                "active\nenabled\n"
            );
            assert!(
                node.sh("getent passwd dbadmin").is_err(),
                "web nodes do not get the db role"
            );
        } else {
            assert!(node.sh("getent passwd dbadmin").is_ok());
            assert_eq!(node.sh("cat /etc/db/db.conf").unwrap(), "db v1\n");
            assert!(node.path("/etc/cron.d/ballast-db-backup").exists());
            assert_eq!(node.sh("systemctl is-active dbd").unwrap(), "active\n");
            assert!(!node.path("/srv/www/index.html").exists());
        }
    }

    // A change reaches all three within seconds.
    let applied = Instant::now();
    ctl.apply(&spec("v2")).await.unwrap();
    wait_until("v2 on every node", Duration::from_secs(20), async || {
        nodes.iter().all(|(name, _, node)| {
            std::fs::read_to_string(node.path("/etc/motd"))
                .is_ok_and(|m| m == format!("{name} is managed by Ballast (v2)\n"))
        })
    })
    .await;
    eprintln!(
        "change reached three nodes in {:.2}s",
        applied.elapsed().as_secs_f64()
    );

    // The generated user-data passes the node's own cloud-init schema check.
    let (_, _, web1) = &nodes[0];
    let params = bootstrap::Params {
        controller: ctl.controller(),
        fingerprint: ctl.fingerprint.clone(),
        token: token(&ctl, "web-9", "web", 60).await,
        name: String::new(),
    };
    std::fs::write(
        web1.path("/root/user-data.yaml"),
        bootstrap::cloud_init(&params).unwrap(),
    )
    .unwrap();
    let out = web1
        .sh("cloud-init schema --config-file /root/user-data.yaml 2>&1")
        .unwrap();
    assert!(out.contains("Valid cloud-config"), "{out}");

    // Running the installer a second time changes nothing and says so.
    std::fs::write(web1.path("/root/fetch.py"), bootstrap::FETCH_PY).unwrap();
    web1.sh(&format!(
        "python3 -I /root/fetch.py get {} /bootstrap/install.sh /root/install.sh /etc/ballast/ca.pem",
        ctl.controller()
    ))
    .unwrap();
    let out = web1
        .sh("BALLAST_TOKEN=unused sh /root/install.sh 2>&1")
        .unwrap();
    assert!(
        out.contains("already enrolled") && out.contains("ballast-install: done"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_token_fails_the_bootstrap_visibly() {
    if !node::enabled() {
        return;
    }
    let ctl = TestController::start_with(|c| c.agent_binary = Some(node::agent_binary())).await;
    ctl.apply(&spec("v1")).await.unwrap();
    let tok = token(&ctl, "dup-1", "db", 3600).await;
    // Someone else spends the token first.
    let state = tempfile::tempdir().unwrap();
    ballast_agent::client::enroll(
        state.path(),
        &ctl.controller(),
        &tok,
        &ctl.fingerprint,
        "dup-1",
    )
    .await
    .unwrap();
    ctl.cli(&["node", "revoke", "dup-1"]).await;

    let params = bootstrap::Params {
        controller: ctl.controller(),
        fingerprint: ctl.fingerprint.clone(),
        token: tok,
        name: String::new(),
    };
    let node = tokio::task::spawn_blocking(move || {
        boot_seeded("dup-1", bootstrap::cloud_init(&params).unwrap())
    })
    .await
    .unwrap();
    let log = node.path("/var/log/cloud-init-output.log");
    wait_until(
        "the bootstrap failure in the node's cloud-init output",
        Duration::from_secs(120),
        async || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("FAILED at step")),
    )
    .await;
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(
        out.contains("enrollment refused") && out.contains("invalid, expired or already used"),
        "{out}"
    );
    assert!(
        out.contains("ballast-install: FAILED at step 'enroll with the one-time token'"),
        "{out}"
    );
    let detail = ctl.node_detail("dup-1").await;
    let last = detail.timeline.last().unwrap();
    assert_eq!(
        (last.stage.as_str(), last.detail.as_str()),
        ("enroll-failed", "enrollment refused: token already used")
    );
    let (code, out) = ctl.cli(&["node", "show", "dup-1"]).await;
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert!(out.contains("enroll-failed"), "{out}");
}

/// Runs `python3 fetch.py ARGS` on this host; (success, stderr).
async fn fetcher(helper: &Path, args: Vec<String>) -> (bool, String) {
    let out = tokio::process::Command::new("python3")
        .arg("-I")
        .arg(helper)
        .args(args)
        .output()
        .await
        .expect("run python3");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_fetcher_pins_the_ca_and_verifies_every_download() {
    if !node::require_tool("python3") {
        return;
    }
    let ctl = TestController::start().await;
    let dir = tempfile::tempdir().unwrap();
    let helper = dir.path().join("fetch.py");
    std::fs::write(&helper, bootstrap::FETCH_PY).unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let addr = ctl.controller();

    // A wrong pin keeps nothing.
    let wrong = format!("sha256:{}", "00".repeat(32));
    let (ok, err) = fetcher(
        &helper,
        vec!["pin".into(), addr.clone(), wrong, p("bad.pem")],
    )
    .await;
    assert!(
        !ok && err.contains("did not present a CA with fingerprint"),
        "{err}"
    );
    assert!(!dir.path().join("bad.pem").exists());

    // The right pin keeps exactly the pinned CA.
    let (ok, err) = fetcher(
        &helper,
        vec![
            "pin".into(),
            addr.clone(),
            ctl.fingerprint.clone(),
            p("ca.pem"),
        ],
    )
    .await;
    assert!(ok, "{err}");
    let pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    assert_eq!(
        ballast_controller::cli::fingerprint_of_pem(&pem).unwrap(),
        ctl.fingerprint
    );

    // A list: controllers that do not answer are passed over, in order.
    let nobody = format!("127.0.0.1:{}", ballast_tests::free_port());
    let list = format!("{nobody},{addr}");
    let (ok, err) = fetcher(
        &helper,
        vec![
            "pin".into(),
            list.clone(),
            ctl.fingerprint.clone(),
            p("ca2.pem"),
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, err) = fetcher(
        &helper,
        vec![
            "get".into(),
            list,
            "/bootstrap/install.sh".into(),
            p("install2.sh"),
            p("ca.pem"),
        ],
    )
    .await;
    assert!(ok, "{err}");
    for name in ["ca2.pem", "install2.sh"] {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    let (ok, err) = fetcher(
        &helper,
        vec![
            "get".into(),
            format!("{nobody},{nobody}"),
            "/bootstrap/install.sh".into(),
            p("z"),
            p("ca.pem"),
        ],
    )
    .await;
    assert!(
        !ok && err.contains("no controller reachable: GET https://127.0.0.1:"),
        "{err}"
    );
    assert!(!dir.path().join("z").exists());

    // Downloads are verified against that CA and nothing else.
    let (ok, err) = fetcher(
        &helper,
        vec![
            "get".into(),
            addr.clone(),
            "/bootstrap/install.sh".into(),
            p("install.sh"),
            p("ca.pem"),
        ],
    )
    .await;
    assert!(ok, "{err}");
    let installer = std::fs::read_to_string(dir.path().join("install.sh")).unwrap();
    assert!(installer.starts_with("#!/bin/sh") && installer.contains(&addr));

    let other = TestController::start().await;
    let other_ca = other.data_dir().join("pki/ca.pem").display().to_string();
    let (ok, err) = fetcher(
        &helper,
        vec![
            "get".into(),
            addr.clone(),
            "/bootstrap/install.sh".into(),
            p("x"),
            other_ca,
        ],
    )
    .await;
    assert!(!ok && err.contains("CERTIFICATE_VERIFY_FAILED"), "{err}");
    assert!(!dir.path().join("x").exists());

    let (ok, err) = fetcher(
        &helper,
        vec![
            "get".into(),
            addr,
            "/bootstrap/nothing".into(),
            p("y"),
            p("ca.pem"),
        ],
    )
    .await;
    assert!(!ok && err.contains("refused by the controller"), "{err}");
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["ca.pem", "fetch.py", "install.sh"],
        "nothing half-written"
    );
}
