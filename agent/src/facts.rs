//! What the agent knows about its node: system facts, custom facts, and the
//! host figures operators want at a glance.
//!
//! Custom facts come from a directory (default `/etc/ballast/facts.d`):
//! `NAME.json` files, and executables whose standard output is JSON. Both land
//! under `custom.NAME`. A broken fact is recorded as `{"error": ...}`, never a
//! failure of the whole collection.
//!
//! Host figures (load, memory, disk use of `/` and of the state dir's
//! filesystem, uptime) change all the time, so they are not facts: they go
//! in their own small record, and [`HostPacer`] sends them at most once per
//! interval and only when one moved past its threshold ([`moved`]): an idle
//! fleet sends none, a busy one at most one per node per interval.

use ballast_proto::pb;
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

/// How often host figures may be sent by default (`--host-figures-every`).
pub const DEFAULT_HOST_FIGURES_EVERY: Duration = Duration::from_secs(300);

/// Samples the host figures: `/proc` through sysinfo, and `statvfs` of `/`
/// and of `state_dir`.
pub fn host_figures(state_dir: &Path) -> pb::HostFigures {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    let load = sysinfo::System::load_average();
    let total = sys.total_memory();
    let mounts: Vec<std::path::PathBuf> = sysinfo::Disks::new_with_refreshed_list()
        .list()
        .iter()
        .map(|d| d.mount_point().to_owned())
        .collect();
    let finite = |v: f64| if v.is_finite() { v.max(0.0) } else { 0.0 };
    pb::HostFigures {
        load1: finite(load.one),
        load5: finite(load.five),
        load15: finite(load.fifteen),
        memory_total_bytes: total,
        memory_used_bytes: total.saturating_sub(sys.available_memory()).min(total),
        root: Some(disk_use(Path::new("/"), &mounts)),
        state: Some(disk_use(state_dir, &mounts)),
        uptime_seconds: sysinfo::System::uptime(),
    }
}

/// The filesystem holding `path`: its mount point (the longest of `mounts`
/// above the path) and its size and use as `df` counts them.
fn disk_use(path: &Path, mounts: &[std::path::PathBuf]) -> pb::DiskUse {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let mount = mounts
        .iter()
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
        .map_or_else(|| "/".to_owned(), |m| m.display().to_string());
    let mut mount: String = mount.chars().filter(|c| !c.is_control()).collect();
    if mount.len() > ballast_proto::limits::MAX_MOUNT_BYTES {
        mount = "(too long)".to_owned();
    }
    let (total, used) = match nix::sys::statvfs::statvfs(&path) {
        Ok(s) => {
            let unit = s.fragment_size();
            let blocks = s.blocks();
            let free = s.blocks_free().min(blocks);
            (blocks * unit, (blocks - free) * unit)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "statvfs for host figures");
            (0, 0)
        }
    };
    pb::DiskUse {
        mount,
        total_bytes: total,
        used_bytes: used,
    }
}

/// Whether `new` differs from `old` enough to be worth a store write: a
/// reboot (uptime went back), a load average by at least 0.5 and a quarter
/// of its old value, memory use by 5% of the total, a filesystem's use by
/// 1% of its size, or any size or mount point.
pub fn moved(old: &pb::HostFigures, new: &pb::HostFigures) -> bool {
    let load = |a: f64, b: f64| (a - b).abs() >= (0.25 * a).max(0.5);
    let share = |a: u64, b: u64, total: u64, percent: u64| {
        a.abs_diff(b).saturating_mul(100) >= total.saturating_mul(percent).max(1)
    };
    let disk = |a: &Option<pb::DiskUse>, b: &Option<pb::DiskUse>| match (a, b) {
        (Some(a), Some(b)) => {
            a.mount != b.mount
                || a.total_bytes != b.total_bytes
                || share(a.used_bytes, b.used_bytes, a.total_bytes, 1)
        }
        (a, b) => a.is_some() != b.is_some(),
    };
    new.uptime_seconds < old.uptime_seconds
        || load(old.load1, new.load1)
        || load(old.load5, new.load5)
        || load(old.load15, new.load15)
        || old.memory_total_bytes != new.memory_total_bytes
        || share(
            old.memory_used_bytes,
            new.memory_used_bytes,
            old.memory_total_bytes,
            5,
        )
        || disk(&old.root, &new.root)
        || disk(&old.state, &new.state)
}

/// The rate bound of host figures: the first figures go at once; after
/// that a pass samples only once `every` has passed since the last send,
/// and sends only figures that [`moved`] from the last sent.
#[derive(Debug)]
pub struct HostPacer {
    every: Duration,
    last: Option<(Instant, pb::HostFigures)>,
}

impl HostPacer {
    pub fn new(every: Duration) -> HostPacer {
        HostPacer { every, last: None }
    }

    /// Whether a pass at `now` should sample the figures at all.
    pub fn due(&self, now: Instant) -> bool {
        self.last
            .as_ref()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= self.every)
    }

    /// Whether figures sampled at a due pass are worth sending.
    pub fn worth_sending(&self, figures: &pb::HostFigures) -> bool {
        self.last
            .as_ref()
            .is_none_or(|(_, last)| moved(last, figures))
    }

    /// The figures were sent (or refused for good) at `now`.
    pub fn sent(&mut self, now: Instant, figures: pb::HostFigures) {
        self.last = Some((now, figures));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(load1: f64, mem_used: u64, root_used: u64, uptime: u64) -> pb::HostFigures {
        let disk = |mount: &str, used| {
            Some(pb::DiskUse {
                mount: mount.into(),
                total_bytes: 1000,
                used_bytes: used,
            })
        };
        pb::HostFigures {
            load1,
            load5: 1.0,
            load15: 1.0,
            memory_total_bytes: 1000,
            memory_used_bytes: mem_used,
            root: disk("/", root_used),
            state: disk("/var", 100),
            uptime_seconds: uptime,
        }
    }

    #[test]
    fn host_figures_move_only_past_their_thresholds() {
        let base = figures(1.0, 500, 500, 1000);
        // Noise: uptime runs on, load within 0.5, memory within 5%, disk within 1%.
        assert!(!moved(&base, &figures(1.4, 540, 509, 99_999)));
        for (what, new) in [
            ("load", figures(1.5, 500, 500, 1000)),
            ("memory", figures(1.0, 450, 500, 1000)),
            ("disk", figures(1.0, 500, 510, 1000)),
            ("reboot", figures(1.0, 500, 500, 10)),
        ] {
            assert!(moved(&base, &new), "{what} should count as moved");
        }
        // A high load moves by a quarter of itself, not by 0.5.
        assert!(!moved(&figures(8.0, 0, 0, 1), &figures(9.9, 0, 0, 2)));
        assert!(moved(&figures(8.0, 0, 0, 1), &figures(10.0, 0, 0, 2)));
        let mut remounted = base.clone();
        remounted.state.as_mut().unwrap().mount = "/srv".into();
        assert!(moved(&base, &remounted));
    }

    #[test]
    fn host_pacer_sends_at_most_once_per_interval_and_only_what_moved() {
        let every = Duration::from_secs(300);
        let mut pacer = HostPacer::new(every);
        let t0 = Instant::now();
        let first = figures(0.1, 100, 100, 10);
        assert!(
            pacer.due(t0) && pacer.worth_sending(&first),
            "the first goes at once"
        );
        pacer.sent(t0, first.clone());
        let busy = figures(50.0, 900, 900, 20);
        // Within the interval nothing is even sampled, however much moved.
        for secs in [0, 1, 60, 299] {
            assert!(!pacer.due(t0 + Duration::from_secs(secs)), "{secs}s");
        }
        let later = t0 + every;
        assert!(pacer.due(later));
        // Due, but unchanged: nothing sent, and it stays due.
        assert!(!pacer.worth_sending(&figures(0.2, 110, 105, 400)));
        assert!(pacer.due(later + Duration::from_secs(30)));
        assert!(pacer.worth_sending(&busy));
        pacer.sent(later, busy);
        assert!(!pacer.due(later + Duration::from_secs(299)));
    }

    #[test]
    fn host_figures_of_this_machine_are_in_range() {
        let dir = tempfile::tempdir().unwrap();
        let h = host_figures(dir.path());
        let checked = ballast_proto::limits::CheckedHost::try_from(h.clone());
        assert!(checked.is_ok(), "{checked:?}");
        assert!(h.memory_total_bytes > 0 && h.uptime_seconds > 0, "{h:?}");
        let root = h.root.unwrap();
        assert_eq!(root.mount, "/");
        assert!(root.total_bytes > 0 && root.used_bytes <= root.total_bytes);
        let state = h.state.unwrap();
        assert!(
            state.total_bytes > 0 && state.mount.starts_with('/'),
            "{state:?}"
        );
    }

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
