//! `directory` resources: exists (with missing parents created 0755) with an
//! owner, group and mode, or is absent (only when empty: never `rm -rf`).

use crate::engine::Resource;
use crate::host::{Host, Kind, Meta, PENDING_ID};
use anyhow::bail;
use ballast_proto::spec::{Directory, Ensure};
use std::fmt;

pub struct DirRes<'a> {
    pub spec: &'a Directory,
}

pub struct Observed {
    meta: Option<Meta>,
    uid: Option<u32>,
    gid: Option<u32>,
    /// Ancestors that do not exist yet (created with the directory).
    missing_parents: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// With the desired owner and group, set right after creation.
    Create {
        parents: Vec<String>,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    Mode {
        from: u32,
        to: u32,
    },
    Owner {
        from: u32,
        to: u32,
    },
    Group {
        from: u32,
        to: u32,
    },
    Remove,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Create { parents, .. } if parents.is_empty() => write!(f, "create directory"),
            Change::Create { parents, .. } => write!(
                f,
                "create directory (and missing parents {})",
                parents.join(", ")
            ),
            Change::Mode { from, to } => write!(f, "mode {from:04o} -> {to:04o}"),
            Change::Owner {
                from,
                to: PENDING_ID,
            } => write!(f, "owner uid {from} -> a user this run creates"),
            Change::Group {
                from,
                to: PENDING_ID,
            } => write!(f, "group gid {from} -> a group this run creates"),
            Change::Owner { from, to } => write!(f, "owner uid {from} -> {to}"),
            Change::Group { from, to } => write!(f, "group gid {from} -> {to}"),
            Change::Remove => write!(f, "remove empty directory"),
        }
    }
}

impl Resource for DirRes<'_> {
    type State = Observed;
    type Change = Change;

    fn creates(change: &Change) -> bool {
        matches!(change, Change::Create { .. })
    }

    fn id(&self) -> String {
        format!("directory[{}]", self.spec.path)
    }

    fn observe(&self, host: &Host) -> anyhow::Result<Observed> {
        let meta = host.lstat(&self.spec.path)?;
        if let Some(m) = &meta
            && m.kind != Kind::Dir
        {
            bail!(
                "{} is {}, not a directory; refusing to replace or remove it",
                self.spec.path,
                m.kind
            );
        }
        let mut missing_parents = Vec::new();
        if meta.is_none() {
            let mut walked = String::new();
            let parts: Vec<&str> = self
                .spec
                .path
                .split('/')
                .filter(|s| !s.is_empty())
                .collect();
            for d in &parts[..parts.len().saturating_sub(1)] {
                walked.push('/');
                walked.push_str(d);
                match host.lstat(&walked)? {
                    None => missing_parents.push(walked.clone()),
                    Some(m) if m.kind != Kind::Dir => bail!(
                        "{walked} is {}, not a directory, on the way to {}",
                        m.kind,
                        self.spec.path
                    ),
                    Some(_) => {}
                }
            }
        }
        let (uid, gid) = if self.spec.ensure == Ensure::Present {
            crate::file::ids(host, self.spec.owner.as_deref(), self.spec.group.as_deref())?
        } else {
            (None, None)
        };
        Ok(Observed {
            meta,
            uid,
            gid,
            missing_parents,
        })
    }

    fn diff(&self, actual: &Observed) -> Vec<Change> {
        match (self.spec.ensure, &actual.meta) {
            (Ensure::Absent, None) => vec![],
            (Ensure::Absent, Some(_)) => vec![Change::Remove],
            (Ensure::Present, None) => vec![Change::Create {
                parents: actual.missing_parents.clone(),
                uid: actual.uid,
                gid: actual.gid,
            }],
            (Ensure::Present, Some(m)) => {
                let mut out = Vec::new();
                if let Some(mode) = self.spec.mode
                    && m.mode != mode
                {
                    out.push(Change::Mode {
                        from: m.mode,
                        to: mode,
                    });
                }
                if let Some(uid) = actual.uid.filter(|u| *u != m.uid) {
                    out.push(Change::Owner {
                        from: m.uid,
                        to: uid,
                    });
                }
                if let Some(gid) = actual.gid.filter(|g| *g != m.gid) {
                    out.push(Change::Group {
                        from: m.gid,
                        to: gid,
                    });
                }
                out
            }
        }
    }

    fn apply(
        &self,
        host: &Host,
        actual: &Observed,
        changes: &[Change],
    ) -> anyhow::Result<Option<String>> {
        let path = &self.spec.path;
        for c in changes {
            match c {
                Change::Create { parents, uid, gid } => {
                    host.mkdir_owned(
                        path,
                        self.spec.mode.unwrap_or(0o755),
                        !parents.is_empty(),
                        *uid,
                        *gid,
                    )?;
                }
                Change::Remove => host.rmdir(path)?,
                Change::Mode { .. } | Change::Owner { .. } | Change::Group { .. } => {}
            }
        }
        // Owner, group and mode together, through one descriptor of the
        // directory that was observed: owner first, then mode.
        let mode = changes.iter().find_map(|c| match c {
            Change::Mode { to, .. } => Some(*to),
            _ => None,
        });
        let uid = changes.iter().find_map(|c| match c {
            Change::Owner { to, .. } => Some(*to),
            _ => None,
        });
        let gid = changes.iter().find_map(|c| match c {
            Change::Group { to, .. } => Some(*to),
            _ => None,
        });
        if mode.is_some() || uid.is_some() || gid.is_some() {
            host.set_dir_meta(path, actual.meta.as_ref(), mode, uid, gid)?;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(ensure: Ensure, mode: Option<u32>) -> Directory {
        Directory {
            path: "/srv/app/data".into(),
            owner: Some("app".into()),
            group: Some("app".into()),
            mode,
            ensure,
            requires: vec![],
        }
    }

    fn meta(mode: u32, uid: u32) -> Meta {
        Meta {
            kind: Kind::Dir,
            mode,
            uid,
            gid: uid,
            size: 4096,
            dev: 1,
            ino: 2,
            nlink: 2,
        }
    }

    /// Every desired directory against a few observed states, and the
    /// changes it gives (the owner and group `app` resolve to 1000, or to a
    /// user this dry run creates).
    #[test]
    fn diff_table() {
        let specs = [
            ("0750", dir(Ensure::Present, Some(0o750))),
            ("no mode", dir(Ensure::Present, None)),
            ("absent", dir(Ensure::Absent, None)),
        ];
        let seen = |meta: Option<Meta>, parents: &[&str], id: u32| Observed {
            meta,
            uid: Some(id),
            gid: Some(id),
            missing_parents: parents.iter().map(|p| p.to_string()).collect(),
        };
        let observed = [
            ("nothing", seen(None, &[], 1000)),
            ("nothing, no /srv", seen(None, &["/srv", "/srv/app"], 1000)),
            ("right", seen(Some(meta(0o750, 1000)), &[], 1000)),
            ("0755 root", seen(Some(meta(0o755, 0)), &[], 1000)),
            (
                "0755 root, owner created this run",
                seen(Some(meta(0o755, 0)), &[], PENDING_ID),
            ),
        ];
        let mut out = String::new();
        for (sname, spec) in &specs {
            for (oname, a) in &observed {
                let changes: Vec<String> = DirRes { spec }
                    .diff(a)
                    .iter()
                    .map(|c| c.to_string())
                    .collect();
                out.push_str(&format!("{sname} / {oname} => [{}]\n", changes.join("; ")));
            }
        }
        expect_test::expect![[r#"
            0750 / nothing => [create directory]
            0750 / nothing, no /srv => [create directory (and missing parents /srv, /srv/app)]
            0750 / right => []
            0750 / 0755 root => [mode 0755 -> 0750; owner uid 0 -> 1000; group gid 0 -> 1000]
            0750 / 0755 root, owner created this run => [mode 0755 -> 0750; owner uid 0 -> a user this run creates; group gid 0 -> a group this run creates]
            no mode / nothing => [create directory]
            no mode / nothing, no /srv => [create directory (and missing parents /srv, /srv/app)]
            no mode / right => []
            no mode / 0755 root => [owner uid 0 -> 1000; group gid 0 -> 1000]
            no mode / 0755 root, owner created this run => [owner uid 0 -> a user this run creates; group gid 0 -> a group this run creates]
            absent / nothing => []
            absent / nothing, no /srv => []
            absent / right => [remove empty directory]
            absent / 0755 root => [remove empty directory]
            absent / 0755 root, owner created this run => [remove empty directory]
        "#]].assert_eq(&out);
    }
}
