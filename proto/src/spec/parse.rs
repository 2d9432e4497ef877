//! YAML sources to a validated [`Spec`], with file, line and field on every error.
//!
//! Each source is read into a marked tree ([`super::yaml`]), decoded with the
//! dotted field path ([`super::decode`]) by the schema ([`super::schema`]),
//! and merged: every problem is reported where it is, and all problems at once.

use super::decode::{Cx, join};
use super::model::*;
use super::schema::{decode_group, decode_role};
use super::{SpecErrors, validate, yaml};

/// One YAML document source: a name shown in errors, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// Parses, validates and merges sources into one spec.
pub fn parse(sources: &[Source]) -> Result<Spec, SpecErrors> {
    let mut errors = Vec::new();
    let mut spec = Spec::default();
    for src in sources {
        let mut cx = Cx::new(&src.name);
        let doc = match yaml::parse(&src.text) {
            Ok(d) => d,
            Err((line, message)) => {
                cx.err(line, "(document)", message);
                errors.extend(cx.errors);
                continue;
            }
        };
        if let Some(top) = cx.fields(&doc, "", &["roles", "groups", "rollout"]) {
            if let Some(roles) = top.get("roles") {
                for (name, line, node) in cx.entries(roles, "roles") {
                    let path = join("roles", name);
                    if let Err(e) = validate::spec_name(name) {
                        cx.err(line, &path, e);
                        continue;
                    }
                    let mut role = decode_role(&mut cx, node, &path);
                    role.origin = Origin {
                        file: src.name.clone(),
                        line,
                    };
                    if let Some(prev) = spec.roles.get(name) {
                        cx.err(
                            line,
                            &path,
                            format!(
                                "role {name} is also defined at {}; define each role once",
                                prev.origin
                            ),
                        );
                        continue;
                    }
                    spec.roles.insert(name.to_owned(), role);
                }
            }
            if let Some(groups) = top.get("groups") {
                for (name, line, node) in cx.entries(groups, "groups") {
                    let path = join("groups", name);
                    if let Err(e) = validate::spec_name(name) {
                        cx.err(line, &path, e);
                        continue;
                    }
                    let mut group = decode_group(&mut cx, node, &path);
                    group.origin = Origin {
                        file: src.name.clone(),
                        line,
                    };
                    if let Some(prev) = spec.groups.get(name) {
                        cx.err(line, &path, format!("node group {name} is also defined at {}; define each node group once", prev.origin));
                        continue;
                    }
                    spec.groups.insert(name.to_owned(), group);
                }
            }
            if let Some(r) = top.get("rollout") {
                take_rollout(&mut cx, &mut spec, r, &src.name);
            }
        }
        errors.extend(cx.errors);
    }
    if errors.is_empty() {
        errors.extend(super::render::check(&spec));
        errors.extend(super::rollout::check(&spec));
    }
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(SpecErrors(errors))
    }
}

/// The one top-level rollout policy, from whichever source gives it.
fn take_rollout(cx: &mut Cx<'_>, spec: &mut Spec, node: &yaml::Node, file: &str) {
    if spec.rollout.is_some() {
        cx.err(
            node.line,
            "rollout",
            format!("a rollout policy is already given before {file}; give it once"),
        );
        return;
    }
    spec.rollout = super::rollout::decode_rollout(cx, node, "rollout");
}

/// Parses one source named `site.yaml`: "ok", or its errors as printed.
#[cfg(test)]
pub(super) fn errs(yaml: &str) -> String {
    match parse(&[Source {
        name: "site.yaml".into(),
        text: yaml.into(),
    }]) {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn conflicting_declarations_name_both_places() {
        expect![[r#"site.yaml:7: groups.all: file[/etc/x] is declared differently by role a (site.yaml:3) and role b (site.yaml:5), and both reach nodes of node group all"#]]
            .assert_eq(&errs("roles:\n  a:\n    files: [{path: /etc/x, content: one}]\n  b:\n    files: [{path: /etc/x, content: two}]\ngroups:\n  all:\n    roles: [a, b]\n"));
    }

    #[test]
    fn conflicts_across_compatible_groups_only() {
        let base = "roles:\n  a:\n    files: [{path: /etc/x, content: one}]\n  b:\n    files: [{path: /etc/x, content: two}]\ngroups:\n";
        assert_eq!(
            errs(&format!(
                "{base}  web: {{match: {{role: web}}, roles: [a]}}\n  db: {{match: {{role: db}}, roles: [b]}}\n"
            )),
            "ok"
        );
        expect!["site.yaml:7: groups.web: file[/etc/x] is declared differently by role b (site.yaml:5) and role a (site.yaml:3), and both reach nodes matching node groups db and web"]
            .assert_eq(&errs(&format!("{base}  web: {{match: {{role: web}}, roles: [a]}}\n  db: {{match: {{dc: x}}, roles: [b]}}\n")));
    }

    #[test]
    fn identical_duplicates_merge_and_a_file_is_not_a_directory() {
        assert_eq!(
            errs(
                "roles:\n  a:\n    files: [{path: /etc/x, content: one}]\n  b:\n    files: [{path: /etc/x, content: one}]\ngroups:\n  all: {roles: [a, b]}\n"
            ),
            "ok"
        );
        let out = errs(
            "roles:\n  a:\n    files: [{path: /etc/x}]\n  b:\n    directories: [{path: /etc/x}]\ngroups:\n  all: {roles: [a, b]}\n",
        );
        assert!(
            out.contains("file[/etc/x]") && out.contains("directory[/etc/x]"),
            "{out}"
        );
    }

    #[test]
    fn roles_defined_twice_and_undefined_roles() {
        let out = parse(&[
            Source {
                name: "a.yaml".into(),
                text: "roles:\n  web: {}\n".into(),
            },
            Source {
                name: "b.yaml".into(),
                text: "roles:\n  web: {}\ngroups:\n  g: {roles: [nope]}\n".into(),
            },
        ])
        .unwrap_err()
        .to_string();
        expect![[
            r#"b.yaml:2: roles.web: role web is also defined at a.yaml:2; define each role once"#
        ]]
        .assert_eq(&out);
        expect!["site.yaml:4: groups.g.roles[0]: role nope is not defined; defined roles: web"]
            .assert_eq(&errs("roles:\n  web: {}\ngroups:\n  g: {roles: [nope]}\n"));
    }

    #[test]
    fn notify_must_name_a_declared_service() {
        expect![[r#"site.yaml:3: groups.g: file[/etc/app.conf] notifies service nginx, which no role of node group g declares; declare it under services or drop it from notify"#]]
            .assert_eq(&errs(
                "roles:\n  r:\n    files: [{path: /etc/app.conf, content: x, notify: [nginx]}]\n  s:\n    services: [{name: nginx}]\ngroups:\n  g: {roles: [r]}\n  h: {match: {x: y}, roles: [s]}\n",
            ));
        assert_eq!(
            errs(
                "roles:\n  r:\n    files: [{path: /etc/app.conf, content: x, notify: [nginx]}]\n    services: [{name: nginx}]\ngroups:\n  g: {roles: [r]}\n"
            ),
            "ok"
        );
    }

    #[test]
    fn requires_must_exist_and_not_cycle() {
        let out = errs(
            "roles:\n  r:\n    files: [{path: /a, requires: [\"file:/b\"]}, {path: /b, requires: [\"file:/a\"]}]\n    services: [{name: s, requires: [\"package:missing\"]}]\ngroups:\n  g: {roles: [r]}\n",
        );
        assert!(
            out.contains("requires package:missing, which no role of node group g declares"),
            "{out}"
        );
        assert!(out.contains("cycle"), "{out}");
    }
}
