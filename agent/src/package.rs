//! `package` resources, with apt and dpkg on Debian and Ubuntu. Each package
//! is observed on its own; all package changes of a run are made in one apt
//! transaction (see [`apply_batch`]), not one per package.

use crate::host::Host;
use anyhow::bail;
use ballast_proto::spec::{Package, PackageEnsure};
use std::fmt;

/// The installed version, if installed.
pub type Observed = Option<String>;

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
pub fn observe(host: &Host, name: &str) -> anyhow::Result<Observed> {
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

/// What must change for one package (reads the apt cache only for `latest`).
pub fn diff(host: &Host, spec: &Package, installed: &Observed) -> anyhow::Result<Vec<Change>> {
    Ok(match (&spec.ensure, installed) {
        (PackageEnsure::Absent, Some(_)) => vec![Change::Remove],
        (PackageEnsure::Absent, None) => vec![],
        (PackageEnsure::Present, None) => vec![Change::Install { version: None }],
        (PackageEnsure::Present, Some(_)) => vec![],
        (PackageEnsure::Latest, None) => vec![Change::Install { version: None }],
        (PackageEnsure::Latest, Some(v)) => match candidate(host, &spec.name)? {
            Some(c) if c != *v => vec![Change::Upgrade {
                from: v.clone(),
                to: c,
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
    })
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
