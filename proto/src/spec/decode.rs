//! A generic decoder over the marked YAML tree: typed fields read with their
//! dotted path, every problem recorded as a [`SpecError`] with file and line
//! (unknown keys with the nearest allowed one), so all problems are found at once.

use super::model::{Ensure, Kind, ResourceRef};
use super::yaml::{Node, Val};
use super::{SpecError, validate};
use std::collections::BTreeMap;

/// The decoding context of one source file: its name and the problems found.
pub(super) struct Cx<'a> {
    pub(super) file: &'a str,
    pub(super) errors: Vec<SpecError>,
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

pub(super) type Fields<'n> = BTreeMap<&'n str, &'n Node>;

impl<'a> Cx<'a> {
    pub(super) fn new(file: &'a str) -> Self {
        Cx {
            file,
            errors: Vec::new(),
        }
    }

    /// Records one problem at `line` of this file, under the dotted `field`.
    pub(super) fn err(&mut self, line: usize, field: &str, message: impl Into<String>) {
        self.errors.push(SpecError {
            file: self.file.to_owned(),
            line,
            field: field.to_owned(),
            message: message.into(),
        });
    }

    /// A mapping with only `allowed` keys, each once.
    pub(super) fn fields<'n>(
        &mut self,
        node: &'n Node,
        field: &str,
        allowed: &[&str],
    ) -> Option<Fields<'n>> {
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
    pub(super) fn entries<'n>(
        &mut self,
        node: &'n Node,
        field: &str,
    ) -> Vec<(&'n str, usize, &'n Node)> {
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

    pub(super) fn list<'n>(&mut self, node: &'n Node, field: &str) -> &'n [Node] {
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

    pub(super) fn string(&mut self, node: &Node, field: &str) -> Option<String> {
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

    pub(super) fn bool(&mut self, node: &Node, field: &str) -> Option<bool> {
        match &node.val {
            Val::Str(s, true) if s == "true" => Some(true),
            Val::Str(s, true) if s == "false" => Some(false),
            _ => {
                self.err(node.line, field, "expected true or false");
                None
            }
        }
    }

    pub(super) fn u32(&mut self, node: &Node, field: &str) -> Option<u32> {
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

    pub(super) fn strings(&mut self, node: &Node, field: &str) -> Vec<String> {
        let items = self.list(node, field);
        items
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.string(n, &format!("{field}[{i}]")))
            .collect()
    }

    pub(super) fn string_map(&mut self, node: &Node, field: &str) -> BTreeMap<String, String> {
        let entries = self.entries(node, field);
        let mut out = BTreeMap::new();
        for (k, _, v) in entries {
            if let Some(s) = self.string(v, &join(field, k)) {
                out.insert(k.to_owned(), s);
            }
        }
        out
    }

    pub(super) fn json(&mut self, node: &Node, field: &str) -> serde_json::Value {
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

    pub(super) fn mode(&mut self, node: &Node, field: &str) -> Option<u32> {
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

    pub(super) fn ensure(&mut self, node: &Node, field: &str) -> Ensure {
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

    pub(super) fn requires(&mut self, node: &Node, field: &str) -> Vec<ResourceRef> {
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

/// The dotted path of `key` below `field`.
pub(super) fn join(field: &str, key: &str) -> String {
    if field.is_empty() {
        key.to_owned()
    } else {
        format!("{field}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::parse::errs;
    use expect_test::expect;

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
}
