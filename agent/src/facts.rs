//! What the agent knows about its node: system facts and custom facts.
//!
//! Custom facts come from a directory (default `/etc/ballast/facts.d`):
//! `NAME.json` files, and executables whose standard output is JSON. Both land
//! under `custom.NAME`. A broken fact is recorded as `{"error": ...}`, never a
//! failure of the whole collection.

use serde_json::{Map, Value, json};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Facts that change all the time; excluded from [`stable_hash`].
const VOLATILE: [&str; 3] = ["uptime_seconds", "load", "memory"];
const EXEC_TIMEOUT: Duration = Duration::from_secs(10);

/// `ID`, `VERSION_ID`, `NAME` and `PRETTY_NAME` of an os-release file.
pub fn parse_os_release(text: &str) -> Value {
    let mut out = Map::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let key = match k.trim() {
            "ID" => "id",
            "VERSION_ID" => "version_id",
            "NAME" => "name",
            "PRETTY_NAME" => "pretty_name",
            "VERSION_CODENAME" => "codename",
            _ => continue,
        };
        out.insert(
            key.into(),
            Value::String(v.trim().trim_matches('"').trim_matches('\'').to_owned()),
        );
    }
    Value::Object(out)
}

fn os() -> Value {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    parse_os_release(&text)
}

fn disks() -> Value {
    const PSEUDO: [&str; 12] = [
        "tmpfs", "devtmpfs", "proc", "sysfs", "overlay", "squashfs", "cgroup", "cgroup2", "devpts",
        "mqueue", "ramfs", "nsfs",
    ];
    let disks = sysinfo::Disks::new_with_refreshed_list();
    let mut out: Vec<Value> = disks
        .list()
        .iter()
        .filter(|d| !PSEUDO.contains(&d.file_system().to_string_lossy().as_ref()))
        .map(|d| {
            json!({
                "mount": d.mount_point().display().to_string(),
                "fs": d.file_system().to_string_lossy(),
                "total_bytes": d.total_space(),
                "available_bytes": d.available_space(),
            })
        })
        .collect();
    out.sort_by(|a, b| a["mount"].as_str().cmp(&b["mount"].as_str()));
    Value::Array(out)
}

fn network() -> Value {
    let nets = sysinfo::Networks::new_with_refreshed_list();
    let mut out: Vec<Value> = nets
        .list()
        .iter()
        .map(|(name, data)| {
            let mut addrs: Vec<String> = data
                .ip_networks()
                .iter()
                .map(|n| format!("{}/{}", n.addr, n.prefix))
                .collect();
            addrs.sort();
            json!({"name": name, "mac": data.mac_address().to_string(), "addresses": addrs})
        })
        .collect();
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Value::Array(out)
}

/// Runs an executable fact with a timeout; its stdout must be JSON.
fn run_fact(path: &Path) -> Result<Value, String> {
    let mut child = Command::new(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("run: {e}"))?;
    let deadline = Instant::now() + EXEC_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {}s", EXEC_TIMEOUT.as_secs()));
            }
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("read output: {e}"))?;
    if !out.status.success() {
        return Err(format!("exited with {}", out.status));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("output is not JSON: {e}"))
}

fn custom(dir: &Path) -> Value {
    let mut out = Map::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Value::Object(out);
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    let as_root = nix::unistd::geteuid().is_root();
    for path in paths {
        let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if file.starts_with('.') {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let name = file.split('.').next().unwrap_or(file).to_owned();
        let mode = meta.permissions().mode();
        let value = if mode & 0o111 != 0 {
            // Executables run as the agent (root): only trust root-owned, not group/world-writable ones.
            if as_root && (meta.uid() != 0 || mode & 0o022 != 0) {
                Err("refused: an executable fact must be owned by root and not writable by group or others".to_owned())
            } else {
                run_fact(&path)
            }
        } else if file.ends_with(".json") {
            std::fs::read(&path)
                .map_err(|e| format!("read: {e}"))
                .and_then(|b| {
                    serde_json::from_slice(&b).map_err(|e| format!("not valid JSON: {e}"))
                })
        } else {
            continue;
        };
        let value = value.unwrap_or_else(|e| {
            tracing::warn!(fact = %path.display(), error = %e, "custom fact");
            json!({ "error": e })
        });
        out.insert(name, value);
    }
    Value::Object(out)
}

/// Collects facts as a JSON object. `facts_dir` may not exist.
pub fn collect(facts_dir: &Path) -> Value {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    let load = sysinfo::System::load_average();
    json!({
        "hostname": sysinfo::System::host_name().unwrap_or_default(),
        "os": os(),
        "kernel": sysinfo::System::kernel_version().unwrap_or_default(),
        "arch": sysinfo::System::cpu_arch(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory": {"total_bytes": sys.total_memory(), "available_bytes": sys.available_memory()},
        "disks": disks(),
        "network": network(),
        "uptime_seconds": sysinfo::System::uptime(),
        "load": {"one": load.one, "five": load.five, "fifteen": load.fifteen},
        "agent_version": crate::VERSION,
        "custom": custom(facts_dir),
    })
}

/// `sha256:HEX` over the facts without the volatile ones (uptime, load,
/// memory, free disk space), so "send on change" does not fire every run.
pub fn stable_hash(facts: &Value) -> String {
    let mut f = facts.clone();
    if let Value::Object(m) = &mut f {
        for k in VOLATILE {
            m.remove(k);
        }
        if let Some(Value::Array(disks)) = m.get_mut("disks") {
            for d in disks {
                if let Value::Object(d) = d {
                    d.remove("available_bytes");
                }
            }
        }
    }
    ballast_proto::sha256_tag(f.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_have_every_documented_key() {
        let f = collect(Path::new("/nonexistent"));
        for key in [
            "hostname",
            "os",
            "kernel",
            "arch",
            "cpus",
            "memory",
            "disks",
            "network",
            "uptime_seconds",
            "load",
            "agent_version",
            "custom",
        ] {
            assert!(f.get(key).is_some(), "missing {key}: {f}");
        }
        assert!(f["cpus"].as_u64().unwrap() >= 1);
    }

    #[test]
    fn os_release_is_parsed() {
        let v = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
        );
        assert_eq!(
            v,
            json!({"pretty_name": "Debian GNU/Linux 12 (bookworm)", "name": "Debian GNU/Linux", "version_id": "12", "id": "debian"})
        );
    }

    #[test]
    fn custom_facts_from_json_and_executables_with_errors_recorded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rack.json"), r#"{"row": 3}"#).unwrap();
        std::fs::write(dir.path().join("broken.json"), "{").unwrap();
        let script = dir.path().join("app");
        std::fs::write(&script, "#!/bin/sh\necho '{\"version\": \"1.2\"}'\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join(".hidden.json"), "{}").unwrap();
        let f = collect(dir.path());
        assert_eq!(f["custom"]["rack"], json!({"row": 3}));
        assert_eq!(f["custom"]["app"], json!({"version": "1.2"}));
        assert!(
            f["custom"]["broken"]["error"]
                .as_str()
                .unwrap()
                .contains("not valid JSON")
        );
        assert!(f["custom"].get(".hidden").is_none() && f["custom"].get("").is_none());
    }

    #[test]
    fn stable_hash_ignores_volatile_facts_only() {
        let a = json!({"hostname": "a", "uptime_seconds": 1, "load": {"one": 0.1}, "disks": [{"mount": "/", "available_bytes": 5}]});
        let b = json!({"hostname": "a", "uptime_seconds": 99, "load": {"one": 3.0}, "disks": [{"mount": "/", "available_bytes": 7}]});
        let c = json!({"hostname": "b", "uptime_seconds": 1, "load": {"one": 0.1}, "disks": [{"mount": "/", "available_bytes": 5}]});
        assert_eq!(stable_hash(&a), stable_hash(&b));
        assert_ne!(stable_hash(&a), stable_hash(&c));
    }
}
