//! Packaging and scripts: shellcheck on the rendered bootstrap scripts, and
//! the .deb packages installed, started, reinstalled and removed on a real
//! Debian node.

use ballast_controller::bootstrap;
use ballast_tests::node::{self, TestNode};
use std::path::Path;
use std::process::Command;

#[test]
fn rendered_bootstrap_scripts_pass_shellcheck() {
    if !node::require_tool("shellcheck") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let params = bootstrap::Params {
        controller: "ctl.example:8440".into(),
        fingerprint: format!("sha256:{}", "ab".repeat(32)),
        token: format!("blt_{}", "01".repeat(32)),
        name: "web-1".into(),
    };
    std::fs::write(
        dir.path().join("bootstrap.sh"),
        bootstrap::script(&params).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("install.sh"),
        bootstrap::install_script("ctl.example:8440", &params.fingerprint).unwrap(),
    )
    .unwrap();
    for script in ["bootstrap.sh", "install.sh"] {
        let out = Command::new("shellcheck")
            .args(["-s", "sh"])
            .arg(dir.path().join(script))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn debs_install_start_keep_config_and_remove_cleanly() {
    if !node::enabled() {
        return;
    }
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let bin = top.join("target/debug");
    assert!(
        bin.join("ballast").exists(),
        "build the binaries first: cargo build -p ballast-controller -p ballast-agent"
    );
    let dist = tempfile::tempdir().unwrap();
    let out = Command::new(top.join("packaging/build.sh"))
        .env("BALLAST_BIN_DIR", &bin)
        .env("BALLAST_DIST_DIR", dist.path())
        .env("BALLAST_DEB_COMPRESS", "gzip")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<String> = std::fs::read_dir(dist.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for want in [
        "ballast_",
        "ballast-agent_",
        "ballast-0.1.0-",
        "ballast-agent-0.1.0-",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(want)),
            "{want}* in {names:?}"
        );
    }
    assert!(
        names.iter().any(|n| n.ends_with(".tar.gz.sha256")),
        "{names:?}"
    );
    let sums = Command::new("sh")
        .arg("-c")
        .arg("sha256sum -c *.sha256")
        .current_dir(dist.path())
        .output()
        .unwrap();
    assert!(
        sums.status.success(),
        "release checksums verify: {}",
        String::from_utf8_lossy(&sums.stdout)
    );

    let node = TestNode::boot("ballast-pkg").expect("node boots");
    std::fs::create_dir_all(node.path("/root/debs")).unwrap();
    for n in names.iter().filter(|n| n.ends_with(".deb")) {
        std::fs::copy(dist.path().join(n), node.path(&format!("/root/debs/{n}"))).unwrap();
    }
    node.sh("dpkg -i /root/debs/*.deb >/dev/null").unwrap();
    node.sh("systemd-analyze verify /lib/systemd/system/ballast.service /lib/systemd/system/ballast-agent.service").unwrap();
    assert_eq!(
        node.sh("systemctl is-enabled ballast ballast-agent")
            .unwrap(),
        "enabled\nenabled\n"
    );

    // An operator changes the config; the controller starts as its own user.
    let port = ballast_tests::free_port();
    std::fs::write(
        node.path("/etc/ballast/controller.yaml"),
        format!("listen: 127.0.0.1:{port}\n"),
    )
    .unwrap();
    node.sh("systemctl start ballast").unwrap();
    let probe = format!(
        "for i in $(seq 100); do ballast history --controller 127.0.0.1:{port} --data-dir /var/lib/ballast >/dev/null 2>&1 && exit 0; sleep 0.1; done; journalctl -u ballast --no-pager | tail -20; exit 1"
    );
    node.sh(&probe).unwrap();
    assert_eq!(node.sh("ps -o user= -C ballast").unwrap().trim(), "ballast");
    assert_eq!(
        node.sh("stat -c '%U %a' /var/lib/ballast").unwrap().trim(),
        "ballast 700"
    );
    // The agent unit refuses to start before enrollment, and says why.
    assert!(node.sh("systemctl start ballast-agent").is_err());

    // Reinstalling keeps the changed config and restarts the running controller.
    node.sh("dpkg -i /root/debs/ballast_*.deb >/dev/null")
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(node.path("/etc/ballast/controller.yaml")).unwrap(),
        format!("listen: 127.0.0.1:{port}\n")
    );
    node.sh(&probe).unwrap();

    // Removing stops and removes it; the data dir stays until purge.
    node.sh("dpkg -r ballast ballast-agent >/dev/null").unwrap();
    assert_eq!(
        node.exec(&["systemctl", "is-active", "ballast"])
            .unwrap()
            .stdout,
        b"inactive\n"
    );
    assert!(
        !node.path("/usr/bin/ballast").exists() && !node.path("/usr/bin/ballast-agent").exists()
    );
    assert!(
        node.path("/var/lib/ballast/ballast.redb").exists(),
        "remove keeps the data"
    );
    node.sh("dpkg -P ballast >/dev/null").unwrap();
    assert!(!node.path("/var/lib/ballast").exists(), "purge deletes it");
}
