//! `service` resources: a systemd service running or stopped, enabled or not,
//! optionally with its unit file (`/etc/systemd/system/NAME.service`, followed
//! by a daemon-reload when it changes). A service restarts once per run when
//! something that notifies it changed (see the engine's pending restarts).
//! `ensure: absent` (also what a service that left the desired state runs)
//! stops and disables it, and removes its unit file only if the agent wrote
//! it (the managed record says so), followed by a daemon-reload.

use crate::engine::Resource;
use crate::host::{Host, Kind};
use anyhow::bail;
use ballast_proto::spec::{Service, ServiceEnsure};
use std::fmt;

pub struct ServiceRes<'a> {
    pub spec: &'a Service,
    /// A notifier changed (in this run or a run that failed before restarting).
    pub restart_pending: bool,
    /// The agent wrote the unit file (it created it): removed with the service.
    pub owns_unit: bool,
}

pub struct Observed {
    active: bool,
    /// `systemctl is-enabled` output: enabled, disabled, static, masked, ...
    enabled: String,
    /// Whether the managed unit file differs from the desired content.
    unit_differs: bool,
    /// Whether a regular file is at the unit path.
    unit_exists: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Write the unit file; `new` when none was there (the agent then owns it).
    WriteUnit {
        new: bool,
    },
    RemoveUnit,
    Enable,
    Disable,
    Start,
    Stop,
    Restart {
        why: &'static str,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::WriteUnit { .. } => write!(f, "write unit file and reload systemd"),
            Change::RemoveUnit => write!(f, "remove unit file and reload systemd"),
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

    fn creates(change: &Change) -> bool {
        matches!(change, Change::WriteUnit { new: true })
    }

    fn observe(&self, host: &Host) -> anyhow::Result<Observed> {
        if !host.is_system() {
            bail!("services are managed on the real system only, not under --root");
        }
        let unit = format!("{}.service", self.spec.name);
        let (_, state) = host.query("systemctl", &systemctl_args(&["is-active"], &unit))?;
        let (_, enabled) = host.query("systemctl", &systemctl_args(&["is-enabled"], &unit))?;
        let path = unit_path(&self.spec.name);
        let meta = match host.lstat(&path)? {
            Some(m) if m.kind != Kind::File && (self.spec.unit.is_some() || self.owns_unit) => {
                bail!("{path} is {}, not a regular file", m.kind)
            }
            m => m.filter(|m| m.kind == Kind::File),
        };
        let unit_differs = match (&self.spec.unit, &meta) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(want), Some(m)) => m.mode != 0o644 || host.read_file(&path)? != want.as_bytes(),
        };
        Ok(Observed {
            active: matches!(state.as_str(), "active" | "activating" | "reloading"),
            enabled,
            unit_differs,
            unit_exists: meta.is_some(),
        })
    }

    fn diff(&self, a: &Observed) -> Vec<Change> {
        let mut out = Vec::new();
        if self.spec.ensure == Some(ServiceEnsure::Absent) {
            if a.active {
                out.push(Change::Stop);
            }
            if a.enabled == "enabled" {
                out.push(Change::Disable);
            }
            if a.unit_exists && self.owns_unit {
                out.push(Change::RemoveUnit);
            }
            return out;
        }
        if a.unit_differs {
            out.push(Change::WriteUnit {
                new: !a.unit_exists,
            });
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
                Change::RemoveUnit => {
                    host.unlink(&unit_path(&self.spec.name))?;
                    host.command("systemctl", &["daemon-reload"], false)?;
                }
                Change::WriteUnit { .. } => {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ensure against a few observed states, and the changes it gives.
    #[test]
    fn diff_table() {
        let svc = |ensure, enabled, unit: Option<&str>| Service {
            name: "app".into(),
            ensure,
            enabled,
            unit: unit.map(str::to_owned),
            requires: vec![],
        };
        let specs = [
            (
                "running+enabled+unit",
                svc(Some(ServiceEnsure::Running), Some(true), Some("[Unit]\n")),
            ),
            (
                "stopped+disabled",
                svc(Some(ServiceEnsure::Stopped), Some(false), None),
            ),
            ("absent", svc(Some(ServiceEnsure::Absent), None, None)),
        ];
        let observed = [
            ("gone", false, "not-found", false, false),
            ("running, enabled, our unit", true, "enabled", false, true),
            (
                "stopped, disabled, stale unit",
                false,
                "disabled",
                true,
                true,
            ),
        ];
        let mut out = String::new();
        for (sname, spec) in &specs {
            for owns_unit in [false, true] {
                for (oname, active, enabled, unit_differs, unit_exists) in &observed {
                    let r = ServiceRes {
                        spec,
                        restart_pending: false,
                        owns_unit,
                    };
                    let a = Observed {
                        active: *active,
                        enabled: enabled.to_string(),
                        unit_differs: spec.unit.is_some() && (*unit_differs || !unit_exists),
                        unit_exists: *unit_exists,
                    };
                    let changes: Vec<String> = r.diff(&a).iter().map(|c| c.to_string()).collect();
                    out.push_str(&format!(
                        "{sname} owns_unit={owns_unit} / {oname} => [{}]\n",
                        changes.join("; ")
                    ));
                }
            }
        }
        expect_test::expect![[r#"
            running+enabled+unit owns_unit=false / gone => [write unit file and reload systemd; enable; start]
            running+enabled+unit owns_unit=false / running, enabled, our unit => []
            running+enabled+unit owns_unit=false / stopped, disabled, stale unit => [write unit file and reload systemd; enable; start]
            running+enabled+unit owns_unit=true / gone => [write unit file and reload systemd; enable; start]
            running+enabled+unit owns_unit=true / running, enabled, our unit => []
            running+enabled+unit owns_unit=true / stopped, disabled, stale unit => [write unit file and reload systemd; enable; start]
            stopped+disabled owns_unit=false / gone => []
            stopped+disabled owns_unit=false / running, enabled, our unit => [disable; stop]
            stopped+disabled owns_unit=false / stopped, disabled, stale unit => []
            stopped+disabled owns_unit=true / gone => []
            stopped+disabled owns_unit=true / running, enabled, our unit => [disable; stop]
            stopped+disabled owns_unit=true / stopped, disabled, stale unit => []
            absent owns_unit=false / gone => []
            absent owns_unit=false / running, enabled, our unit => [stop; disable]
            absent owns_unit=false / stopped, disabled, stale unit => []
            absent owns_unit=true / gone => []
            absent owns_unit=true / running, enabled, our unit => [stop; disable; remove unit file and reload systemd]
            absent owns_unit=true / stopped, disabled, stale unit => [remove unit file and reload systemd]
        "#]].assert_eq(&out);
    }

    #[test]
    fn a_new_unit_file_is_created_by_the_agent_and_a_rewrite_is_not() {
        assert!(ServiceRes::creates(&Change::WriteUnit { new: true }));
        assert!(!ServiceRes::creates(&Change::WriteUnit { new: false }));
    }
}
