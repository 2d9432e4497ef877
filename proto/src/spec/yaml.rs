//! YAML text to a small tree that keeps the line of every key and value.
//!
//! Built from yaml-rust2's marked events; anchors, aliases and more than one
//! document per file are refused here, with the line.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

#[derive(Debug, Clone)]
pub(super) enum Val {
    Null,
    /// Text, and whether it was written plain (unquoted), which decides
    /// whether `true`, `8080` or `0644` are booleans and numbers.
    Str(String, bool),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) line: usize,
    pub(super) val: Val,
}

impl Node {
    /// What the node is, for "expected ..., found ..." messages.
    pub(super) fn describe(&self) -> &'static str {
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
pub(super) fn parse(text: &str) -> Result<Node, (usize, String)> {
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

#[cfg(test)]
mod tests {
    use crate::spec::parse::errs;
    use expect_test::expect;

    #[test]
    fn malformed_yaml_names_file_and_line() {
        expect!["site.yaml:4: (document): invalid YAML: while parsing a flow mapping, did not find expected ',' or '}'"]
            .assert_eq(&errs("roles:\n  web:\n    files: [{path: /a, content: x\n"));
    }
}
