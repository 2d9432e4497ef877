//! The schema of a spec file: which keys a role, a node group and each kind
//! of resource take, mapped onto the model and checked by its validators.

use super::decode::{Cx, join};
use super::model::*;
use super::validate;
use super::yaml::{Node, Val};
use std::collections::BTreeMap;

/// Role keys (resource lists) and the kind each holds.
const ROLE_KEYS: [(&str, &str); 9] = [
    ("files", "file"),
    ("directories", "directory"),
    ("symlinks", "symlink"),
    ("users", "user"),
    ("groups", "group"),
    ("packages", "package"),
    ("cron", "cron"),
    ("sysctl", "sysctl"),
    ("services", "service"),
];

fn allowed_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "file" => &[
            "path", "content", "template", "owner", "group", "mode", "ensure", "replace", "notify",
            "requires",
        ],
        "directory" => &["path", "owner", "group", "mode", "ensure", "requires"],
        "symlink" => &["path", "target", "ensure", "requires"],
        "user" => &[
            "name",
            "uid",
            "group",
            "groups",
            "home",
            "shell",
            "system",
            "authorized_keys",
            "remove_home",
            "ensure",
            "requires",
        ],
        "group" => &["name", "gid", "system", "ensure", "requires"],
        "package" => &["name", "ensure", "notify", "requires"],
        "cron" => &[
            "name", "schedule", "user", "command", "env", "ensure", "requires",
        ],
        "sysctl" => &["key", "value", "ensure", "requires"],
        "service" => &["name", "ensure", "enabled", "unit", "requires"],
        _ => &[],
    }
}

/// One resource of `kind`, decoded and validated; `None` after reporting its problems.
fn decode_resource(cx: &mut Cx<'_>, kind: &str, node: &Node, path: &str) -> Option<Resource> {
    let f = cx.fields(node, path, allowed_keys(kind))?;
    let key_field = match kind {
        "file" | "directory" | "symlink" => "path",
        "sysctl" => "key",
        _ => "name",
    };
    let Some(key_node) = f.get(key_field) else {
        cx.err(
            node.line,
            path,
            format!("missing required field `{key_field}`"),
        );
        return None;
    };
    let key = cx.string(key_node, &join(path, key_field))?;
    let s = |cx: &mut Cx<'_>, k: &str| f.get(k).and_then(|n| cx.string(n, &join(path, k)));
    let b = |cx: &mut Cx<'_>, k: &str| {
        f.get(k)
            .and_then(|n| cx.bool(n, &join(path, k)))
            .unwrap_or(false)
    };
    let ensure = |cx: &mut Cx<'_>| {
        f.get("ensure")
            .map(|n| cx.ensure(n, &join(path, "ensure")))
            .unwrap_or_default()
    };
    let requires = |cx: &mut Cx<'_>| {
        f.get("requires")
            .map(|n| cx.requires(n, &join(path, "requires")))
            .unwrap_or_default()
    };
    let mode = |cx: &mut Cx<'_>| f.get("mode").and_then(|n| cx.mode(n, &join(path, "mode")));
    let list = |cx: &mut Cx<'_>, k: &str| f.get(k).map(|n| cx.strings(n, &join(path, k)));
    let strings = |cx: &mut Cx<'_>, k: &str| list(cx, k).unwrap_or_default();
    let number = |cx: &mut Cx<'_>, k: &str| f.get(k).and_then(|n| cx.u32(n, &join(path, k)));
    let r = match kind {
        "file" => Resource::File(File {
            path: key,
            content: s(cx, "content"),
            template: b(cx, "template"),
            vars: Vars::new(),
            owner: s(cx, "owner"),
            group: s(cx, "group"),
            mode: mode(cx),
            ensure: ensure(cx),
            replace: b(cx, "replace"),
            notify: strings(cx, "notify"),
            requires: requires(cx),
        }),
        "directory" => Resource::Directory(Directory {
            path: key,
            owner: s(cx, "owner"),
            group: s(cx, "group"),
            mode: mode(cx),
            ensure: ensure(cx),
            requires: requires(cx),
        }),
        "symlink" => Resource::Symlink(Symlink {
            path: key,
            target: s(cx, "target"),
            ensure: ensure(cx),
            requires: requires(cx),
        }),
        "user" => Resource::User(User {
            name: key,
            uid: number(cx, "uid"),
            group: s(cx, "group"),
            groups: list(cx, "groups"),
            home: s(cx, "home"),
            shell: s(cx, "shell"),
            system: b(cx, "system"),
            authorized_keys: list(cx, "authorized_keys"),
            remove_home: b(cx, "remove_home"),
            ensure: ensure(cx),
            requires: requires(cx),
        }),
        "group" => Resource::Group(Group {
            name: key,
            gid: number(cx, "gid"),
            system: b(cx, "system"),
            ensure: ensure(cx),
            requires: requires(cx),
        }),
        "package" => {
            let ensure = match f.get("ensure") {
                None => PackageEnsure::Present,
                Some(n) => match cx.string(n, &join(path, "ensure")).as_deref() {
                    Some("present") | None => PackageEnsure::Present,
                    Some("absent") => PackageEnsure::Absent,
                    Some("latest") => PackageEnsure::Latest,
                    Some(v) => PackageEnsure::Version(v.to_owned()),
                },
            };
            Resource::Package(Package {
                name: key,
                ensure,
                notify: strings(cx, "notify"),
                requires: requires(cx),
            })
        }
        "cron" => Resource::Cron(Cron {
            name: key,
            schedule: s(cx, "schedule"),
            user: s(cx, "user").unwrap_or_else(|| "root".into()),
            command: s(cx, "command"),
            env: f
                .get("env")
                .map(|n| cx.string_map(n, &join(path, "env")))
                .unwrap_or_default(),
            ensure: ensure(cx),
            requires: requires(cx),
        }),
        "sysctl" => Resource::Sysctl(Sysctl {
            key,
            value: s(cx, "value"),
            ensure: ensure(cx),
            requires: requires(cx),
        }),
        "service" => {
            let ensure = f.get("ensure").and_then(|n| {
                match cx.string(n, &join(path, "ensure")).as_deref() {
                    Some("running") => Some(ServiceEnsure::Running),
                    Some("stopped") => Some(ServiceEnsure::Stopped),
                    Some("absent") => Some(ServiceEnsure::Absent),
                    Some(other) => {
                        cx.err(
                            n.line,
                            &join(path, "ensure"),
                            format!(
                                "invalid ensure {other:?}: allowed are running, stopped, absent"
                            ),
                        );
                        None
                    }
                    None => None,
                }
            });
            Resource::Service(Service {
                name: key,
                ensure,
                enabled: f
                    .get("enabled")
                    .and_then(|n| cx.bool(n, &join(path, "enabled"))),
                unit: s(cx, "unit"),
                requires: requires(cx),
            })
        }
        _ => unreachable!("kinds come from ROLE_KEYS"),
    };
    let problems = validate::resource(&r);
    for (field, message) in &problems {
        let line = f.get(field.as_str()).map(|n| n.line).unwrap_or(node.line);
        cx.err(line, &join(path, field), message.clone());
    }
    problems.is_empty().then_some(r)
}

/// A role: its resource lists, each resource once.
pub(super) fn decode_role(cx: &mut Cx<'_>, node: &Node, path: &str) -> Role {
    let keys: Vec<&str> = ROLE_KEYS.iter().map(|(k, _)| *k).collect();
    let mut role = Role::default();
    let Some(f) = cx.fields(node, path, &keys) else {
        return role;
    };
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (key, kind) in ROLE_KEYS {
        let Some(list) = f.get(key) else { continue };
        let field = join(path, key);
        for (i, item) in cx.list(list, &field).iter().enumerate() {
            let ipath = format!("{field}[{i}]");
            if let Some(r) = decode_resource(cx, kind, item, &ipath) {
                if let Some(first) = seen.insert(r.id(), item.line) {
                    cx.err(
                        item.line,
                        &ipath,
                        format!(
                            "{} is declared twice in this role (first at line {first})",
                            r.id()
                        ),
                    );
                    continue;
                }
                role.resources.push(r);
                role.origins.push(Origin {
                    file: cx.file.to_owned(),
                    line: item.line,
                });
            }
        }
    }
    role
}

/// A node group: its label selector, roles, vars and rollout policy.
pub(super) fn decode_group(cx: &mut Cx<'_>, node: &Node, path: &str) -> NodeGroup {
    let mut g = NodeGroup::default();
    let Some(f) = cx.fields(node, path, &["match", "roles", "vars", "rollout"]) else {
        return g;
    };
    if let Some(r) = f.get("rollout") {
        g.rollout = super::rollout::decode_rollout(cx, r, &join(path, "rollout"));
        g.rollout_origin = Origin {
            file: cx.file.to_owned(),
            line: r.line,
        };
    }
    if let Some(m) = f.get("match") {
        let field = join(path, "match");
        for (k, line, v) in cx.entries(m, &field) {
            let kf = join(&field, k);
            if let Err(e) = validate::label_key(k) {
                cx.err(line, &kf, e);
            }
            if let Some(val) = cx.string(v, &kf) {
                if let Err(e) = validate::label_value(&val) {
                    cx.err(v.line, &kf, e);
                }
                g.selector.insert(k.to_owned(), val);
            }
        }
    }
    if let Some(r) = f.get("roles") {
        let field = join(path, "roles");
        let items = cx.list(r, &field).to_vec();
        for (i, n) in items.iter().enumerate() {
            if let Some(name) = cx.string(n, &format!("{field}[{i}]")) {
                g.roles.push(name);
                g.role_lines.push(n.line);
            }
        }
    }
    if let Some(v) = f.get("vars") {
        let field = join(path, "vars");
        if let serde_json::Value::Object(map) = cx.json(v, &field) {
            g.vars = map.into_iter().collect();
        } else if !matches!(v.val, Val::Null) {
            cx.err(
                v.line,
                &field,
                "expected a mapping of variable names to values",
            );
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use crate::spec::parse::{Source, errs, parse};
    use expect_test::expect;

    #[test]
    fn valid_example_parses() {
        let spec = parse(&[Source {
            name: "site.yaml".into(),
            text: r#"
roles:
  web:
    groups: [{name: www, system: true}]
    users: [{name: deploy, group: www, groups: [adm], shell: /bin/bash, authorized_keys: ["ssh-ed25519 AAAA x"]}]
    packages: [{name: nginx}, {name: curl, ensure: latest}, {name: jq, ensure: "1.6-2.1"}]
    directories: [{path: /srv/www, mode: "0755", owner: deploy}]
    files: [{path: /etc/nginx/conf.d/app.conf, content: "listen {{ vars.port }};", template: true, mode: "0644", notify: [nginx]}]
    symlinks: [{path: /srv/current, target: /srv/www}]
    cron: [{name: backup, schedule: "0 3 * * *", user: deploy, command: "tar czf /tmp/b.tgz /srv/www", env: {PATH: /usr/bin}}]
    services: [{name: nginx, ensure: running, enabled: true, requires: ["package:nginx"]}]
groups:
  web:
    match: {role: web}
    roles: [web]
    vars: {port: 8080, names: [a, b]}
"#
            .into(),
        }])
        .unwrap();
        assert_eq!(spec.roles["web"].resources.len(), 10);
        assert_eq!(spec.groups["web"].vars["port"], serde_json::json!(8080));
    }

    #[test]
    fn bad_paths_names_and_cron_fields_are_refused() {
        let out = errs(
            "roles:\n  r:\n    files:\n      - {path: ../etc/x}\n      - {path: /var/lib/ballast-agent/node.key}\n    users: [{name: -bad}]\n    cron: [{name: j, schedule: \"* * * * *\", command: \"date +%s\"}]\n",
        );
        expect![[r#"
            site.yaml:4: roles.r.files[0].path: path "../etc/x" is not absolute: allowed are absolute, normalised paths (no '.' or '..' segments, no '//', no trailing '/')
            site.yaml:5: roles.r.files[1].path: path "/var/lib/ballast-agent/node.key" is inside the agent's state dir /var/lib/ballast-agent, which cannot be managed
            site.yaml:6: roles.r.users[0].name: invalid user or group name "-bad": allowed are up to 32 characters of a-z, 0-9, '_' and '-', starting with a letter or '_' (optionally ending in '$')
            site.yaml:7: roles.r.cron[0].command: invalid cron command "date +%s": cron turns a bare '%' into a newline; write it as '\%'"#]]
        .assert_eq(&out);
    }

    /// The fields added with issue 8 (sysctl, service absent, remove_home)
    /// are checked with file, line and field.
    #[test]
    fn sysctl_absent_services_and_remove_home_are_checked() {
        let out = errs(
            "roles:\n  r:\n    sysctl:\n      - {key: net/ipv4/ip_forward, value: \"1\"}\n      - {key: vm.swappiness}\n      - {key: net.ipv4.ip_forward, value: 1}\n    services: [{name: app, ensure: absent, unit: x, enabled: true}]\n    users: [{name: u, remove_home: true}]\ngroups:\n  all: {roles: [r]}\n",
        );
        expect![[r#"
            site.yaml:8: roles.r.users[0].remove_home: remove_home applies only to a user with ensure: absent
            site.yaml:4: roles.r.sysctl[0].key: invalid sysctl key "net/ipv4/ip_forward": '/' is not allowed; allowed are 2 or more dot-separated segments of A-Z, a-z, 0-9, '_' and '-' (not starting with '-'), at most 255 characters, the first one of abi, debug, dev, fs, kernel, net, user, vm
            site.yaml:5: roles.r.sysctl[1].value: a sysctl needs a value
            site.yaml:7: roles.r.services[0].unit: a service with ensure: absent takes no unit (its unit file is removed if the agent wrote it)
            site.yaml:7: roles.r.services[0].enabled: a service with ensure: absent is disabled; enabled: true contradicts it"#]].assert_eq(&out);
    }

    #[test]
    fn cron_schedules_name_the_bad_field_with_file_and_line() {
        expect![[r#"site.yaml:4: roles.r.cron[0].schedule: invalid cron schedule "61 * * * *": minute 61 out of range 0-59"#]]
            .assert_eq(&errs(
                "roles:\n  r:\n    cron:\n      - {name: j, schedule: \"61 * * * *\", command: \"true\"}\n",
            ));
    }

    #[test]
    fn template_syntax_errors_are_refused_with_file_and_line() {
        expect![[r#"site.yaml:5: roles.r.files[0].content: invalid template: syntax error: unexpected `}`, expected end of variable block (template line 2)"#]]
            .assert_eq(&errs(
                "roles:\n  r:\n    files:\n      - path: /etc/app.conf\n        content: \"port\\n{{ vars.port }\"\n        template: true\n",
            ));
        // Not a template: the same text is plain content.
        assert_eq!(
            errs("roles:\n  r:\n    files: [{path: /etc/a, content: \"{{ vars.port }\"}]\n"),
            "ok"
        );
    }

    #[test]
    fn service_names_are_unit_names_with_file_line_and_field() {
        expect![[r#"
            site.yaml:4: roles.r.files[0].notify: invalid service name "--now": it starts with '-'; allowed are a systemd unit name without its .service suffix: 1 to 247 characters of A-Z, a-z, 0-9, ':', '-', '_', '.', '\' and '@', not starting with '-' or '@', with an instance after any '@' (as in getty@tty1)
            site.yaml:3: roles.r.services[0].name: invalid service name "-x": it starts with '-'; allowed are a systemd unit name without its .service suffix: 1 to 247 characters of A-Z, a-z, 0-9, ':', '-', '_', '.', '\' and '@', not starting with '-' or '@', with an instance after any '@' (as in getty@tty1)"#]]
        .assert_eq(&errs(
            "roles:\n  r:\n    services: [{name: \"-x\"}]\n    files: [{path: /etc/a, notify: [\"--now\"]}]\n",
        ));
    }
}
