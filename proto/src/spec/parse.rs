//! YAML sources to a validated [`Spec`], with file, line and field on every error.
//!
//! The YAML event parser builds a small tree that keeps the line of every key
//! and value; a hand-written decoder walks it with the dotted field path, so
//! every problem is reported where it is, and all problems at once.

use super::model::*;
use super::{SpecError, SpecErrors, validate};
use std::collections::BTreeMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One YAML document source: a name shown in errors, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub text: String,
}

// ---- the marked tree ----

#[derive(Debug, Clone)]
enum Val {
    Null,
    /// Text, and whether it was written plain (unquoted), which decides
    /// whether `true`, `8080` or `0644` are booleans and numbers.
    Str(String, bool),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone)]
struct Node {
    line: usize,
    val: Val,
}

impl Node {
    fn describe(&self) -> &'static str {
        match &self.val {
            Val::Null => "nothing",
            Val::Str(_, _) => "a scalar",
            Val::Seq(_) => "a list",
            Val::Map(_) => "a mapping",
        }
    }
}

#[derive(Default)]
struct Builder {
    stack: Vec<Node>,
    docs: Vec<Node>,
    error: Option<(usize, String)>,
}

impl Builder {
    fn push_value(&mut self, node: Node) {
        match self.stack.last_mut() {
            Some(Node {
                val: Val::Seq(items),
                ..
            }) => items.push(node),
            Some(Node {
                val: Val::Map(pairs),
                ..
            }) => match pairs.last_mut() {
                Some((_, v)) if matches!(v.val, Val::Null) && v.line == usize::MAX => *v = node,
                _ => pairs.push((
                    node,
                    Node {
                        line: usize::MAX,
                        val: Val::Null,
                    },
                )),
            },
            Some(_) => unreachable!("only collections are on the stack"),
            None => self.docs.push(node),
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(s, style, _, _) => {
                let plain = style == TScalarStyle::Plain;
                let val = if plain && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL") {
                    Val::Null
                } else {
                    Val::Str(s, plain)
                };
                self.push_value(Node { line, val });
            }
            Event::SequenceStart(_, _) => self.stack.push(Node {
                line,
                val: Val::Seq(Vec::new()),
            }),
            Event::MappingStart(_, _) => self.stack.push(Node {
                line,
                val: Val::Map(Vec::new()),
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(node) = self.stack.pop() {
                    self.push_value(node);
                }
            }
            Event::Alias(_) => {
                if self.error.is_none() {
                    self.error = Some((
                        line,
                        "anchors and aliases are not supported; write the value out".into(),
                    ));
                }
                self.push_value(Node {
                    line,
                    val: Val::Null,
                });
            }
            _ => {}
        }
    }
}

/// Parses YAML text into one marked tree (an empty file is an empty mapping).
fn parse_yaml(text: &str) -> Result<Node, (usize, String)> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser
        .load(&mut builder, true)
        .map_err(|e| (e.marker().line(), format!("invalid YAML: {}", e.info())))?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    if builder.docs.len() > 1 {
        return Err((
            builder.docs[1].line,
            "more than one YAML document in one file; split them into files".into(),
        ));
    }
    // A key with no value keeps its placeholder line; give it the key's line.
    fn fix(node: &mut Node) {
        match &mut node.val {
            Val::Seq(items) => items.iter_mut().for_each(fix),
            Val::Map(pairs) => {
                for (k, v) in pairs.iter_mut() {
                    if v.line == usize::MAX {
                        v.line = k.line;
                    }
                    fix(v);
                }
            }
            _ => {}
        }
    }
    let mut doc = builder.docs.pop().unwrap_or(Node {
        line: 1,
        val: Val::Map(Vec::new()),
    });
    fix(&mut doc);
    Ok(doc)
}

// ---- decoding with context ----

struct Cx<'a> {
    file: &'a str,
    errors: Vec<SpecError>,
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest allowed key, when it is close enough to be a typo.
fn suggest<'k>(key: &str, allowed: &[&'k str]) -> Option<&'k str> {
    allowed
        .iter()
        .map(|a| (edit_distance(key, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 3))
        .min()
        .map(|(_, a)| a)
}

type Fields<'n> = BTreeMap<&'n str, &'n Node>;

impl Cx<'_> {
    fn err(&mut self, line: usize, field: &str, message: impl Into<String>) {
        self.errors.push(SpecError {
            file: self.file.to_owned(),
            line,
            field: field.to_owned(),
            message: message.into(),
        });
    }

    /// A mapping with only `allowed` keys, each once.
    fn fields<'n>(&mut self, node: &'n Node, field: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let Val::Map(pairs) = &node.val else {
            self.err(
                node.line,
                field,
                format!(
                    "expected a mapping with keys {}, found {}",
                    allowed.join(", "),
                    node.describe()
                ),
            );
            return None;
        };
        let mut out = BTreeMap::new();
        for (k, v) in pairs {
            let Val::Str(key, _) = &k.val else {
                self.err(k.line, field, "keys must be plain strings");
                continue;
            };
            let path = join(field, key);
            if !allowed.contains(&key.as_str()) {
                let hint = suggest(key, allowed)
                    .map(|s| format!("did you mean `{s}`? "))
                    .unwrap_or_default();
                self.err(
                    k.line,
                    &path,
                    format!(
                        "unknown field `{key}`, {hint}allowed: {}",
                        allowed.join(", ")
                    ),
                );
                continue;
            }
            if out.insert(key.as_str(), v).is_some() {
                self.err(k.line, &path, format!("`{key}` is given twice"));
            }
        }
        Some(out)
    }

    /// A mapping with free-form keys (role names, labels...), each once.
    fn entries<'n>(&mut self, node: &'n Node, field: &str) -> Vec<(&'n str, usize, &'n Node)> {
        match &node.val {
            Val::Null => Vec::new(),
            Val::Map(pairs) => {
                let mut seen = std::collections::BTreeSet::new();
                let mut out = Vec::new();
                for (k, v) in pairs {
                    let Val::Str(key, _) = &k.val else {
                        self.err(k.line, field, "keys must be plain strings");
                        continue;
                    };
                    if !seen.insert(key.as_str()) {
                        self.err(k.line, &join(field, key), format!("`{key}` is given twice"));
                        continue;
                    }
                    out.push((key.as_str(), k.line, v));
                }
                out
            }
            _ => {
                self.err(
                    node.line,
                    field,
                    format!("expected a mapping, found {}", node.describe()),
                );
                Vec::new()
            }
        }
    }

    fn list<'n>(&mut self, node: &'n Node, field: &str) -> &'n [Node] {
        match &node.val {
            Val::Null => &[],
            Val::Seq(items) => items,
            _ => {
                self.err(
                    node.line,
                    field,
                    format!("expected a list, found {}", node.describe()),
                );
                &[]
            }
        }
    }

    fn string(&mut self, node: &Node, field: &str) -> Option<String> {
        match &node.val {
            Val::Str(s, _) => Some(s.clone()),
            _ => {
                self.err(
                    node.line,
                    field,
                    format!("expected a string, found {}", node.describe()),
                );
                None
            }
        }
    }

    fn bool(&mut self, node: &Node, field: &str) -> Option<bool> {
        match &node.val {
            Val::Str(s, true) if s == "true" => Some(true),
            Val::Str(s, true) if s == "false" => Some(false),
            _ => {
                self.err(node.line, field, "expected true or false");
                None
            }
        }
    }

    fn u32(&mut self, node: &Node, field: &str) -> Option<u32> {
        match &node.val {
            Val::Str(s, true) if s.parse::<u32>().is_ok() => s.parse().ok(),
            _ => {
                self.err(
                    node.line,
                    field,
                    "expected a whole number from 0 to 4294967295",
                );
                None
            }
        }
    }

    fn strings(&mut self, node: &Node, field: &str) -> Vec<String> {
        let items = self.list(node, field);
        items
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.string(n, &format!("{field}[{i}]")))
            .collect()
    }

    fn string_map(&mut self, node: &Node, field: &str) -> BTreeMap<String, String> {
        let entries = self.entries(node, field);
        let mut out = BTreeMap::new();
        for (k, _, v) in entries {
            if let Some(s) = self.string(v, &join(field, k)) {
                out.insert(k.to_owned(), s);
            }
        }
        out
    }

    fn json(&mut self, node: &Node, field: &str) -> serde_json::Value {
        use serde_json::Value as J;
        match &node.val {
            Val::Null => J::Null,
            Val::Str(s, false) => J::String(s.clone()),
            Val::Str(s, true) => match s.as_str() {
                "true" => J::Bool(true),
                "false" => J::Bool(false),
                _ => s
                    .parse::<i64>()
                    .map(J::from)
                    .ok()
                    .or_else(|| {
                        s.parse::<f64>()
                            .ok()
                            .and_then(serde_json::Number::from_f64)
                            .map(J::Number)
                    })
                    .unwrap_or_else(|| J::String(s.clone())),
            },
            Val::Seq(items) => J::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, n)| self.json(n, &format!("{field}[{i}]")))
                    .collect(),
            ),
            Val::Map(_) => {
                let entries = self.entries(node, field);
                J::Object(
                    entries
                        .into_iter()
                        .map(|(k, _, v)| (k.to_owned(), self.json(v, &join(field, k))))
                        .collect(),
                )
            }
        }
    }

    fn mode(&mut self, node: &Node, field: &str) -> Option<u32> {
        match &node.val {
            Val::Str(s, false) => match validate::parse_mode(s) {
                Ok(m) => Some(m),
                Err(e) => {
                    self.err(node.line, field, e);
                    None
                }
            },
            Val::Str(s, true) => {
                self.err(node.line, field, format!("mode {s} must be quoted, as in \"0{}\": unquoted YAML numbers lose their octal meaning", s.trim_start_matches('0')));
                None
            }
            _ => {
                self.err(
                    node.line,
                    field,
                    "expected an octal string such as \"0644\"",
                );
                None
            }
        }
    }

    fn ensure(&mut self, node: &Node, field: &str) -> Ensure {
        match self.string(node, field).as_deref() {
            Some("present") | None => Ensure::Present,
            Some("absent") => Ensure::Absent,
            Some(other) => {
                self.err(
                    node.line,
                    field,
                    format!("invalid ensure {other:?}: allowed are present, absent"),
                );
                Ensure::Present
            }
        }
    }

    fn requires(&mut self, node: &Node, field: &str) -> Vec<ResourceRef> {
        let mut out = Vec::new();
        for (i, s) in self.strings(node, field).into_iter().enumerate() {
            match s.split_once(':') {
                Some((kind, name)) if Kind::from_name(kind).is_some() && !name.is_empty() => out
                    .push(ResourceRef {
                        kind: Kind::from_name(kind).expect("checked above"),
                        name: name.into(),
                    }),
                _ => {
                    let line = self
                        .list(node, field)
                        .get(i)
                        .map(|n| n.line)
                        .unwrap_or(node.line);
                    self.err(
                        line,
                        &format!("{field}[{i}]"),
                        format!(
                            "invalid reference {s:?}: expected kind:name with kind one of {}",
                            Kind::ORDER.map(Kind::as_str).join(", ")
                        ),
                    );
                }
            }
        }
        out
    }
}

fn join(field: &str, key: &str) -> String {
    if field.is_empty() {
        key.to_owned()
    } else {
        format!("{field}.{key}")
    }
}

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
    let strings = |cx: &mut Cx<'_>, k: &str| {
        f.get(k)
            .map(|n| cx.strings(n, &join(path, k)))
            .unwrap_or_default()
    };
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
            uid: f.get("uid").and_then(|n| cx.u32(n, &join(path, "uid"))),
            group: s(cx, "group"),
            groups: f
                .get("groups")
                .map(|n| cx.strings(n, &join(path, "groups"))),
            home: s(cx, "home"),
            shell: s(cx, "shell"),
            system: b(cx, "system"),
            authorized_keys: f
                .get("authorized_keys")
                .map(|n| cx.strings(n, &join(path, "authorized_keys"))),
            remove_home: b(cx, "remove_home"),
            ensure: ensure(cx),
            requires: requires(cx),
        }),
        "group" => Resource::Group(Group {
            name: key,
            gid: f.get("gid").and_then(|n| cx.u32(n, &join(path, "gid"))),
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

fn decode_role(cx: &mut Cx<'_>, node: &Node, path: &str) -> Role {
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

fn decode_group(cx: &mut Cx<'_>, node: &Node, path: &str) -> NodeGroup {
    let mut g = NodeGroup::default();
    let Some(f) = cx.fields(node, path, &["match", "roles", "vars"]) else {
        return g;
    };
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

/// Reads YAML sources from files as given and from directories (their
/// `*.yaml` and `*.yml` files, sorted, not recursive).
pub fn read_sources(paths: &[std::path::PathBuf]) -> Result<Vec<Source>, String> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        if meta.is_dir() {
            let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("list {}: {e}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect();
            entries.sort();
            if entries.is_empty() {
                return Err(format!(
                    "{}: no *.yaml or *.yml files in this directory",
                    path.display()
                ));
            }
            files.extend(entries);
        } else {
            files.push(path.clone());
        }
    }
    files
        .into_iter()
        .map(|f| {
            Ok(Source {
                text: std::fs::read_to_string(&f)
                    .map_err(|e| format!("read {}: {e}", f.display()))?,
                name: f.display().to_string(),
            })
        })
        .collect()
}

/// Parses, validates and merges sources into one spec.
pub fn parse(sources: &[Source]) -> Result<Spec, SpecErrors> {
    let mut errors = Vec::new();
    let mut spec = Spec::default();
    for src in sources {
        let mut cx = Cx {
            file: &src.name,
            errors: Vec::new(),
        };
        let doc = match parse_yaml(&src.text) {
            Ok(d) => d,
            Err((line, message)) => {
                cx.err(line, "(document)", message);
                errors.extend(cx.errors);
                continue;
            }
        };
        if let Some(top) = cx.fields(&doc, "", &["roles", "groups"]) {
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
        }
        errors.extend(cx.errors);
    }
    if errors.is_empty() {
        errors.extend(super::render::check(&spec));
    }
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(SpecErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn errs(yaml: &str) -> String {
        match parse(&[Source {
            name: "site.yaml".into(),
            text: yaml.into(),
        }]) {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

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
    fn malformed_yaml_names_file_and_line() {
        expect!["site.yaml:4: (document): invalid YAML: while parsing a flow mapping, did not find expected ',' or '}'"]
            .assert_eq(&errs("roles:\n  web:\n    files: [{path: /a, content: x\n"));
    }

    #[test]
    fn unknown_fields_suggest_the_nearest() {
        expect![[r#"site.yaml:5: roles.web.files[0].conten: unknown field `conten`, did you mean `content`? allowed: path, content, template, owner, group, mode, ensure, replace, notify, requires"#]]
            .assert_eq(&errs("roles:\n  web:\n    files:\n      - path: /etc/x\n        conten: hi\n"));
    }

    #[test]
    fn modes_must_be_quoted_octal() {
        expect![[r#"site.yaml:3: roles.web.files[0].mode: mode 0644 must be quoted, as in "0644": unquoted YAML numbers lose their octal meaning"#]]
            .assert_eq(&errs("roles:\n  web:\n    files: [{path: /etc/x, mode: 0644}]\n"));
        expect![[r#"site.yaml:3: roles.web.files[0].mode: invalid mode "0999": allowed are octal strings of 3 or 4 digits such as "0644""#]]
            .assert_eq(&errs("roles:\n  web:\n    files: [{path: /etc/x, mode: \"0999\"}]\n"));
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
    fn service_names_are_unit_names_with_file_line_and_field() {
        expect![[r#"
            site.yaml:4: roles.r.files[0].notify: invalid service name "--now": it starts with '-'; allowed are a systemd unit name without its .service suffix: 1 to 247 characters of A-Z, a-z, 0-9, ':', '-', '_', '.', '\' and '@', not starting with '-' or '@', with an instance after any '@' (as in getty@tty1)
            site.yaml:3: roles.r.services[0].name: invalid service name "-x": it starts with '-'; allowed are a systemd unit name without its .service suffix: 1 to 247 characters of A-Z, a-z, 0-9, ':', '-', '_', '.', '\' and '@', not starting with '-' or '@', with an instance after any '@' (as in getty@tty1)"#]]
        .assert_eq(&errs(
            "roles:\n  r:\n    services: [{name: \"-x\"}]\n    files: [{path: /etc/a, notify: [\"--now\"]}]\n",
        ));
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
