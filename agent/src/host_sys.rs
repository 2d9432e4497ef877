//! Name lookups (NSS on `/`, `ROOT/etc/passwd` and `ROOT/etc/group` in a
//! sandbox), what a dry run assumes, and the command runner.

use super::{Host, Kind, PENDING_ID};
use anyhow::{Context, bail};

impl Host {
    /// The uid of a user (`group == false`) or gid of a group, on this host:
    /// through NSS for `/`, from ROOT/etc/passwd or ROOT/etc/group in a sandbox.
    pub fn lookup_id(&self, name: &str, group: bool) -> anyhow::Result<u32> {
        let key = (group, name.to_owned());
        if self
            .assumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key)
        {
            let cached = self
                .names
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .copied()
                .flatten();
            return Ok(cached.unwrap_or(PENDING_ID));
        }
        if let Some(v) = self
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return v.with_context(|| {
                format!(
                    "{} {name} does not exist",
                    if group { "group" } else { "user" }
                )
            });
        }
        let found = if self.is_system() {
            if group {
                nix::unistd::Group::from_name(name)
                    .context("look up group")?
                    .map(|g| g.gid.as_raw())
            } else {
                nix::unistd::User::from_name(name)
                    .context("look up user")?
                    .map(|u| u.uid.as_raw())
            }
        } else if group {
            self.groups()?
                .into_iter()
                .find(|g| g.name == name)
                .map(|g| g.gid)
        } else {
            self.passwd()?
                .into_iter()
                .find(|e| e.name == name)
                .map(|e| e.uid)
        };
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, found);
        found.with_context(|| {
            format!(
                "{} {name} does not exist on this host",
                if group { "group" } else { "user" }
            )
        })
    }
}

/// One entry of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// One entry of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Parses passwd lines (`name:x:uid:gid:gecos:home:shell`), skipping malformed ones.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    let entry = |line: &str| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0].into(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].into(),
            shell: f[6].into(),
        })
    };
    text.lines().filter_map(entry).collect()
}

/// Parses group lines (`name:x:gid:member,member`), skipping malformed ones.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    let entry = |line: &str| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        let members = f[3]
            .split(',')
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect();
        Some(GroupEntry {
            name: f[0].into(),
            gid: f[2].parse().ok()?,
            members,
        })
    };
    text.lines().filter_map(entry).collect()
}

impl Host {
    /// The local user database (`ROOT/etc/passwd`), as useradd maintains it.
    pub fn passwd(&self) -> anyhow::Result<Vec<PasswdEntry>> {
        Ok(parse_passwd(&String::from_utf8_lossy(
            &self.read_file("/etc/passwd")?,
        )))
    }

    /// The local group database (`ROOT/etc/group`).
    pub fn groups(&self) -> anyhow::Result<Vec<GroupEntry>> {
        Ok(parse_group(&String::from_utf8_lossy(
            &self.read_file("/etc/group")?,
        )))
    }

    /// In a dry run: a user (`group == false`) or group this run would create,
    /// so that what depends on it reports its changes rather than failing.
    pub fn assume_created(&self, name: &str, group: bool) {
        self.assumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((group, name.to_owned()));
    }

    /// In a dry run: a directory (and its ancestors) this run would create.
    pub fn assume_dir(&self, path: &str) {
        let mut dirs = self.assumed_dirs.lock().unwrap_or_else(|p| p.into_inner());
        let mut cur = path;
        while !cur.is_empty() {
            dirs.insert(cur.to_owned());
            cur = cur.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        }
    }

    /// Fails unless the parent directory of `path` exists (or, in a dry run,
    /// would have been created by now): a file cannot be created without it.
    pub fn require_parent(&self, path: &str) -> anyhow::Result<()> {
        let parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        if parent.is_empty()
            || self
                .assumed_dirs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(parent)
        {
            return Ok(());
        }
        match self.lstat(parent)? {
            Some(m) if m.kind == Kind::Dir => Ok(()),
            Some(m) => bail!(
                "{parent} is {}, not a directory, on the way to {path}",
                m.kind
            ),
            None => bail!(
                "parent directory {parent} of {path} does not exist (manage it with a directories entry)"
            ),
        }
    }

    /// Forgets cached name lookups (after users or groups changed).
    pub fn forget_names(&self) {
        self.names.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Runs a system command with a C locale; an error carries its stderr.
    /// `root_flag` adds `--root ROOT` for tools that support it when the host
    /// is a sandbox (useradd, groupadd and friends).
    pub fn command(&self, program: &str, args: &[&str], root_flag: bool) -> anyhow::Result<String> {
        let mut cmd = std::process::Command::new(program);
        if root_flag && !self.is_system() {
            cmd.arg("--root").arg(&self.root);
        }
        cmd.args(args)
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null());
        let out = cmd.output().with_context(|| format!("run {program}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = last[last.len().saturating_sub(3)..].join("; ");
            bail!(
                "{program} {} failed ({}): {tail}",
                args.join(" "),
                out.status
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Like [`Host::command`] but returns the exit code and stdout without
    /// treating a non-zero exit as an error (for queries like `systemctl is-active`).
    pub fn query(&self, program: &str, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let out = std::process::Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("run {program}"))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        ))
    }
}
