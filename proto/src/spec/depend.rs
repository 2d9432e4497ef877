//! What each resource runs after: its declared `requires`, and the implicit
//! dependencies that follow from what it names (Puppet's autorequire). The
//! one place these rules live: parse and the agent's document check look for
//! cycles through them, the engine orders and skips by them, and
//! `ballast-agent apply --noop` shows them.
//!
//! Implicit rules, only between resources that are both declared and present
//! (removals run in reverse kind order, deepest path first, instead):
//! a file or directory owned by a managed user or group requires it, and a
//! user its managed groups;
//! a cron job run as a managed user requires it; a file, directory or symlink
//! below a managed directory requires the nearest one; a service requires
//! the package of the same name.

use super::{Kind, Resource};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// Why one resource runs after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Why {
    /// `requires:` says so.
    Declared,
    /// The resource's `owner` is this managed user.
    Owner,
    /// The resource's `group` is this managed group.
    Group,
    /// The cron job runs as this managed user.
    RunAs,
    /// The path is below this managed directory.
    Below,
    /// The service's package has its name.
    Package,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Why::Declared => "requires",
            Why::Owner => "its owner",
            Why::Group => "its group",
            Why::RunAs => "the user it runs as",
            Why::Below => "the directory it is in",
            Why::Package => "the package of the same name",
        })
    }
}

/// One edge: run after `on` (an id, `kind[key]`), because of `why`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dependency {
    pub on: String,
    pub why: Why,
}

impl Dependency {
    pub fn is_implicit(&self) -> bool {
        self.why != Why::Declared
    }
}

/// Calls `f(i, kind, key, why)` for every dependency of `resources[i]`:
/// the one walk behind [`dependencies`] and [`dependency_indices`].
fn each<'a>(resources: &[&'a Resource], mut f: impl FnMut(usize, Kind, &'a str, Why)) {
    // Looked up by (kind, key) without building ids: this runs over every
    // resource of every run.
    let declared: HashSet<(Kind, &str)> = resources
        .iter()
        .filter(|r| !r.is_absent())
        .map(|r| (r.kind(), r.key()))
        .collect();
    for (i, &r) in resources.iter().enumerate() {
        for q in r.requires() {
            f(i, q.kind, &q.name, Why::Declared);
        }
        if r.is_absent() {
            continue;
        }
        let mut implied = |kind: Kind, key: &'a str, why: Why| {
            if (kind, key) != (r.kind(), r.key()) && declared.contains(&(kind, key)) {
                f(i, kind, key, why);
            }
        };
        let (owner, group) = match r {
            Resource::File(f) => (f.owner.as_deref(), f.group.as_deref()),
            Resource::Directory(d) => (d.owner.as_deref(), d.group.as_deref()),
            _ => (None, None),
        };
        if let Some(u) = owner {
            implied(Kind::User, u, Why::Owner);
        }
        if let Some(g) = group {
            implied(Kind::Group, g, Why::Group);
        }
        if let Resource::User(u) = r {
            for g in u.group.iter().chain(u.groups.iter().flatten()) {
                implied(Kind::Group, g, Why::Group);
            }
        }
        if let Resource::Cron(c) = r {
            implied(Kind::User, &c.user, Why::RunAs);
        }
        if r.kind().is_path() {
            // The nearest managed directory above the path.
            let key = r.key();
            let parent = key
                .match_indices('/')
                .rev()
                .map(|(i, _)| if i == 0 { "/" } else { &key[..i] })
                .find(|dir| declared.contains(&(Kind::Directory, *dir)));
            if let Some(dir) = parent {
                implied(Kind::Directory, dir, Why::Below);
            }
        }
        if let Resource::Service(s) = r {
            implied(Kind::Package, &s.name, Why::Package);
        }
    }
}

/// The dependencies of every resource, in the order given, as operators
/// read them. Declared `requires` are listed as written (even when they name
/// nothing in `resources`; callers decide); implicit ones only between
/// resources of `resources` that are both present.
pub fn dependencies(resources: &[&Resource]) -> Vec<Vec<Dependency>> {
    let mut out: Vec<Vec<Dependency>> = vec![Vec::new(); resources.len()];
    each(resources, |i, kind, key, why| {
        let on = format!("{kind}[{key}]");
        if !out[i].iter().any(|d| d.on == on) {
            out[i].push(Dependency { on, why });
        }
    });
    out
}

/// The same dependencies as indices into `resources`, for the engine's run
/// order: what is not among `resources` is left out.
pub fn dependency_indices(resources: &[&Resource]) -> Vec<Vec<usize>> {
    let index: HashMap<(Kind, &str), usize> = resources
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.kind(), r.key()), i))
        .collect();
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); resources.len()];
    each(resources, |i, kind, key, _| {
        if let Some(&j) = index.get(&(kind, key)) {
            out[i].push(j);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::super::{NodeMeta, Source, parse};
    use super::*;

    fn deps(yaml: &str) -> String {
        let spec = parse(&[Source {
            name: "t.yaml".into(),
            text: yaml.into(),
        }])
        .unwrap_or_else(|e| panic!("{e}"));
        let state = spec.render(&NodeMeta::default());
        let all: Vec<&Resource> = state.resources.iter().collect();
        // The engine's indices name the same resources.
        for (ds, is) in dependencies(&all).iter().zip(dependency_indices(&all)) {
            let named: Vec<String> = is.iter().map(|&j| all[j].id()).collect();
            let listed: Vec<String> = ds.iter().map(|d| d.on.clone()).collect();
            assert_eq!(named, listed);
        }
        let mut out = String::new();
        for (r, ds) in all.iter().zip(dependencies(&all)) {
            for d in ds {
                out.push_str(&format!("{} after {} ({})\n", r.id(), d.on, d.why));
            }
        }
        out
    }

    #[test]
    fn implicit_dependencies_follow_owners_paths_users_and_packages() {
        let yaml = r#"roles:
  r:
    groups: [{name: www}]
    users: [{name: deploy, group: www}, {name: gone, ensure: absent}]
    packages: [{name: nginx}, {name: cron}]
    directories:
      - {path: /srv/app, owner: deploy, group: www}
      - {path: /srv/app/conf/d}
    files:
      - {path: /srv/app/conf/d/a.conf, content: x, owner: deploy}
      - {path: /srv/app/b, content: x, owner: root, group: www}
      - {path: /etc/motd, content: x, owner: gone}
      - {path: /srv/app/old, ensure: absent}
    symlinks: [{path: /srv/app/current, target: b}]
    cron: [{name: job, schedule: "@daily", user: deploy, command: "true"}]
    services:
      - {name: nginx, requires: ["directory:/srv/app"]}
      - {name: cron}
groups:
  all: {roles: [r]}
"#;
        expect_test::expect![[r#"
            user[deploy] after group[www] (its group)
            directory[/srv/app] after user[deploy] (its owner)
            directory[/srv/app] after group[www] (its group)
            directory[/srv/app/conf/d] after directory[/srv/app] (the directory it is in)
            file[/srv/app/b] after group[www] (its group)
            file[/srv/app/b] after directory[/srv/app] (the directory it is in)
            file[/srv/app/conf/d/a.conf] after user[deploy] (its owner)
            file[/srv/app/conf/d/a.conf] after directory[/srv/app/conf/d] (the directory it is in)
            symlink[/srv/app/current] after directory[/srv/app] (the directory it is in)
            cron[job] after user[deploy] (the user it runs as)
            service[cron] after package[cron] (the package of the same name)
            service[nginx] after directory[/srv/app] (requires)
            service[nginx] after package[nginx] (the package of the same name)
        "#]]
        .assert_eq(&deps(yaml));
    }

    #[test]
    fn a_cycle_through_an_implicit_dependency_is_refused_at_parse() {
        let yaml = "roles:\n  r:\n    users: [{name: deploy, requires: [\"file:/etc/x\"]}]\n    files: [{path: /etc/x, content: x, owner: deploy}]\ngroups:\n  all: {roles: [r]}\n";
        let err = parse(&[Source {
            name: "t.yaml".into(),
            text: yaml.into(),
        }])
        .unwrap_err()
        .to_string();
        expect_test::expect!["t.yaml:6: groups.all: requires form a cycle: file[/etc/x] -> user[deploy] -> file[/etc/x]"].assert_eq(&err);
    }
}
