//! `cron` resources: one file per job, `/etc/cron.d/ballast-NAME`, owned by
//! root with mode 0644 (cron ignores other files). The line is validated again
//! right before it is written.

use crate::engine::Resource;
use crate::host::{Host, Kind};
use anyhow::bail;
use ballast_proto::spec::{Cron, Ensure, validate};
use std::fmt;

pub struct CronRes<'a> {
    pub spec: &'a Cron,
}

pub fn path_of(name: &str) -> String {
    format!("/etc/cron.d/ballast-{name}")
}

/// The cron.d file for a job.
pub fn render(spec: &Cron) -> anyhow::Result<String> {
    let schedule = spec.schedule.as_deref().unwrap_or_default();
    let command = spec.command.as_deref().unwrap_or_default();
    validate::cron_schedule(schedule).map_err(anyhow::Error::msg)?;
    validate::cron_command(command).map_err(anyhow::Error::msg)?;
    validate::unix_name(&spec.user).map_err(anyhow::Error::msg)?;
    let mut out = format!(
        "# Managed by Ballast as cron[{}]; local changes are overwritten.\n",
        spec.name
    );
    for (k, v) in &spec.env {
        validate::env_name(k).map_err(anyhow::Error::msg)?;
        validate::one_line("environment value", v).map_err(anyhow::Error::msg)?;
        out.push_str(&format!("{k}={v}\n"));
    }
    out.push_str(&format!("{schedule} {} {command}\n", spec.user));
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Write { created: bool },
    Remove,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Write { created: true } => write!(f, "create cron job file"),
            Change::Write { created: false } => write!(f, "rewrite cron job file"),
            Change::Remove => write!(f, "remove cron job file"),
        }
    }
}

pub struct Observed {
    exists: bool,
    /// Content, mode and owner are exactly as rendered.
    current: bool,
}

impl Resource for CronRes<'_> {
    type State = Observed;
    type Change = Change;

    fn creates(change: &Change) -> bool {
        matches!(change, Change::Write { created: true })
    }

    fn id(&self) -> String {
        format!("cron[{}]", self.spec.name)
    }

    fn observe(&self, host: &Host) -> anyhow::Result<Observed> {
        let path = path_of(&self.spec.name);
        match host.lstat(&path)? {
            None => Ok(Observed {
                exists: false,
                current: false,
            }),
            Some(m) if m.kind != Kind::File => bail!("{path} is {}, not a regular file", m.kind),
            Some(m) => {
                let want = if self.spec.ensure == Ensure::Present {
                    render(self.spec)?
                } else {
                    String::new()
                };
                let current =
                    m.mode == 0o644 && m.uid == 0 && host.read_file(&path)? == want.as_bytes();
                Ok(Observed {
                    exists: true,
                    current,
                })
            }
        }
    }

    fn diff(&self, a: &Observed) -> Vec<Change> {
        match (self.spec.ensure, a.exists) {
            (Ensure::Present, false) => vec![Change::Write { created: true }],
            (Ensure::Present, true) if !a.current => vec![Change::Write { created: false }],
            (Ensure::Absent, true) => vec![Change::Remove],
            _ => vec![],
        }
    }

    fn apply(
        &self,
        host: &Host,
        _a: &Observed,
        changes: &[Change],
    ) -> anyhow::Result<Option<String>> {
        let path = path_of(&self.spec.name);
        for c in changes {
            match c {
                Change::Write { .. } => {
                    if host.lstat("/etc/cron.d")?.is_none() {
                        host.mkdir("/etc/cron.d", 0o755, true)?;
                    }
                    host.write_file(
                        &path,
                        render(self.spec)?.as_bytes(),
                        0o644,
                        Some(0),
                        Some(0),
                    )?;
                }
                Change::Remove => host.unlink(&path)?,
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every desired job against what is in `/etc/cron.d` (observe judges
    /// content, owner and mode as one: current or not).
    #[test]
    fn diff_table() {
        let job = |ensure| Cron {
            name: "backup".into(),
            schedule: Some("0 3 * * *".into()),
            user: "root".into(),
            command: Some("true".into()),
            env: Default::default(),
            ensure,
            requires: vec![],
        };
        let specs = [
            ("present", job(Ensure::Present)),
            ("absent", job(Ensure::Absent)),
        ];
        let observed = [
            ("nothing", false, false),
            ("current", true, true),
            ("stale content, owner or mode", true, false),
        ];
        let mut out = String::new();
        for (sname, spec) in &specs {
            for (oname, exists, current) in observed {
                let changes: Vec<String> = CronRes { spec }
                    .diff(&Observed { exists, current })
                    .iter()
                    .map(|c| c.to_string())
                    .collect();
                out.push_str(&format!("{sname} / {oname} => [{}]\n", changes.join("; ")));
            }
        }
        expect_test::expect![[r#"
            present / nothing => [create cron job file]
            present / current => []
            present / stale content, owner or mode => [rewrite cron job file]
            absent / nothing => []
            absent / current => [remove cron job file]
            absent / stale content, owner or mode => [remove cron job file]
        "#]]
        .assert_eq(&out);
    }

    #[test]
    fn renders_env_then_the_job_line() {
        let spec = Cron {
            name: "backup".into(),
            schedule: Some("0 3 * * *".into()),
            user: "deploy".into(),
            command: Some("tar czf /srv/b.tgz /srv/www".into()),
            env: [("PATH".to_string(), "/usr/bin:/bin".to_string())]
                .into_iter()
                .collect(),
            ensure: Ensure::Present,
            requires: vec![],
        };
        expect_test::expect![[r#"
            # Managed by Ballast as cron[backup]; local changes are overwritten.
            PATH=/usr/bin:/bin
            0 3 * * * deploy tar czf /srv/b.tgz /srv/www
        "#]]
        .assert_eq(&render(&spec).unwrap());
        let bad = Cron {
            command: Some("date +%s".into()),
            ..spec
        };
        assert!(render(&bad).unwrap_err().to_string().contains("\\%"));
    }
}
