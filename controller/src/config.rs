//! Where things live by default, and the controller's config file.
//!
//! Convention over configuration: every command works with no flags on one
//! machine; flags beat the config file, which beats these defaults.

use crate::listener::ConnLimits;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The admin and agent gRPC API, one port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8440";
/// What clients dial when nothing else is said.
pub const DEFAULT_CONTROLLER: &str = "127.0.0.1:8440";
/// A node is stale when nothing was heard from it for this long.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(90);
/// Read when present and no `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/ballast/controller.yaml";

/// `/var/lib/ballast` for root, `$XDG_DATA_HOME/ballast` (or `~/.local/share/ballast`) otherwise.
pub fn default_data_dir() -> PathBuf {
    if nix_is_root() {
        return PathBuf::from("/var/lib/ballast");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("ballast");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/share/ballast")
}

fn nix_is_root() -> bool {
    // Reading /proc avoids a libc call here; the effective uid is field 2 of `Uid:`.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Settings of `ballast serve` after flags, file and defaults are merged.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Extra names or addresses the server certificate covers (for remote agents).
    pub advertise: Vec<String>,
    pub stale_after: Duration,
    /// The agent binary served to bootstrapping nodes; found beside `ballast` when unset.
    pub agent_binary: Option<PathBuf>,
    /// Timeouts and caps at the accept boundary.
    pub connections: ConnLimits,
    /// The fleet's time; tests set a manual one.
    pub clock: crate::fleet::Clock,
}

impl ServeConfig {
    pub fn defaults() -> ServeConfig {
        ServeConfig {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("default listen address parses"),
            data_dir: default_data_dir(),
            advertise: Vec::new(),
            stale_after: DEFAULT_STALE_AFTER,
            agent_binary: None,
            connections: ConnLimits::default(),
            clock: crate::fleet::Clock::System,
        }
    }
}

/// Values read from a config file; each is optional.
#[derive(Debug, Default, PartialEq)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub advertise: Vec<String>,
    pub stale_after: Option<Duration>,
    pub handshake_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_connections: Option<usize>,
    pub max_connections_per_address: Option<usize>,
}

impl FileConfig {
    /// Sets the connection limits this file names; the others stay as they are.
    pub fn merge_connections(&self, limits: &mut ConnLimits) {
        if let Some(d) = self.handshake_timeout {
            limits.handshake_timeout = d;
        }
        if let Some(d) = self.idle_timeout {
            limits.idle_timeout = d;
        }
        if let Some(n) = self.max_connections {
            limits.max_connections = Some(n);
        }
        if let Some(n) = self.max_connections_per_address {
            limits.max_connections_per_address = n;
        }
    }
}

const KEYS: &str = "listen, data_dir, advertise, stale_after, handshake_timeout, idle_timeout, max_connections, max_connections_per_address";

fn duration(n: usize, key: &str, value: &str) -> Result<Duration, String> {
    ballast_proto::parse_duration(value).map_err(|e| format!("{n}: {key}: {e}"))
}

fn count(n: usize, key: &str, value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(format!(
            "{n}: {key}: expected a whole number of connections above 0, got {value:?}"
        )),
    }
}

/// Reads a config file of flat `key: value` lines (YAML subset):
/// `listen`, `data_dir`, `advertise` (comma separated), `stale_after`, and the
/// connection limits `handshake_timeout`, `idle_timeout` (durations),
/// `max_connections`, `max_connections_per_address` (counts).
pub fn read_file_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read config file {}", path.display()))?;
    parse_file_config(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))
}

fn parse_file_config(text: &str) -> Result<FileConfig, String> {
    let mut cfg = FileConfig::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split(" #").next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!("{n}: expected `key: value`, got {line:?}"));
        };
        let value = value.trim().trim_matches('"');
        let key = key.trim();
        match key {
            "listen" => {
                cfg.listen = Some(value.parse().map_err(|e| {
                    format!("{n}: listen: {e}; expected HOST:PORT such as 127.0.0.1:8440")
                })?)
            }
            "data_dir" => cfg.data_dir = Some(PathBuf::from(value)),
            "advertise" => {
                cfg.advertise = value
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            "stale_after" => {
                cfg.stale_after = Some(
                    ballast_proto::parse_duration(value)
                        .map_err(|e| format!("{n}: stale_after: {e}"))?,
                )
            }
            "handshake_timeout" => cfg.handshake_timeout = Some(duration(n, key, value)?),
            "idle_timeout" => cfg.idle_timeout = Some(duration(n, key, value)?),
            "max_connections" => cfg.max_connections = Some(count(n, key, value)?),
            "max_connections_per_address" => {
                cfg.max_connections_per_address = Some(count(n, key, value)?)
            }
            other => {
                return Err(format!("{n}: unknown key `{other}`; allowed: {KEYS}"));
            }
        }
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_rejects_unknown_keys_with_line() {
        let err = parse_file_config("listen: 127.0.0.1:9000\nlisten_addr: x\n").unwrap_err();
        assert_eq!(
            err,
            format!("2: unknown key `listen_addr`; allowed: {KEYS}")
        );
        let ok = parse_file_config(
            "# c\nlisten: 0.0.0.0:8440\nadvertise: ctl.example, 10.0.0.1\nstale_after: 2m\n",
        )
        .unwrap();
        assert_eq!(ok.advertise, vec!["ctl.example", "10.0.0.1"]);
        assert_eq!(ok.stale_after, Some(Duration::from_secs(120)));
    }

    #[test]
    fn connection_limits_come_from_the_config_file() {
        let f = parse_file_config(
            "handshake_timeout: 3s\nidle_timeout: 1m\nmax_connections: 5000\nmax_connections_per_address: 64\n",
        )
        .unwrap();
        let mut limits = ConnLimits::default();
        f.merge_connections(&mut limits);
        assert_eq!(limits.handshake_timeout, Duration::from_secs(3));
        assert_eq!(limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(limits.max_connections, Some(5000));
        assert_eq!(limits.max_connections_per_address, 64);
        assert_eq!(
            parse_file_config("max_connections: 0\n").unwrap_err(),
            "1: max_connections: expected a whole number of connections above 0, got \"0\""
        );
        assert_eq!(
            parse_file_config("idle_timeout: 0s\n").unwrap_err(),
            "1: idle_timeout: invalid duration \"0s\": it must be more than zero"
        );
    }
}
