//! `user` resources: a local account with uid, primary and supplementary
//! groups, home, shell, and the SSH keys in `~/.ssh/authorized_keys`; or absent.
//! Changed with useradd, usermod and userdel (`--root` in a sandbox). A
//! removed user's home directory is kept unless it says `remove_home: true`.

use crate::engine::Resource;
use crate::host::{Host, Kind, PasswdEntry};
use anyhow::Context;
use ballast_proto::spec::{Ensure, User};
use std::fmt;

pub struct UserRes<'a> {
    pub spec: &'a User,
}

pub struct Observed {
    entry: Option<PasswdEntry>,
    /// Name of the primary group, when the gid has one.
    primary: Option<String>,
    /// Supplementary groups, sorted.
    groups: Vec<String>,
    /// Current authorized_keys content, and whether its mode/owner are right.
    keys: Option<(String, bool)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create,
    Uid {
        from: u32,
        to: u32,
    },
    Primary {
        from: String,
        to: String,
    },
    Groups {
        from: Vec<String>,
        to: Vec<String>,
    },
    Home {
        from: String,
        to: String,
    },
    Shell {
        from: String,
        to: String,
    },
    Keys {
        count: usize,
    },
    /// userdel, keeping the home directory.
    Remove,
    /// userdel --remove: the home directory and mail spool go too.
    RemoveWithHome,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Create => write!(f, "create user"),
            Change::Uid { from, to } => write!(f, "uid {from} -> {to}"),
            Change::Primary { from, to } => write!(f, "primary group {from} -> {to}"),
            Change::Groups { from, to } => {
                write!(f, "groups [{}] -> [{}]", from.join(","), to.join(","))
            }
            Change::Home { from, to } => write!(f, "home {from} -> {to}"),
            Change::Shell { from, to } => write!(f, "shell {from} -> {to}"),
            Change::Keys { count } => write!(f, "write ~/.ssh/authorized_keys ({count} keys)"),
            Change::Remove => write!(f, "remove user (home directory kept)"),
            Change::RemoveWithHome => write!(f, "remove user and its home directory"),
        }
    }
}

impl UserRes<'_> {
    fn want_keys(&self) -> Option<String> {
        self.spec
            .authorized_keys
            .as_ref()
            .map(|keys| keys.iter().map(|k| format!("{}\n", k.trim())).collect())
    }

    fn home(&self, entry: Option<&PasswdEntry>) -> String {
        self.spec
            .home
            .clone()
            .or_else(|| entry.map(|e| e.home.clone()))
            .unwrap_or_else(|| format!("/home/{}", self.spec.name))
    }
}

impl Resource for UserRes<'_> {
    type State = Observed;
    type Change = Change;

    fn creates(change: &Change) -> bool {
        matches!(change, Change::Create)
    }

    fn id(&self) -> String {
        format!("user[{}]", self.spec.name)
    }

    fn observe(&self, host: &Host) -> anyhow::Result<Observed> {
        let entry = host
            .passwd()?
            .into_iter()
            .find(|e| e.name == self.spec.name);
        let all = host.groups()?;
        let primary = entry
            .as_ref()
            .and_then(|e| all.iter().find(|g| g.gid == e.gid).map(|g| g.name.clone()));
        let mut groups: Vec<String> = all
            .iter()
            .filter(|g| g.members.contains(&self.spec.name))
            .map(|g| g.name.clone())
            .collect();
        groups.sort();
        let keys = match (&entry, &self.spec.authorized_keys) {
            (Some(e), Some(_)) => {
                let path = format!("{}/.ssh/authorized_keys", self.home(Some(e)));
                match host.lstat(&path) {
                    Ok(Some(m)) if m.kind == Kind::File => {
                        let text = String::from_utf8_lossy(&host.read_file(&path)?).into_owned();
                        Some((text, m.mode == 0o600 && m.uid == e.uid))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        Ok(Observed {
            entry,
            primary,
            groups,
            keys,
        })
    }

    fn diff(&self, a: &Observed) -> Vec<Change> {
        let s = self.spec;
        let Some(e) = &a.entry else {
            return match s.ensure {
                Ensure::Present => {
                    let mut out = vec![Change::Create];
                    if let Some(keys) = &s.authorized_keys {
                        out.push(Change::Keys { count: keys.len() });
                    }
                    out
                }
                Ensure::Absent => vec![],
            };
        };
        if s.ensure == Ensure::Absent {
            return vec![if s.remove_home {
                Change::RemoveWithHome
            } else {
                Change::Remove
            }];
        }
        let mut out = Vec::new();
        if let Some(uid) = s.uid.filter(|u| *u != e.uid) {
            out.push(Change::Uid {
                from: e.uid,
                to: uid,
            });
        }
        if let Some(g) = s.group.as_ref().filter(|g| a.primary.as_ref() != Some(*g)) {
            out.push(Change::Primary {
                from: a.primary.clone().unwrap_or_else(|| e.gid.to_string()),
                to: g.clone(),
            });
        }
        if let Some(want) = &s.groups {
            let mut want = want.clone();
            want.sort();
            want.dedup();
            if want != a.groups {
                out.push(Change::Groups {
                    from: a.groups.clone(),
                    to: want,
                });
            }
        }
        if let Some(h) = s.home.as_ref().filter(|h| **h != e.home) {
            out.push(Change::Home {
                from: e.home.clone(),
                to: h.clone(),
            });
        }
        if let Some(sh) = s.shell.as_ref().filter(|sh| **sh != e.shell) {
            out.push(Change::Shell {
                from: e.shell.clone(),
                to: sh.clone(),
            });
        }
        if let Some(want) = self.want_keys()
            && a.keys.as_ref().map(|(text, ok)| *text == want && *ok) != Some(true)
        {
            out.push(Change::Keys {
                count: s.authorized_keys.as_ref().map(Vec::len).unwrap_or(0),
            });
        }
        out
    }

    fn apply(
        &self,
        host: &Host,
        a: &Observed,
        changes: &[Change],
    ) -> anyhow::Result<Option<String>> {
        let s = self.spec;
        let name = s.name.as_str();
        for (program, args) in commands(s, changes) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            host.command(program, &args, true)?;
        }
        host.forget_names();
        if changes.iter().any(|c| matches!(c, Change::Keys { .. })) {
            let entry = host
                .passwd()?
                .into_iter()
                .find(|e| e.name == s.name)
                .with_context(|| format!("user {name} missing after useradd"))?;
            let home = self.home(Some(&entry));
            let ssh = format!("{home}/.ssh");
            match host.lstat(&ssh)? {
                None => {
                    host.mkdir(&ssh, 0o700, false)?;
                }
                Some(m) if m.kind != Kind::Dir => {
                    anyhow::bail!("{ssh} is {}, not a directory", m.kind)
                }
                Some(_) => host.set_meta(&ssh, Some(0o700), None, None)?,
            }
            host.set_meta(&ssh, None, Some(entry.uid), Some(entry.gid))?;
            let keys = self.want_keys().unwrap_or_default();
            host.write_file(
                &format!("{ssh}/authorized_keys"),
                keys.as_bytes(),
                0o600,
                Some(entry.uid),
                Some(entry.gid),
            )?;
        }
        let _ = a;
        Ok(None)
    }
}

/// The programs and argvs that make these changes (useradd, one usermod for
/// every attribute at once, userdel): options first, then `--`, then the
/// user name (`--root ROOT` is put before them in a sandbox).
pub fn commands(s: &User, changes: &[Change]) -> Vec<(&'static str, Vec<String>)> {
    let mut out = Vec::new();
    let mut usermod: Vec<String> = Vec::new();
    for c in changes {
        match c {
            Change::Create => {
                let mut args: Vec<String> = vec!["--create-home".into()];
                if let Some(u) = s.uid {
                    args.extend(["--uid".into(), u.to_string()]);
                }
                if let Some(g) = &s.group {
                    args.extend(["--gid".into(), g.clone()]);
                }
                if let Some(gs) = s.groups.as_ref().filter(|g| !g.is_empty()) {
                    args.extend(["--groups".into(), gs.join(",")]);
                }
                if let Some(h) = &s.home {
                    args.extend(["--home-dir".into(), h.clone()]);
                }
                if let Some(sh) = &s.shell {
                    args.extend(["--shell".into(), sh.clone()]);
                }
                if s.system {
                    args.push("--system".into());
                }
                args.extend(["--".into(), s.name.clone()]);
                out.push(("useradd", args));
            }
            Change::Uid { to, .. } => usermod.extend(["--uid".into(), to.to_string()]),
            Change::Primary { to, .. } => usermod.extend(["--gid".into(), to.clone()]),
            Change::Groups { to, .. } => usermod.extend(["--groups".into(), to.join(",")]),
            Change::Home { to, .. } => usermod.extend(["--home".into(), to.clone()]),
            Change::Shell { to, .. } => usermod.extend(["--shell".into(), to.clone()]),
            Change::Keys { .. } => {}
            Change::Remove => out.push(("userdel", vec!["--".into(), s.name.clone()])),
            Change::RemoveWithHome => out.push((
                "userdel",
                vec!["--remove".into(), "--".into(), s.name.clone()],
            )),
        }
    }
    if !usermod.is_empty() {
        usermod.extend(["--".into(), s.name.clone()]);
        out.push(("usermod", usermod));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(ensure: Ensure, remove_home: bool) -> User {
        User {
            name: "deploy".into(),
            uid: None,
            group: None,
            groups: None,
            home: None,
            shell: None,
            system: false,
            authorized_keys: None,
            remove_home,
            ensure,
            requires: vec![],
        }
    }

    /// Every desired user against a few observed states: the changes, and
    /// the commands they run (one usermod for every attribute).
    #[test]
    fn diff_table() {
        let full = User {
            uid: Some(3001),
            group: Some("deploy".into()),
            groups: Some(vec!["www-data".into(), "adm".into()]),
            home: Some("/srv/deploy".into()),
            shell: Some("/bin/bash".into()),
            authorized_keys: Some(vec!["ssh-ed25519 AAAA k1".into()]),
            ..user(Ensure::Present, false)
        };
        let specs = [
            ("full", full),
            ("bare", user(Ensure::Present, false)),
            ("absent", user(Ensure::Absent, false)),
        ];
        let entry = |uid, home: &str, shell: &str| PasswdEntry {
            name: "deploy".into(),
            uid,
            gid: uid,
            home: home.into(),
            shell: shell.into(),
        };
        let matching = Observed {
            entry: Some(entry(3001, "/srv/deploy", "/bin/bash")),
            primary: Some("deploy".into()),
            groups: vec!["adm".into(), "www-data".into()],
            keys: Some(("ssh-ed25519 AAAA k1\n".into(), true)),
        };
        let observed = [
            (
                "nothing",
                Observed {
                    entry: None,
                    primary: None,
                    groups: vec![],
                    keys: None,
                },
            ),
            ("as desired", matching),
            (
                "all different",
                Observed {
                    entry: Some(entry(3002, "/home/deploy", "/bin/sh")),
                    primary: Some("users".into()),
                    groups: vec!["adm".into()],
                    keys: Some(("ssh-ed25519 AAAA k1\n".into(), false)),
                },
            ),
        ];
        let mut out = String::new();
        for (sname, spec) in &specs {
            for (oname, a) in &observed {
                let changes = UserRes { spec }.diff(a);
                let text: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
                out.push_str(&format!("{sname} / {oname} => [{}]\n", text.join("; ")));
                for (program, args) in commands(spec, &changes) {
                    out.push_str(&format!("    {program} {}\n", args.join(" ")));
                }
            }
        }
        expect_test::expect![[r#"
            full / nothing => [create user; write ~/.ssh/authorized_keys (1 keys)]
                useradd --create-home --uid 3001 --gid deploy --groups www-data,adm --home-dir /srv/deploy --shell /bin/bash -- deploy
            full / as desired => []
            full / all different => [uid 3002 -> 3001; primary group users -> deploy; groups [adm] -> [adm,www-data]; home /home/deploy -> /srv/deploy; shell /bin/sh -> /bin/bash; write ~/.ssh/authorized_keys (1 keys)]
                usermod --uid 3001 --gid deploy --groups adm,www-data --home /srv/deploy --shell /bin/bash -- deploy
            bare / nothing => [create user]
                useradd --create-home -- deploy
            bare / as desired => []
            bare / all different => []
            absent / nothing => []
            absent / as desired => [remove user (home directory kept)]
                userdel -- deploy
            absent / all different => [remove user (home directory kept)]
                userdel -- deploy
        "#]].assert_eq(&out);
    }

    /// Removal keeps the home unless `remove_home: true` says otherwise.
    #[test]
    fn removal_keeps_the_home_unless_told() {
        let entry = PasswdEntry {
            name: "deploy".into(),
            uid: 3001,
            gid: 3001,
            home: "/home/deploy".into(),
            shell: "/bin/sh".into(),
        };
        let observed = || Observed {
            entry: Some(entry.clone()),
            primary: None,
            groups: vec![],
            keys: None,
        };
        let mut out = String::new();
        for remove_home in [false, true] {
            let u = user(Ensure::Absent, remove_home);
            let changes = UserRes { spec: &u }.diff(&observed());
            for (program, args) in commands(&u, &changes) {
                out.push_str(&format!(
                    "remove_home={remove_home}: {} => {program} {}\n",
                    changes[0],
                    args.join(" ")
                ));
            }
            let gone = Observed {
                entry: None,
                ..observed()
            };
            assert!(UserRes { spec: &u }.diff(&gone).is_empty());
        }
        expect_test::expect![[r#"
            remove_home=false: remove user (home directory kept) => userdel -- deploy
            remove_home=true: remove user and its home directory => userdel --remove -- deploy
        "#]]
        .assert_eq(&out);
    }
}
