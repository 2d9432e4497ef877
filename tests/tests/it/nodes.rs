//! The engine on real Debian nodes (systemd-nspawn, systemd as PID 1): users,
//! groups, packages from a local apt repository, a managed service, a cron
//! job run by the node's cron, idempotence and drift repair.

use ballast_tests::node::{self, TestNode, TinyDeb};
use std::time::{Duration, Instant};

fn site(a: &str, b: &str, package: &str) -> String {
    format!(
        r#"roles:
  app:
    groups: [{{name: appgrp, gid: 3001}}]
    users:
      - name: deploy
        uid: 3001
        group: appgrp
        groups: [adm]
        shell: /bin/bash
        home: /home/deploy
        authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBallastTestKey test@ballast"]
    packages: [{{name: ballast-hello, ensure: {package}, notify: [demo]}}]
    directories: [{{path: /etc/demo, mode: "0755"}}]
    files:
      - {{path: /etc/demo/a.conf, content: "{a}\n", notify: [demo]}}
      - {{path: /etc/demo/b.conf, content: "{b}\n", notify: [demo]}}
    cron: [{{name: proof, schedule: "* * * * *", user: deploy, command: "date > /var/tmp/ballast-cron-proof"}}]
    services:
      - name: demo
        ensure: running
        enabled: true
        unit: |
          [Unit]
          Description=Ballast test service
          [Service]
          ExecStartPre=/bin/sh -c 'echo start >> /var/lib/demo-starts'
          ExecStart=/bin/sleep infinity
          [Install]
          WantedBy=multi-user.target
groups:
  all: {{roles: [app]}}
"#
    )
}

/// Writes the spec into the node and runs the real agent there.
fn apply(node: &TestNode, yaml: &str) -> String {
    std::fs::write(node.path("/root/site.yaml"), yaml).unwrap();
    node.sh("ballast-agent apply -f /root/site.yaml --state-dir /var/lib/ballast-agent 2>&1")
        .unwrap_or_else(|e| panic!("agent run failed: {e:#}"))
}

fn starts(node: &TestNode) -> usize {
    std::fs::read_to_string(node.path("/var/lib/demo-starts"))
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn the_engine_manages_a_real_debian_node() {
    if !node::enabled() {
        return;
    }
    let node = TestNode::boot("ballast-engine").expect("node boots");
    let repo = tempfile::tempdir().unwrap();
    node::build_apt_repo(
        repo.path(),
        &[TinyDeb {
            name: "ballast-hello".into(),
            version: "1.0".into(),
            files: vec![(
                "/usr/share/ballast-hello/hello.txt".into(),
                "hello\n".into(),
            )],
        }],
    )
    .unwrap();
    node.install_apt_repo(repo.path()).unwrap();

    let out = apply(&node, &site("a1", "b1", "present"));
    assert!(out.contains(" 0 failed"), "{out}");

    // Users and groups, per getent, with the keys in place.
    assert_eq!(
        node.sh("getent passwd deploy").unwrap().trim(),
        "deploy:x:3001:3001::/home/deploy:/bin/bash"
    );
    assert_eq!(
        node.sh("getent group appgrp").unwrap().trim(),
        "appgrp:x:3001:"
    );
    assert_eq!(node.sh("id -nG deploy").unwrap().trim(), "appgrp adm");
    assert_eq!(
        node.sh("stat -c '%a %U' /home/deploy/.ssh/authorized_keys /home/deploy/.ssh")
            .unwrap(),
        "600 deploy\n700 deploy\n"
    );
    // The package, installed by the node's apt.
    assert!(
        node.sh("dpkg-query -W -f '${Status}' ballast-hello")
            .unwrap()
            .contains("install ok installed")
    );
    // The service, from its managed unit, running and enabled.
    assert_eq!(
        node.sh("systemctl is-active demo; systemctl is-enabled demo")
            .unwrap(),
        "active\nenabled\n"
    );
    assert_eq!(starts(&node), 1);

    // A second run changes nothing.
    let out = apply(&node, &site("a1", "b1", "present"));
    assert!(out.contains(" 0 changed, 0 failed"), "{out}");

    // Two notifying files change in one run: the service restarts exactly once.
    let pid_before = node.sh("systemctl show -p MainPID --value demo").unwrap();
    let out = apply(&node, &site("a2", "b2", "present"));
    assert!(out.contains("restart (notified by a change)"), "{out}");
    assert_eq!(starts(&node), 2, "one restart for two notifying changes");
    assert_ne!(
        node.sh("systemctl show -p MainPID --value demo").unwrap(),
        pid_before
    );

    // Drift by hand is repaired by the next run.
    node.sh("echo tampered > /etc/demo/a.conf; systemctl stop demo; userdel deploy")
        .unwrap();
    let out = apply(&node, &site("a2", "b2", "present"));
    assert!(out.contains(" 0 failed"), "{out}");
    assert_eq!(node.sh("cat /etc/demo/a.conf").unwrap(), "a2\n");
    assert_eq!(node.sh("systemctl is-active demo").unwrap(), "active\n");
    assert_eq!(
        node.sh("getent passwd deploy | cut -d: -f3,7")
            .unwrap()
            .trim(),
        "3001:/bin/bash"
    );
    let out = apply(&node, &site("a2", "b2", "present"));
    assert!(
        out.contains(" 0 changed, 0 failed"),
        "repaired state is stable: {out}"
    );

    // The package is removed with the node's apt.
    let out = apply(&node, &site("a2", "b2", "absent"));
    assert!(out.contains("package[ballast-hello]: remove"), "{out}");
    assert!(
        node.sh("dpkg-query -W -f '${Status}' ballast-hello")
            .map(|s| !s.contains("install ok installed"))
            .unwrap_or(true)
    );

    // The node's real cron runs the managed job (each minute).
    let deadline = Instant::now() + Duration::from_secs(90);
    while !node.path("/var/tmp/ballast-cron-proof").exists() {
        assert!(
            Instant::now() < deadline,
            "cron did not run the job within 90 s"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        node.sh("stat -c %U /var/tmp/ballast-cron-proof")
            .unwrap()
            .trim(),
        "deploy"
    );
}
