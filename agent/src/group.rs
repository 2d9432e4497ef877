//! `group` resources (Unix groups): exist with a gid, or are absent.
//! Changed with groupadd, groupmod and groupdel (`--root` in a sandbox).
//! A group that is still some user's primary group is not removed (groupdel
//! refuses it): observing says so, so a dry run predicts it too.

use crate::engine::Resource;
use crate::host::{GroupEntry, Host};
use anyhow::bail;
use ballast_proto::spec::{Ensure, Group};
use std::collections::BTreeSet;
use std::fmt;

pub struct GroupRes<'a> {
    pub spec: &'a Group,
    /// Users this run removed, or in a dry run would have removed by now.
    pub gone_users: &'a BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create,
    Gid { from: u32, to: u32 },
    Remove,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Create => write!(f, "create group"),
            Change::Gid { from, to } => write!(f, "gid {from} -> {to}"),
            Change::Remove => write!(f, "remove group"),
        }
    }
}

impl Resource for GroupRes<'_> {
    type State = Option<GroupEntry>;
    type Change = Change;

    fn creates(change: &Change) -> bool {
        matches!(change, Change::Create)
    }

    fn id(&self) -> String {
        format!("group[{}]", self.spec.name)
    }

    fn observe(&self, host: &Host) -> anyhow::Result<Option<GroupEntry>> {
        let found = host
            .groups()?
            .into_iter()
            .find(|g| g.name == self.spec.name);
        if let (Ensure::Absent, Some(g)) = (self.spec.ensure, &found) {
            let users: Vec<String> = host
                .passwd()?
                .into_iter()
                .filter(|u| u.gid == g.gid && !self.gone_users.contains(&u.name))
                .map(|u| u.name)
                .collect();
            if !users.is_empty() {
                bail!(
                    "cannot remove group {}: it is the primary group of user {}; remove those users or give them another primary group first",
                    g.name,
                    users.join(", ")
                );
            }
        }
        Ok(found)
    }

    fn diff(&self, actual: &Option<GroupEntry>) -> Vec<Change> {
        match (self.spec.ensure, actual) {
            (Ensure::Present, None) => vec![Change::Create],
            (Ensure::Present, Some(g)) => self
                .spec
                .gid
                .filter(|gid| *gid != g.gid)
                .map(|to| Change::Gid { from: g.gid, to })
                .into_iter()
                .collect(),
            (Ensure::Absent, Some(_)) => vec![Change::Remove],
            (Ensure::Absent, None) => vec![],
        }
    }

    fn apply(
        &self,
        host: &Host,
        _actual: &Option<GroupEntry>,
        changes: &[Change],
    ) -> anyhow::Result<Option<String>> {
        for c in changes {
            let (program, args) = command(self.spec, c);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            host.command(program, &args, true)?;
        }
        host.forget_names();
        Ok(None)
    }
}

/// The program and argv that make one change: options first, then `--`,
/// then the group name (`--root ROOT` is put before them in a sandbox).
pub fn command(spec: &Group, change: &Change) -> (&'static str, Vec<String>) {
    let mut args: Vec<String> = Vec::new();
    let program = match change {
        Change::Create => {
            if let Some(g) = spec.gid {
                args.extend(["--gid".into(), g.to_string()]);
            }
            if spec.system {
                args.push("--system".into());
            }
            "groupadd"
        }
        Change::Gid { to, .. } => {
            args.extend(["--gid".into(), to.to_string()]);
            "groupmod"
        }
        Change::Remove => "groupdel",
    };
    args.extend(["--".into(), spec.name.clone()]);
    (program, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every desired group against a few observed states: the changes, and
    /// the command each one runs.
    #[test]
    fn diff_table() {
        let group = |ensure, gid| Group {
            name: "app".into(),
            gid,
            system: true,
            ensure,
            requires: vec![],
        };
        let specs = [
            ("gid 3000", group(Ensure::Present, Some(3000))),
            ("any gid", group(Ensure::Present, None)),
            ("absent", group(Ensure::Absent, None)),
        ];
        let entry = |gid| GroupEntry {
            name: "app".into(),
            gid,
            members: vec![],
        };
        let observed = [
            ("nothing", None),
            ("gid 3000", Some(entry(3000))),
            ("gid 3001", Some(entry(3001))),
        ];
        let gone = BTreeSet::new();
        let mut out = String::new();
        for (sname, spec) in &specs {
            for (oname, a) in &observed {
                let r = GroupRes {
                    spec,
                    gone_users: &gone,
                };
                let changes: Vec<String> = r
                    .diff(a)
                    .iter()
                    .map(|c| {
                        let (program, args) = command(spec, c);
                        format!("{c} ({program} {})", args.join(" "))
                    })
                    .collect();
                out.push_str(&format!("{sname} / {oname} => [{}]\n", changes.join("; ")));
            }
        }
        expect_test::expect![[r#"
            gid 3000 / nothing => [create group (groupadd --gid 3000 --system -- app)]
            gid 3000 / gid 3000 => []
            gid 3000 / gid 3001 => [gid 3001 -> 3000 (groupmod --gid 3000 -- app)]
            any gid / nothing => [create group (groupadd --system -- app)]
            any gid / gid 3000 => []
            any gid / gid 3001 => []
            absent / nothing => []
            absent / gid 3000 => [remove group (groupdel -- app)]
            absent / gid 3001 => [remove group (groupdel -- app)]
        "#]]
        .assert_eq(&out);
    }
}
