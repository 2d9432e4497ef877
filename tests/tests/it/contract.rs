//! The resource contract on a real Debian node: what leaves the desired
//! state is the same kind run with `ensure: absent` (services stopped,
//! disabled and their agent-written unit removed; users keep their home
//! unless `remove_home: true`).

use ballast_tests::node::{self, TestNode};

/// Writes the spec into the node and runs the real agent there.
fn apply(node: &TestNode, yaml: &str) -> String {
    std::fs::write(node.path("/root/site.yaml"), yaml).unwrap();
    node.sh("ballast-agent apply -f /root/site.yaml --state-dir /var/lib/ballast-agent 2>&1")
        .unwrap_or_else(|e| panic!("agent run failed: {e:#}"))
}

const WITH_SERVICE: &str = r#"roles:
  app:
    users: [{name: keeper}, {name: goner}]
    services:
      - name: demo
        ensure: running
        enabled: true
        unit: |
          [Unit]
          Description=Ballast contract test
          [Service]
          ExecStart=/bin/sleep infinity
          [Install]
          WantedBy=multi-user.target
groups:
  all: {roles: [app]}
"#;

const WITHOUT_SERVICE: &str = r#"roles:
  app:
    users: [{name: goner, ensure: absent, remove_home: true}]
groups:
  all: {roles: [app]}
"#;

#[test]
fn a_service_that_leaves_the_desired_state_is_stopped_disabled_and_its_unit_removed() {
    if !node::enabled() {
        return;
    }
    let node = TestNode::boot("ballast-contract").expect("node boots");
    let out = apply(&node, WITH_SERVICE);
    assert!(out.contains(" 0 failed"), "{out}");
    assert_eq!(
        node.sh("systemctl is-active demo; systemctl is-enabled demo")
            .unwrap(),
        "active\nenabled\n"
    );
    assert!(node.path("/home/keeper").is_dir() && node.path("/home/goner").is_dir());

    let out = apply(&node, WITHOUT_SERVICE);
    assert!(out.contains(" 0 failed"), "{out}");
    assert!(
        out.contains("service[demo]: stop (no longer in desired state)")
            && out.contains("disable (no longer in desired state)")
            && out.contains("remove unit file and reload systemd (no longer in desired state)"),
        "{out}"
    );
    let state = node
        .sh("systemctl is-active demo; systemctl is-enabled demo; true")
        .unwrap();
    assert!(state.starts_with("inactive\n"), "{state}");
    assert!(
        !state.contains("enabled\n") || state.contains("not-found"),
        "{state}"
    );
    assert!(!node.path("/etc/systemd/system/demo.service").exists());
    // systemd forgot the unit: the daemon-reload ran.
    assert_eq!(
        node.sh("systemctl show -p LoadState --value demo").unwrap(),
        "not-found\n"
    );
    // A user that left the desired state keeps its home; one removed with
    // `remove_home: true` loses it.
    assert!(
        node.sh("getent passwd keeper goner; true")
            .unwrap()
            .is_empty()
    );
    assert!(node.path("/home/keeper").is_dir());
    assert!(!node.path("/home/goner").exists());

    let out = apply(&node, WITHOUT_SERVICE);
    assert!(out.contains(" 0 changed, 0 failed"), "{out}");
}

const WITH_SYSCTL: &str = r#"roles:
  net:
    sysctl: [{key: net.ipv4.ip_forward, value: "1"}]
groups:
  all: {roles: [net]}
"#;

const WITHOUT_SYSCTL: &str = r#"roles:
  net:
    files: [{path: /etc/motd, content: "hi\n"}]
groups:
  all: {roles: [net]}
"#;

/// Runs only inside a node with its own network namespace: `net.*` keys
/// there are the node's, and the host's value is checked to stay as it was.
#[test]
fn sysctl_applies_live_and_persists_across_a_reboot() {
    if !node::enabled() {
        return;
    }
    let host_value = || std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let on_host = host_value();
    let mut node = TestNode::boot_private_network("ballast-sysctl").expect("node boots");
    let live = |node: &TestNode| node.sh("cat /proc/sys/net/ipv4/ip_forward").unwrap();
    assert_eq!(live(&node), "0\n", "a new network namespace starts at 0");

    let out = apply(&node, WITH_SYSCTL);
    assert!(out.contains(" 0 failed"), "{out}");
    assert!(
        out.contains("sysctl[net.ipv4.ip_forward]: persist 1 in /etc/sysctl.d/90-ballast.conf")
            && out.contains("sysctl[net.ipv4.ip_forward]: live value 0 -> 1"),
        "{out}"
    );
    assert_eq!(live(&node), "1\n");
    assert_eq!(
        node.sh("cat /etc/sysctl.d/90-ballast.conf").unwrap(),
        "# Managed by Ballast: one line per sysctl resource; local changes are overwritten.\nnet.ipv4.ip_forward = 1\n"
    );
    let out = apply(&node, WITH_SYSCTL);
    assert!(out.contains(" 0 changed, 0 failed"), "{out}");

    // Persisted: after a reboot systemd-sysctl sets it again, and the agent
    // finds nothing to do.
    node.reboot().expect("node reboots");
    assert_eq!(live(&node), "1\n", "the value survives a reboot");
    let out = apply(&node, WITH_SYSCTL);
    assert!(out.contains(" 0 changed, 0 failed"), "{out}");

    // Removal deletes the persisted entry (the file, its last one) and
    // leaves the live value.
    let out = apply(&node, WITHOUT_SYSCTL);
    assert!(
        out.contains("remove from /etc/sysctl.d/90-ballast.conf (live value kept)"),
        "{out}"
    );
    assert!(!node.path("/etc/sysctl.d/90-ballast.conf").exists());
    assert_eq!(live(&node), "1\n");
    assert_eq!(host_value(), on_host, "the host's own value is untouched");
}

fn packages(a: &str, b: &str) -> String {
    format!(
        "roles:\n  p:\n    packages: [{{name: ballast-a, ensure: {a}}}, {{name: ballast-b, ensure: {b}}}]\ngroups:\n  all: {{roles: [p]}}\n"
    )
}

/// A package that leaves (or is declared absent) is removed in the same
/// apt transaction as the installs of the run: one entry in apt's history.
#[test]
fn a_package_removal_joins_the_run_s_one_apt_transaction() {
    if !node::enabled() {
        return;
    }
    let node = TestNode::boot("ballast-apt").expect("node boots");
    let repo = tempfile::tempdir().unwrap();
    let deb = |name: &str| node::TinyDeb {
        name: name.into(),
        version: "1.0".into(),
        files: vec![(format!("/usr/share/{name}/x"), "x\n".into())],
    };
    node::build_apt_repo(repo.path(), &[deb("ballast-a"), deb("ballast-b")]).unwrap();
    node.install_apt_repo(repo.path()).unwrap();
    let transactions = || {
        std::fs::read_to_string(node.path("/var/log/apt/history.log"))
            .unwrap_or_default()
            .split("Start-Date:")
            .skip(1)
            .map(str::to_owned)
            .collect::<Vec<String>>()
    };
    let out = apply(&node, &packages("present", "absent"));
    assert!(out.contains("package[ballast-a]: install"), "{out}");
    let before = transactions().len();

    let out = apply(&node, &packages("absent", "present"));
    assert!(
        out.contains("package[ballast-a]: remove") && out.contains("package[ballast-b]: install"),
        "{out}"
    );
    let after = transactions();
    assert_eq!(after.len(), before + 1, "one apt transaction: {after:?}");
    let last = after.last().unwrap();
    assert!(
        last.contains("Install: ballast-b:") && last.contains("Remove: ballast-a:"),
        "{last}"
    );
    let installed = node
        .sh("dpkg-query -W -f '${Package} ${db:Status-Status}\\n' ballast-a ballast-b; true")
        .unwrap();
    assert!(
        installed.contains("ballast-b installed") && !installed.contains("ballast-a installed"),
        "{installed}"
    );
}
