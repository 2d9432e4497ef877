//! `service` resources: a systemd service running or stopped, enabled or not,
//! optionally with its unit file (`/etc/systemd/system/NAME.service`, followed
//! by a daemon-reload when it changes). A service restarts once per run when
//! something that notifies it changed (see the engine's pending restarts).

use crate::engine::Resource;
use crate::host::{Host, Kind};
use anyhow::bail;
use ballast_proto::spec::{Service, ServiceEnsure};
use std::fmt;

pub struct ServiceRes<'a> {
    pub spec: &'a Service,
    /// A notifier changed (in this run or a run that failed before restarting).
    pub restart_pending: bool,
}

pub struct Observed {
    active: bool,
    /// `systemctl is-enabled` output: enabled, disabled, static, masked, ...
    enabled: String,
    /// Whether the managed unit file differs from the desired content.
    unit_differs: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    WriteUnit,
    Enable,
    Disable,
    Start,
    Stop,
    Restart { why: &'static str },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::WriteUnit => write!(f, "write unit file and reload systemd"),
            Change::Enable => write!(f, "enable"),
            Change::Disable => write!(f, "disable"),
            Change::Start => write!(f, "start"),
            Change::Stop => write!(f, "stop"),
            Change::Restart { why } => write!(f, "restart ({why})"),
        }
    }
}

pub fn unit_path(name: &str) -> String {
    format!("/etc/systemd/system/{name}.service")
}

/// The argv of one systemctl call on a unit: the verb and its options, then
/// `--`, then the unit, so a unit name can never be read as an option.
pub fn systemctl_args<'a>(verb: &[&'a str], unit: &'a str) -> Vec<&'a str> {
    let mut args = verb.to_vec();
    args.extend(["--", unit]);
    args
}

impl Resource for ServiceRes<'_> {
    type State = Observed;
    type Change = Change;

    fn id(&self) -> String {
        format!("service[{}]", self.spec.name)
    }

    fn observe(&self, host: &Host) -> anyhow::Result<Observed> {
        if !host.is_system() {
            bail!("services are managed on the real system only, not under --root");
        }
        let unit = format!("{}.service", self.spec.name);
        let (_, state) = host.query("systemctl", &systemctl_args(&["is-active"], &unit))?;
        let (_, enabled) = host.query("systemctl", &systemctl_args(&["is-enabled"], &unit))?;
        let unit_differs = match &self.spec.unit {
            None => false,
            Some(want) => {
                let path = unit_path(&self.spec.name);
                match host.lstat(&path)? {
                    None => true,
                    Some(m) if m.kind != Kind::File => {
                        bail!("{path} is {}, not a regular file", m.kind)
                    }
                    Some(m) => m.mode != 0o644 || host.read_file(&path)? != want.as_bytes(),
                }
            }
        };
        Ok(Observed {
            active: matches!(state.as_str(), "active" | "activating" | "reloading"),
            enabled,
            unit_differs,
        })
    }

    fn diff(&self, a: &Observed) -> Vec<Change> {
        let mut out = Vec::new();
        if a.unit_differs {
            out.push(Change::WriteUnit);
        }
        match self.spec.enabled {
            Some(true) if a.enabled != "enabled" => out.push(Change::Enable),
            Some(false) if a.enabled == "enabled" => out.push(Change::Disable),
            _ => {}
        }
        let restart_why = if a.unit_differs {
            Some("unit file changed")
        } else if self.restart_pending {
            Some("notified by a change")
        } else {
            None
        };
        match (self.spec.ensure, a.active) {
            (Some(ServiceEnsure::Running), false) => out.push(Change::Start),
            (Some(ServiceEnsure::Stopped), true) => out.push(Change::Stop),
            (Some(ServiceEnsure::Running) | None, true) => {
                if let Some(why) = restart_why {
                    out.push(Change::Restart { why });
                }
            }
            _ => {}
        }
        out
    }

    fn apply(
        &self,
        host: &Host,
        _a: &Observed,
        changes: &[Change],
    ) -> anyhow::Result<Option<String>> {
        let unit = format!("{}.service", self.spec.name);
        for c in changes {
            match c {
                Change::WriteUnit => {
                    let content = self.spec.unit.as_deref().unwrap_or_default();
                    host.write_file(
                        &unit_path(&self.spec.name),
                        content.as_bytes(),
                        0o644,
                        Some(0),
                        Some(0),
                    )?;
                    host.command("systemctl", &["daemon-reload"], false)?;
                }
                Change::Enable => drop(host.command(
                    "systemctl",
                    &systemctl_args(&["enable", "--quiet"], &unit),
                    false,
                )?),
                Change::Disable => drop(host.command(
                    "systemctl",
                    &systemctl_args(&["disable", "--quiet"], &unit),
                    false,
                )?),
                Change::Start => {
                    drop(host.command("systemctl", &systemctl_args(&["start"], &unit), false)?)
                }
                Change::Stop => {
                    drop(host.command("systemctl", &systemctl_args(&["stop"], &unit), false)?)
                }
                Change::Restart { .. } => {
                    drop(host.command("systemctl", &systemctl_args(&["restart"], &unit), false)?)
                }
            }
        }
        Ok(None)
    }
}
