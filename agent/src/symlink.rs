//! `symlink` resources: a link at `path` pointing to `target`, or absent.
//! Only a symlink is ever replaced or removed; anything else there is reported.

use crate::engine::Resource;
use crate::host::{Host, Kind};
use anyhow::bail;
use ballast_proto::spec::{Ensure, Symlink};
use std::fmt;

pub struct SymlinkRes<'a> {
    pub spec: &'a Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create { target: String },
    Retarget { from: String, to: String },
    Remove,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Create { target } => write!(f, "create symlink -> {target}"),
            Change::Retarget { from, to } => write!(f, "retarget symlink {from} -> {to}"),
            Change::Remove => write!(f, "remove symlink"),
        }
    }
}

impl Resource for SymlinkRes<'_> {
    /// The current target, if a symlink is there.
    type State = Option<String>;
    type Change = Change;

    fn creates(change: &Change) -> bool {
        matches!(change, Change::Create { .. })
    }

    fn id(&self) -> String {
        format!("symlink[{}]", self.spec.path)
    }

    fn observe(&self, host: &Host) -> anyhow::Result<Option<String>> {
        match host.lstat(&self.spec.path)? {
            None => {
                if self.spec.ensure == Ensure::Present {
                    host.require_parent(&self.spec.path)?;
                }
                Ok(None)
            }
            Some(m) if m.kind == Kind::Symlink => Ok(Some(host.readlink(&self.spec.path)?)),
            Some(m) => bail!(
                "{} is {}, not a symlink; refusing to replace or remove it",
                self.spec.path,
                m.kind
            ),
        }
    }

    fn diff(&self, actual: &Option<String>) -> Vec<Change> {
        match (self.spec.ensure, actual, &self.spec.target) {
            (Ensure::Absent, Some(_), _) => vec![Change::Remove],
            (Ensure::Present, None, Some(t)) => vec![Change::Create { target: t.clone() }],
            (Ensure::Present, Some(cur), Some(t)) if cur != t => vec![Change::Retarget {
                from: cur.clone(),
                to: t.clone(),
            }],
            _ => vec![],
        }
    }

    fn apply(
        &self,
        host: &Host,
        _actual: &Option<String>,
        changes: &[Change],
    ) -> anyhow::Result<Option<String>> {
        for c in changes {
            match c {
                Change::Create { target } | Change::Retarget { to: target, .. } => {
                    host.symlink(&self.spec.path, target)?
                }
                Change::Remove => host.unlink(&self.spec.path)?,
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every desired link against what is there (a symlink's target, or
    /// nothing; anything else is refused by observe).
    #[test]
    fn diff_table() {
        let link = |ensure, target: Option<&str>| Symlink {
            path: "/etc/nginx/sites-enabled/app".into(),
            target: target.map(str::to_owned),
            ensure,
            requires: vec![],
        };
        let specs = [
            ("-> ../a", link(Ensure::Present, Some("../a"))),
            ("absent", link(Ensure::Absent, None)),
        ];
        let observed = [
            ("nothing", None),
            ("-> ../a", Some("../a")),
            ("-> /elsewhere", Some("/elsewhere")),
        ];
        let mut out = String::new();
        for (sname, spec) in &specs {
            for (oname, a) in &observed {
                let changes: Vec<String> = SymlinkRes { spec }
                    .diff(&a.map(str::to_owned))
                    .iter()
                    .map(|c| c.to_string())
                    .collect();
                out.push_str(&format!("{sname} / {oname} => [{}]\n", changes.join("; ")));
            }
        }
        expect_test::expect![[r#"
            -> ../a / nothing => [create symlink -> ../a]
            -> ../a / -> ../a => []
            -> ../a / -> /elsewhere => [retarget symlink /elsewhere -> ../a]
            absent / nothing => []
            absent / -> ../a => [remove symlink]
            absent / -> /elsewhere => [remove symlink]
        "#]]
        .assert_eq(&out);
    }
}
