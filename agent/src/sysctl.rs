//! `sysctl` resources: a kernel parameter persisted as one `key = value` line
//! of `/etc/sysctl.d/90-ballast.conf` (rewritten atomically through the
//! host; systemd-sysctl applies it at boot) and applied live with
//! `sysctl -w`. Removal deletes the persisted line (and the file when no
//! line is left) and leaves the live value as it is.
//!
//! Under `--root` only the file is managed: a sandbox has no kernel of its
//! own, so its live values are never read or written (the real host's
//! `/proc/sys` is never touched by a sandboxed run).

use crate::engine::Resource;
use crate::host::{Host, Kind};
use anyhow::{Context, bail};
use ballast_proto::spec::{Ensure, Sysctl, validate};
use std::fmt;

/// The one file every sysctl resource is persisted in.
pub const CONF: &str = "/etc/sysctl.d/90-ballast.conf";
const HEADER: &str =
    "# Managed by Ballast: one line per sysctl resource; local changes are overwritten.\n";

pub struct SysctlRes<'a> {
    pub spec: &'a Sysctl,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// This key's value in [`CONF`], if it has a line there.
    persisted: Option<String>,
    /// The running kernel's value; `None` when not managed (under `--root`,
    /// or when the resource is to be absent).
    live: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Persist {
        from: Option<String>,
        to: String,
    },
    SetLive {
        from: String,
        to: String,
    },
    /// Delete the persisted line; the live value stays.
    Unpersist,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Persist { from: None, to } => write!(f, "persist {to} in {CONF}"),
            Change::Persist {
                from: Some(from),
                to,
            } => {
                write!(f, "persisted value {from} -> {to} in {CONF}")
            }
            Change::SetLive { from, to } => write!(f, "live value {from} -> {to}"),
            Change::Unpersist => write!(f, "remove from {CONF} (live value kept)"),
        }
    }
}

/// Where the kernel shows a key: dots become slashes below `/proc/sys`.
pub fn proc_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// A value as sysctl.d and `/proc/sys` mean it: fields separated by single spaces.
fn normalise(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The value of `key` in a sysctl.d file's text (the last line wins, as
/// systemd-sysctl reads it); comments and blank lines are skipped.
fn persisted(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.trim_start().starts_with(['#', ';']) && k.trim() == key)
        .map(|(_, v)| normalise(v))
        .next_back()
}

/// The file's text with `key`'s line set to `value` (or removed, `None`);
/// every other line kept. `None` when no setting is left: the file goes.
pub fn rewrite(text: Option<&str>, key: &str, value: Option<&str>) -> Option<String> {
    let mut out = String::new();
    let mut placed = false;
    for line in text.unwrap_or(HEADER).lines() {
        let ours = line
            .split_once('=')
            .is_some_and(|(k, _)| !k.trim_start().starts_with(['#', ';']) && k.trim() == key);
        if !ours {
            out.push_str(line);
            out.push('\n');
        } else if let (Some(v), false) = (value, placed) {
            out.push_str(&format!("{key} = {v}\n"));
            placed = true;
        }
    }
    if let (Some(v), false) = (value, placed) {
        out.push_str(&format!("{key} = {v}\n"));
    }
    let settings = out
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with(['#', ';']));
    settings.then_some(out)
}

/// The file's current text, if it exists (a regular file, never followed).
fn read_conf(host: &Host) -> anyhow::Result<Option<String>> {
    match host.lstat(CONF)? {
        None => Ok(None),
        Some(m) if m.kind != Kind::File => bail!("{CONF} is {}, not a regular file", m.kind),
        Some(_) => Ok(Some(
            String::from_utf8(host.read_file(CONF)?)
                .with_context(|| format!("{CONF} is not UTF-8"))?,
        )),
    }
}

impl Resource for SysctlRes<'_> {
    type State = Observed;
    type Change = Change;

    fn id(&self) -> String {
        format!("sysctl[{}]", self.spec.key)
    }

    fn creates(change: &Change) -> bool {
        matches!(change, Change::Persist { from: None, .. })
    }

    fn observe(&self, host: &Host) -> anyhow::Result<Observed> {
        validate::sysctl_key(&self.spec.key).map_err(anyhow::Error::msg)?;
        let persisted = read_conf(host)?.and_then(|t| persisted(&t, &self.spec.key));
        let live = if host.is_system() && self.spec.ensure == Ensure::Present {
            let path = proc_path(&self.spec.key);
            let bytes = match host.lstat(&path)? {
                None => bail!(
                    "no kernel parameter {} on this host ({path} is missing)",
                    self.spec.key
                ),
                Some(_) => host.read_file(&path)?,
            };
            Some(normalise(&String::from_utf8_lossy(&bytes)))
        } else {
            None
        };
        Ok(Observed { persisted, live })
    }

    fn diff(&self, a: &Observed) -> Vec<Change> {
        let mut out = Vec::new();
        match (self.spec.ensure, &self.spec.value) {
            (Ensure::Present, Some(want)) => {
                let want = normalise(want);
                if a.persisted.as_ref() != Some(&want) {
                    out.push(Change::Persist {
                        from: a.persisted.clone(),
                        to: want.clone(),
                    });
                }
                if let Some(live) = a.live.as_ref().filter(|l| **l != want) {
                    out.push(Change::SetLive {
                        from: live.clone(),
                        to: want,
                    });
                }
            }
            (Ensure::Present, None) => {}
            (Ensure::Absent, _) => {
                if a.persisted.is_some() {
                    out.push(Change::Unpersist);
                }
            }
        }
        out
    }

    fn apply(
        &self,
        host: &Host,
        _actual: &Observed,
        changes: &[Change],
    ) -> anyhow::Result<Option<String>> {
        let key = &self.spec.key;
        for c in changes {
            match c {
                Change::Persist { to, .. } => set_persisted(host, key, Some(to))?,
                Change::Unpersist => set_persisted(host, key, None)?,
                Change::SetLive { to, .. } => {
                    if !host.is_system() {
                        bail!(
                            "live kernel parameters are set on the real system only, not under --root"
                        );
                    }
                    // The key is validated (letters, digits, '_', '-', '.'),
                    // so the one argument cannot read as an option.
                    host.command("sysctl", &["-q", "-w", &format!("{key}={to}")], false)?;
                }
            }
        }
        Ok(None)
    }
}

/// Rewrites [`CONF`] from what it holds now (other resources' lines kept),
/// or deletes it when no setting is left.
fn set_persisted(host: &Host, key: &str, value: Option<&str>) -> anyhow::Result<()> {
    let current = read_conf(host)?;
    match rewrite(current.as_deref(), key, value) {
        Some(text) => host.write_file(CONF, text.as_bytes(), 0o644, Some(0), Some(0)),
        None if current.is_some() => host.unlink(CONF),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ensure: Ensure, value: Option<&str>) -> Sysctl {
        Sysctl {
            key: "net.ipv4.ip_forward".into(),
            value: value.map(str::to_owned),
            ensure,
            requires: vec![],
        }
    }

    #[test]
    fn diff_table() {
        let specs = [
            ("present 1", spec(Ensure::Present, Some("1"))),
            ("absent", spec(Ensure::Absent, None)),
        ];
        let observed = [
            ("nothing, live unmanaged", None, None),
            ("nothing, live 0", None, Some("0")),
            ("persisted 0, live 1", Some("0"), Some("1")),
            ("persisted 1, live 1", Some("1"), Some("1")),
        ];
        let mut out = String::new();
        for (sname, s) in &specs {
            for (oname, persisted, live) in &observed {
                let a = Observed {
                    persisted: persisted.map(str::to_owned),
                    live: live.map(str::to_owned),
                };
                let changes: Vec<String> = SysctlRes { spec: s }
                    .diff(&a)
                    .iter()
                    .map(|c| c.to_string())
                    .collect();
                out.push_str(&format!("{sname} / {oname} => [{}]\n", changes.join("; ")));
            }
        }
        expect_test::expect![[r#"
            present 1 / nothing, live unmanaged => [persist 1 in /etc/sysctl.d/90-ballast.conf]
            present 1 / nothing, live 0 => [persist 1 in /etc/sysctl.d/90-ballast.conf; live value 0 -> 1]
            present 1 / persisted 0, live 1 => [persisted value 0 -> 1 in /etc/sysctl.d/90-ballast.conf]
            present 1 / persisted 1, live 1 => []
            absent / nothing, live unmanaged => []
            absent / nothing, live 0 => []
            absent / persisted 0, live 1 => [remove from /etc/sysctl.d/90-ballast.conf (live value kept)]
            absent / persisted 1, live 1 => [remove from /etc/sysctl.d/90-ballast.conf (live value kept)]
        "#]].assert_eq(&out);
    }

    #[test]
    fn the_file_keeps_other_lines_and_goes_with_its_last_setting() {
        let one = rewrite(None, "net.ipv4.ip_forward", Some("1")).unwrap();
        let two = rewrite(Some(&one), "vm.swappiness", Some("10")).unwrap();
        let changed = rewrite(Some(&two), "net.ipv4.ip_forward", Some("0")).unwrap();
        expect_test::expect![[r#"
            # Managed by Ballast: one line per sysctl resource; local changes are overwritten.
            net.ipv4.ip_forward = 0
            vm.swappiness = 10
        "#]]
        .assert_eq(&changed);
        assert_eq!(
            persisted(&changed, "net.ipv4.ip_forward").as_deref(),
            Some("0")
        );
        let left = rewrite(Some(&changed), "net.ipv4.ip_forward", None).unwrap();
        assert_eq!(persisted(&left, "net.ipv4.ip_forward"), None);
        assert_eq!(rewrite(Some(&left), "vm.swappiness", None), None);
    }
}
