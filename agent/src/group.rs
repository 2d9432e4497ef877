//! `group` resources (Unix groups): exist with a gid, or are absent.
//! Changed with groupadd, groupmod and groupdel (`--root` in a sandbox).

use crate::engine::Resource;
use crate::host::{GroupEntry, Host};
use ballast_proto::spec::{Ensure, Group};
use std::fmt;

pub struct GroupRes<'a> {
    pub spec: &'a Group,
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
        Ok(host
            .groups()?
            .into_iter()
            .find(|g| g.name == self.spec.name))
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
        let name = self.spec.name.as_str();
        for c in changes {
            match c {
                Change::Create => {
                    let gid = self.spec.gid.map(|g| g.to_string());
                    let mut args: Vec<&str> = Vec::new();
                    if let Some(g) = &gid {
                        args.extend(["--gid", g]);
                    }
                    if self.spec.system {
                        args.push("--system");
                    }
                    args.extend(["--", name]);
                    host.command("groupadd", &args, true)?;
                }
                Change::Gid { to, .. } => {
                    host.command("groupmod", &["--gid", &to.to_string(), "--", name], true)?;
                }
                Change::Remove => {
                    host.command("groupdel", &["--", name], true)?;
                }
            }
        }
        host.forget_names();
        Ok(None)
    }
}
