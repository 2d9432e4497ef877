//! `package` resources, with apt and dpkg on Debian and Ubuntu. Each package
//! is a [`Resource`] (observe, pure diff, apply) like every other kind; the
//! engine calls the apply of all packages of a run, removals included, as one
//! apt transaction ([`apply_batch`]), and `PackageRes::apply` alone is that
//! transaction with one package in it.

use crate::engine::Resource;
use crate::host::Host;
use anyhow::bail;
use ballast_proto::spec::{Package, PackageEnsure};
use std::fmt;

pub struct PackageRes<'a> {
    pub spec: &'a Package,
    /// System facts, to tell apt systems from others.
    pub facts: &'a serde_json::Value,
}

/// What dpkg and apt say about one package.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// The installed version, if installed.
    pub installed: Option<String>,
    /// apt's candidate version; asked for only with `ensure: latest` when
    /// the package is installed.
    pub candidate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Install {
        version: Option<String>,
    },
    Upgrade {
        from: String,
        to: String,
    },
    /// To an exact version, up or down.
    Pin {
        from: String,
        to: String,
    },
    Remove,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Install { version: None } => write!(f, "install"),
            Change::Install { version: Some(v) } => write!(f, "install version {v}"),
            Change::Upgrade { from, to } => write!(f, "upgrade {from} -> {to}"),
            Change::Pin { from, to } => write!(f, "change version {from} -> {to}"),
            Change::Remove => write!(f, "remove"),
        }
    }
}

/// Whether this host's packages are managed with apt (Debian, Ubuntu and derivatives).
pub fn check_supported(host: &Host, facts: &serde_json::Value) -> anyhow::Result<()> {
    if !host.is_system() {
        bail!("packages are managed on the real system only, not under --root");
    }
    let os = &facts["os"];
    let id = os["id"].as_str().map(str::to_owned).or_else(|| {
        // No facts collected (a local run): read os-release through the host.
        // /etc/os-release is usually a symlink, which the host never follows.
        let text = host
            .read_file("/usr/lib/os-release")
            .or_else(|_| host.read_file("/etc/os-release"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        crate::facts::parse_os_release(&text)["id"]
            .as_str()
            .map(str::to_owned)
    });
    let like = os["id_like"].as_str().unwrap_or_default();
    match id.as_deref() {
        Some("debian" | "ubuntu") => Ok(()),
        _ if like.split_whitespace().any(|l| l == "debian") => Ok(()),
        other => bail!(
            "packages: operating system {:?} is not supported (apt on Debian and Ubuntu is)",
            other.unwrap_or("unknown")
        ),
    }
}

/// `dpkg-query` asking for one package's status and version; every command
/// here puts names after `--`, so none is ever read as an option.
pub fn dpkg_query_args(name: &str) -> [&str; 4] {
    [
        "--show",
        "--showformat=${db:Status-Status} ${Version}",
        "--",
        name,
    ]
}

/// `apt-cache` asking for one package's candidate version.
pub fn apt_cache_args(name: &str) -> [&str; 3] {
    ["policy", "--", name]
}

/// The installed version of a package, or `None`.
fn installed(host: &Host, name: &str) -> anyhow::Result<Option<String>> {
    let (code, out) = host.query("dpkg-query", &dpkg_query_args(name))?;
    if code != 0 {
        return Ok(None);
    }
    Ok(match out.split_once(' ') {
        Some(("installed", v)) => Some(v.to_owned()),
        _ => None,
    })
}

fn candidate(host: &Host, name: &str) -> anyhow::Result<Option<String>> {
    let (_, out) = host.query("apt-cache", &apt_cache_args(name))?;
    Ok(out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: "))
        .filter(|v| *v != "(none)")
        .map(str::to_owned))
}

impl Resource for PackageRes<'_> {
    type State = Observed;
    type Change = Change;

    fn id(&self) -> String {
        format!("package[{}]", self.spec.name)
    }

    fn creates(change: &Change) -> bool {
        matches!(change, Change::Install { .. })
    }

    fn observe(&self, host: &Host) -> anyhow::Result<Observed> {
        check_supported(host, self.facts)?;
        let installed = installed(host, &self.spec.name)?;
        let candidate = match (&self.spec.ensure, &installed) {
            (PackageEnsure::Latest, Some(_)) => candidate(host, &self.spec.name)?,
            _ => None,
        };
        Ok(Observed {
            installed,
            candidate,
        })
    }

    fn diff(&self, a: &Observed) -> Vec<Change> {
        diff(self.spec, a)
    }

    /// A transaction of one; the engine batches every package of a run
    /// into one [`apply_batch`] instead.
    fn apply(
        &self,
        host: &Host,
        _actual: &Observed,
        changes: &[Change],
    ) -> anyhow::Result<Option<String>> {
        apply_batch(host, &[(self.spec, changes.to_vec())])?;
        Ok(None)
    }
}

/// Pure: what must change for one package.
pub fn diff(spec: &Package, a: &Observed) -> Vec<Change> {
    match (&spec.ensure, &a.installed) {
        (PackageEnsure::Absent, Some(_)) => vec![Change::Remove],
        (PackageEnsure::Absent, None) => vec![],
        (PackageEnsure::Present, None) => vec![Change::Install { version: None }],
        (PackageEnsure::Present, Some(_)) => vec![],
        (PackageEnsure::Latest, None) => vec![Change::Install { version: None }],
        (PackageEnsure::Latest, Some(v)) => match &a.candidate {
            Some(c) if c != v => vec![Change::Upgrade {
                from: v.clone(),
                to: c.clone(),
            }],
            _ => vec![],
        },
        (PackageEnsure::Version(want), None) => vec![Change::Install {
            version: Some(want.clone()),
        }],
        (PackageEnsure::Version(want), Some(v)) if v != want => vec![Change::Pin {
            from: v.clone(),
            to: want.clone(),
        }],
        (PackageEnsure::Version(_), Some(_)) => vec![],
    }
}

/// One apt transaction for every package change of the run.
pub fn apply_batch(host: &Host, changes: &[(&Package, Vec<Change>)]) -> anyhow::Result<()> {
    let Some(args) = apt_get_args(changes) else {
        return Ok(());
    };
    // A fresh index first; offline nodes still install from what they have.
    if let Err(e) = host.command("apt-get", &["-q", "update"], false) {
        tracing::warn!(error = %format!("{e:#}"), "apt-get update failed; using the existing package index");
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    host.command("apt-get", &args, false)?;
    Ok(())
}

/// The argv of the one `apt-get install` that makes every change (`name`,
/// `name=version`, `name-` to remove), the names after `--`; `None` when
/// there is nothing to do.
pub fn apt_get_args(changes: &[(&Package, Vec<Change>)]) -> Option<Vec<String>> {
    let mut args: Vec<String> = [
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confold",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "install",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut any = false;
    for (spec, cs) in changes {
        for c in cs {
            any = true;
            args.push(match c {
                Change::Remove => format!("{}-", spec.name),
                Change::Install { version: Some(v) } | Change::Pin { to: v, .. } => {
                    format!("{}={v}", spec.name)
                }
                Change::Install { version: None } | Change::Upgrade { .. } => spec.name.clone(),
            });
        }
    }
    any.then_some(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (ensure, installed, candidate) case and the changes it gives.
    #[test]
    fn diff_table() {
        let ensures = [
            PackageEnsure::Present,
            PackageEnsure::Absent,
            PackageEnsure::Latest,
            PackageEnsure::Version("1.2-1".into()),
        ];
        let states = [
            (None, None),
            (Some("1.2-1"), None),
            (Some("1.0-1"), Some("1.2-1")),
            (Some("1.2-1"), Some("1.2-1")),
        ];
        let mut out = String::new();
        for e in &ensures {
            for (installed, candidate) in &states {
                let spec = Package {
                    name: "jq".into(),
                    ensure: e.clone(),
                    notify: vec![],
                    requires: vec![],
                };
                let a = Observed {
                    installed: installed.map(str::to_owned),
                    candidate: candidate.map(str::to_owned),
                };
                let changes: Vec<String> = diff(&spec, &a).iter().map(|c| c.to_string()).collect();
                out.push_str(&format!(
                    "{e:?} installed={installed:?} candidate={candidate:?} => [{}]\n",
                    changes.join("; ")
                ));
            }
        }
        expect_test::expect![[r#"
            Present installed=None candidate=None => [install]
            Present installed=Some("1.2-1") candidate=None => []
            Present installed=Some("1.0-1") candidate=Some("1.2-1") => []
            Present installed=Some("1.2-1") candidate=Some("1.2-1") => []
            Absent installed=None candidate=None => []
            Absent installed=Some("1.2-1") candidate=None => [remove]
            Absent installed=Some("1.0-1") candidate=Some("1.2-1") => [remove]
            Absent installed=Some("1.2-1") candidate=Some("1.2-1") => [remove]
            Latest installed=None candidate=None => [install]
            Latest installed=Some("1.2-1") candidate=None => []
            Latest installed=Some("1.0-1") candidate=Some("1.2-1") => [upgrade 1.0-1 -> 1.2-1]
            Latest installed=Some("1.2-1") candidate=Some("1.2-1") => []
            Version("1.2-1") installed=None candidate=None => [install version 1.2-1]
            Version("1.2-1") installed=Some("1.2-1") candidate=None => []
            Version("1.2-1") installed=Some("1.0-1") candidate=Some("1.2-1") => [change version 1.0-1 -> 1.2-1]
            Version("1.2-1") installed=Some("1.2-1") candidate=Some("1.2-1") => []
        "#]].assert_eq(&out);
    }
}
