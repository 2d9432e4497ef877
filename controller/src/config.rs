//! Where things live by default, and the controller's config file.
//!
//! Convention over configuration: every command works with no flags on one
//! machine; flags beat the config file, which beats these defaults.

use crate::listener::ConnLimits;
use crate::store::{DEFAULT_PREFIX, EtcdOptions, EtcdTls};
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

/// Where the fleet's state lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// `ballast.redb` in the data dir: one controller (the default).
    #[default]
    Redb,
    /// An etcd cluster, the fleet's keys under a prefix.
    Etcd(EtcdOptions),
}

/// The raw store settings, from flags or the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreSettings {
    /// `etcd://HOST:PORT[,HOST:PORT...]`; none means redb.
    pub store: Option<String>,
    pub prefix: Option<String>,
    pub etcd_ca: Option<PathBuf>,
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
}

impl StoreSettings {
    /// Each setting from `self` where given, else from `base`.
    pub fn or(self, base: StoreSettings) -> StoreSettings {
        StoreSettings {
            store: self.store.or(base.store),
            prefix: self.prefix.or(base.prefix),
            etcd_ca: self.etcd_ca.or(base.etcd_ca),
            etcd_cert: self.etcd_cert.or(base.etcd_cert),
            etcd_key: self.etcd_key.or(base.etcd_key),
        }
    }

    /// Checks the settings and says which store to open.
    pub fn resolve(self) -> Result<StoreConfig, String> {
        let Some(url) = self.store else {
            if self.prefix.is_some()
                || self.etcd_ca.is_some()
                || self.etcd_cert.is_some()
                || self.etcd_key.is_some()
            {
                return Err(
                    "--store-prefix and --etcd-ca/--etcd-cert/--etcd-key apply to an etcd store; add --store etcd://HOST:PORT"
                        .into(),
                );
            }
            return Ok(StoreConfig::Redb);
        };
        let mut opts = EtcdOptions::from_url(&url)?;
        let prefix = self.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.len() > 256 {
            return Err(format!(
                "store prefix {prefix:?}: expected a path that starts and ends with `/`, such as /ballast/ or /fleets/eu/ (at most 256 bytes)"
            ));
        }
        opts.prefix = prefix;
        if self.etcd_cert.is_some() != self.etcd_key.is_some() {
            return Err("--etcd-cert and --etcd-key go together: give both or neither".into());
        }
        if self.etcd_ca.is_some() || self.etcd_cert.is_some() {
            opts.tls = Some(EtcdTls {
                ca: self.etcd_ca,
                cert: self.etcd_cert,
                key: self.etcd_key,
            });
        }
        Ok(StoreConfig::Etcd(opts))
    }
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
    /// redb in the data dir, or etcd.
    pub store: StoreConfig,
    /// The fleet's time; tests set a manual one.
    pub clock: crate::fleet::Clock,
    /// How often liveness is shared with peers, and how long a node whose
    /// controller died shows `reconnecting`.
    pub liveness: crate::fleet::Liveness,
    /// A file holding the scrape token: `/metrics` then also answers a
    /// request with `Authorization: Bearer TOKEN` (besides the admin
    /// certificate, which always may).
    pub metrics_token_file: Option<PathBuf>,
    /// The dashboard's address; off when unset.
    pub dashboard_listen: Option<SocketAddr>,
    /// A certificate chain and key (PEM) for the dashboard instead of the
    /// controller's own (signed by the fleet's CA).
    pub dashboard_cert: Option<PathBuf>,
    pub dashboard_key: Option<PathBuf>,
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
            store: StoreConfig::Redb,
            clock: crate::fleet::Clock::System,
            liveness: crate::fleet::Liveness::default(),
            metrics_token_file: None,
            dashboard_listen: None,
            dashboard_cert: None,
            dashboard_key: None,
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
    pub liveness_period: Option<Duration>,
    pub reconnect_grace: Option<Duration>,
    pub handshake_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_connections: Option<usize>,
    pub max_connections_per_address: Option<usize>,
    pub store: StoreSettings,
    pub metrics_token_file: Option<PathBuf>,
    pub dashboard_listen: Option<SocketAddr>,
    pub dashboard_cert: Option<PathBuf>,
    pub dashboard_key: Option<PathBuf>,
}

impl FileConfig {
    /// Sets the liveness settings this file names.
    pub fn merge_liveness(&self, liveness: &mut crate::fleet::Liveness) {
        liveness.period = self.liveness_period.unwrap_or(liveness.period);
        liveness.grace = self.reconnect_grace.unwrap_or(liveness.grace);
    }

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

const KEYS: &str = "listen, data_dir, advertise, stale_after, liveness_period, reconnect_grace, handshake_timeout, idle_timeout, max_connections, max_connections_per_address, store, store_prefix, etcd_ca, etcd_cert, etcd_key, metrics_token_file, dashboard_listen, dashboard_cert, dashboard_key";

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
/// `listen`, `data_dir`, `advertise` (comma separated), `stale_after`,
/// `liveness_period` (at least 1s), `reconnect_grace`, and the
/// connection limits `handshake_timeout`, `idle_timeout` (durations),
/// `max_connections`, `max_connections_per_address` (counts), and the store:
/// `store` (`etcd://HOST:PORT,...`), `store_prefix`, `etcd_ca`, `etcd_cert`, `etcd_key`,
/// `metrics_token_file` (the scrape token of `/metrics`), and the dashboard:
/// `dashboard_listen`, `dashboard_cert`, `dashboard_key`.
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
            "liveness_period" => {
                let d = duration(n, key, value)?;
                if d < Duration::from_secs(1) {
                    return Err(format!(
                        "{n}: liveness_period: {value:?} is under the least allowed, 1s"
                    ));
                }
                cfg.liveness_period = Some(d)
            }
            "reconnect_grace" => cfg.reconnect_grace = Some(duration(n, key, value)?),
            "handshake_timeout" => cfg.handshake_timeout = Some(duration(n, key, value)?),
            "idle_timeout" => cfg.idle_timeout = Some(duration(n, key, value)?),
            "max_connections" => cfg.max_connections = Some(count(n, key, value)?),
            "max_connections_per_address" => {
                cfg.max_connections_per_address = Some(count(n, key, value)?)
            }
            "store" => {
                EtcdOptions::from_url(value).map_err(|e| format!("{n}: store: {e}"))?;
                cfg.store.store = Some(value.to_owned())
            }
            "store_prefix" => cfg.store.prefix = Some(value.to_owned()),
            "etcd_ca" => cfg.store.etcd_ca = Some(PathBuf::from(value)),
            "etcd_cert" => cfg.store.etcd_cert = Some(PathBuf::from(value)),
            "etcd_key" => cfg.store.etcd_key = Some(PathBuf::from(value)),
            "metrics_token_file" => cfg.metrics_token_file = Some(PathBuf::from(value)),
            "dashboard_listen" => {
                cfg.dashboard_listen = Some(value.parse().map_err(|e| {
                    format!("{n}: dashboard_listen: {e}; expected HOST:PORT such as 127.0.0.1:8441")
                })?)
            }
            "dashboard_cert" => cfg.dashboard_cert = Some(PathBuf::from(value)),
            "dashboard_key" => cfg.dashboard_key = Some(PathBuf::from(value)),
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
            "# c\nlisten: 0.0.0.0:8440\nadvertise: ctl.example, 10.0.0.1\nstale_after: 2m\nliveness_period: 2s\nreconnect_grace: 30s\n",
        )
        .unwrap();
        assert_eq!(ok.advertise, vec!["ctl.example", "10.0.0.1"]);
        assert_eq!(ok.stale_after, Some(Duration::from_secs(120)));
        assert_eq!(ok.liveness_period, Some(Duration::from_secs(2)));
        assert_eq!(ok.reconnect_grace, Some(Duration::from_secs(30)));
    }

    #[test]
    fn the_store_comes_from_flags_over_the_config_file() {
        let file = parse_file_config(
            "store: etcd://10.0.0.1:2379,10.0.0.2:2379\nstore_prefix: /eu/\netcd_ca: /etc/ca.pem\n",
        )
        .unwrap();
        let flags = StoreSettings {
            prefix: Some("/us/".into()),
            ..StoreSettings::default()
        };
        let StoreConfig::Etcd(o) = flags.or(file.store).resolve().unwrap() else {
            panic!("etcd expected");
        };
        assert_eq!(o.endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(o.prefix, "/us/");
        assert_eq!(o.tls.unwrap().ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(StoreSettings::default().resolve(), Ok(StoreConfig::Redb));
        assert_eq!(
            parse_file_config("store: redis://x:1\n").unwrap_err(),
            "1: store: store \"redis://x:1\": expected etcd://HOST:PORT[,HOST:PORT...] (or no --store for the local redb file)"
        );
        let no_store = StoreSettings {
            etcd_ca: Some("/ca.pem".into()),
            ..StoreSettings::default()
        };
        assert!(
            no_store
                .resolve()
                .unwrap_err()
                .contains("add --store etcd://")
        );
        let bad_prefix = StoreSettings {
            store: Some("etcd://a:1".into()),
            prefix: Some("ballast".into()),
            ..StoreSettings::default()
        };
        assert!(
            bad_prefix
                .resolve()
                .unwrap_err()
                .starts_with("store prefix \"ballast\"")
        );
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
