//! File templates (`template: true`): one minijinja environment, the same
//! where the controller checks a template and where the agent renders it.
//!
//! Invariant: rendering is bounded in work ([`FUEL`] instructions), nesting
//! ([`RECURSION_LIMIT`]) and output ([`MAX_OUTPUT`] bytes); past a bound it
//! fails with an error that names the bound, never grows without end.

use std::collections::BTreeSet;
use std::io::Write;

/// Instructions one rendering may run (minijinja fuel). A loop over a few
/// thousand items with a few expressions each stays far below it; measured,
/// it is about a tenth of a second of work.
pub const FUEL: u64 = 5_000_000;

/// Largest rendered file.
pub const MAX_OUTPUT: usize = 16 * 1024 * 1024;

/// Nesting depth of loops, conditions and includes (minijinja's recursion
/// counter; an include counts more than one).
pub const RECURSION_LIMIT: usize = 100;

/// The names a template sees.
const CONTEXT: [&str; 3] = ["facts", "vars", "node"];

fn env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    env
}

/// `kind: detail (template line N)`, then its causes, without minijinja's
/// source excerpt, and with the bound that was hit.
fn describe(e: &minijinja::Error) -> String {
    let one = |e: &minijinja::Error| {
        let mut out = match e.detail() {
            Some(d) => format!("{}: {d}", e.kind()),
            None => e.kind().to_string(),
        };
        if let Some(line) = e.line() {
            out.push_str(&format!(" (template line {line})"));
        }
        out
    };
    // An include's error wraps the included template's: say each once.
    let mut parts = vec![one(e)];
    let mut last = e;
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let part = match c.downcast_ref::<minijinja::Error>() {
            Some(m) => {
                last = m;
                one(m)
            }
            None => c.to_string(),
        };
        if !parts.contains(&part) {
            parts.push(part);
        }
        cause = c.source();
    }
    let mut out = parts.join(": ");
    match last.kind() {
        minijinja::ErrorKind::OutOfFuel => {
            out.push_str(&format!("; a template may run at most {FUEL} instructions"))
        }
        minijinja::ErrorKind::InvalidOperation
            if last.detail().is_some_and(|d| d.contains("recursion")) =>
        {
            out.push_str(&format!(
                "; templates may nest at most {RECURSION_LIMIT} levels"
            ))
        }
        _ => {}
    }
    out
}

/// What the controller can know before a node renders: the template parses,
/// and it names no variable beyond `facts`, `vars`, `node` and minijinja's
/// own functions (facts and vars values are only known on the node).
pub fn check(source: &str) -> Result<(), String> {
    let mut env = env();
    env.add_template("file", source)
        .map_err(|e| format!("invalid template: {}", describe(&e)))?;
    let t = env.get_template("file").expect("just added");
    let globals: BTreeSet<&str> = env.globals().map(|(k, _)| k).collect();
    let unknown: BTreeSet<String> = t
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| !CONTEXT.contains(&v.as_str()) && !globals.contains(v.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "invalid template: it uses undefined variable{} {}; templates see facts, vars and node (as in {{{{ vars.port }}}})",
            if unknown.len() == 1 { "" } else { "s" },
            unknown.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

/// The names a template reads as `vars.NAME` that it does not guard with
/// `is defined`, `is undefined` or `default` (a guarded name may be
/// missing: the template says what to do then). Empty when it does not parse.
pub fn vars_used(source: &str) -> std::collections::BTreeSet<String> {
    let mut env = env();
    if env.add_template("file", source).is_err() {
        return Default::default();
    }
    let t = env.get_template("file").expect("just added");
    t.undeclared_variables(true)
        .into_iter()
        .filter_map(|path| {
            let rest = path.strip_prefix("vars.")?;
            Some(rest.split('.').next().unwrap_or(rest).to_owned())
        })
        .filter(|name| !guarded(source, name))
        .collect()
}

/// Whether `source` tests `vars.NAME` before use or gives it a default.
fn guarded(source: &str, name: &str) -> bool {
    let squeezed: String = source.split_whitespace().collect::<Vec<_>>().join(" ");
    let var = format!("vars.{name}");
    squeezed.match_indices(&var).any(|(at, _)| {
        let after = &squeezed[at + var.len()..];
        // `vars.port_x` is another name.
        if after.starts_with(|c: char| c.is_alphanumeric() || c == '_') {
            return false;
        }
        let after = after.trim_start();
        [
            "is defined",
            "is not defined",
            "is undefined",
            "|default",
            "| default",
            "|d(",
            "| d(",
        ]
        .iter()
        .any(|g| after.starts_with(g))
    }) || [format!("'{name}' in vars"), format!("\"{name}\" in vars")]
        .iter()
        .any(|g| squeezed.contains(g.as_str()))
}

/// The dotted paths (`vars.port`, `facts.os.id`) a template reads that the
/// context does not hold: what "undefined value" was about.
fn missing_paths(source: &str, context: &serde_json::Value) -> Vec<String> {
    let mut env = env();
    if env.add_template("file", source).is_err() {
        return Vec::new();
    }
    let t = env.get_template("file").expect("just added");
    let mut missing: Vec<String> = t
        .undeclared_variables(true)
        .into_iter()
        .filter(|path| {
            let mut parts = path.split('.');
            let top = parts.next().unwrap_or_default();
            if !CONTEXT.contains(&top) {
                return false;
            }
            let mut at = &context[top];
            for p in parts {
                match at.get(p) {
                    Some(v) => at = v,
                    // A lookup into a non-object fails differently.
                    None => return at.is_object() || at.is_null(),
                }
            }
            false
        })
        .filter(|path| {
            !path
                .strip_prefix("vars.")
                .is_some_and(|n| guarded(source, n))
        })
        .collect();
    missing.sort();
    missing
}

/// Collects output up to [`MAX_OUTPUT`] bytes, then refuses more.
struct Bounded {
    out: Vec<u8>,
    full: bool,
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > MAX_OUTPUT {
            self.full = true;
            return Err(std::io::Error::other("template output too large"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders a template with the node's facts, the node group's vars and the
/// node, within the bounds above.
pub fn render(
    source: &str,
    facts: &serde_json::Value,
    vars: &super::Vars,
    node: &super::NodeMeta,
) -> Result<String, String> {
    let mut env = env();
    env.add_template("file", source)
        .map_err(|e| format!("parse template: {}", describe(&e)))?;
    let ctx = minijinja::context! {
        facts => minijinja::Value::from_serialize(facts),
        vars => minijinja::Value::from_serialize(vars),
        node => minijinja::Value::from_serialize(node),
    };
    let mut out = Bounded {
        out: Vec::new(),
        full: false,
    };
    let result = env
        .get_template("file")
        .expect("just added")
        .render_captured_to(ctx, &mut out)
        .map(drop);
    match result {
        _ if out.full => Err(format!(
            "render template: output exceeds {} MiB, the most a template may produce",
            MAX_OUTPUT / (1024 * 1024)
        )),
        Err(e) if e.kind() == minijinja::ErrorKind::UndefinedError => {
            let context = serde_json::json!({"facts": facts, "vars": vars, "node": node});
            let missing = missing_paths(source, &context);
            let line = e
                .line()
                .map(|l| format!(" (template line {l})"))
                .unwrap_or_default();
            Err(match missing.as_slice() {
                [] => format!("render template: {}", describe(&e)),
                [one] => format!(
                    "render template: undefined value {one}{line}: the node has no such fact or var; guard it with `is defined` or `default`"
                ),
                many => format!(
                    "render template: undefined values {}{line}: the node has no such facts or vars; guard them with `is defined` or `default`",
                    many.join(", ")
                ),
            })
        }
        Err(e) => Err(format!("render template: {}", describe(&e))),
        Ok(()) => String::from_utf8(out.out)
            .map_err(|_| "render template: output is not UTF-8".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(source: &str) -> Result<String, String> {
        let vars = [("port".to_string(), serde_json::json!(8080))]
            .into_iter()
            .collect();
        render(
            source,
            &serde_json::json!({"os": {"id": "debian"}}),
            &vars,
            &super::super::NodeMeta {
                name: "n1".into(),
                labels: Default::default(),
            },
        )
    }

    #[test]
    fn templates_render_facts_vars_and_node() {
        assert_eq!(
            run("{{ node.name }} {{ facts.os.id }} {{ vars.port }}\n").as_deref(),
            Ok("n1 debian 8080\n")
        );
    }

    #[test]
    fn template_syntax_and_unknown_names_are_refused_before_a_node_sees_them() {
        assert_eq!(
            check("listen {{ vars.port }};\n{% for i in range(3) %}{{ loop.index }}{% endfor %}"),
            Ok(())
        );
        expect_test::expect![[r#"invalid template: syntax error: unexpected `}`, expected end of variable block (template line 1)"#]]
            .assert_eq(&check("{{ vars.port }").unwrap_err());
        expect_test::expect![[r#"invalid template: syntax error: unexpected end of input, expected end of block (template line 2)"#]]
            .assert_eq(&check("a\n{% if vars.x %}").unwrap_err());
        expect_test::expect![[r#"invalid template: it uses undefined variable var; templates see facts, vars and node (as in {{ vars.port }})"#]]
            .assert_eq(&check("{{ var.port }}").unwrap_err());
    }

    #[test]
    fn template_work_and_output_are_bounded() {
        let started = std::time::Instant::now();
        let nested =
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let err = run(nested).unwrap_err();
        assert!(
            err.starts_with("render template: engine ran out of fuel")
                && err.ends_with(&format!("a template may run at most {FUEL} instructions")),
            "{err}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        // Output alone: few instructions, many bytes.
        let big = "{% for i in range(100) %}{{ 'x' * 1000000 }}{% endfor %}";
        assert_eq!(
            run(big).unwrap_err(),
            "render template: output exceeds 16 MiB, the most a template may produce"
        );
        // A template that includes itself (its own name is the only one).
        let err = run("x{% include 'file' %}").unwrap_err();
        expect_test::expect![[r#"render template: could not render include: error in "file" (template line 1): invalid operation: recursion limit exceeded (template line 1); templates may nest at most 100 levels"#]]
            .assert_eq(&err);
        // A real template's work fits: 400,000 loop turns with output.
        let work =
            "{% for i in range(1000) %}{% for j in range(400) %}{{ j }}{% endfor %}{% endfor %}";
        assert_eq!(run(work).map(|s| s.len()), Ok(1_090_000));
    }

    /// "render template: undefined value (in file:1)" named nothing: the
    /// error now names the missing fact or var and the template line.
    #[test]
    fn an_undefined_value_is_named_with_its_template_line() {
        expect_test::expect!["render template: undefined value vars.tls (template line 2): the node has no such fact or var; guard it with `is defined` or `default`"]
            .assert_eq(&run("port {{ vars.port }}\ntls {{ vars.tls }}\n").unwrap_err());
        expect_test::expect!["render template: undefined value facts.os.codename (template line 1): the node has no such fact or var; guard it with `is defined` or `default`"]
            .assert_eq(&run("{{ facts.os.codename }}").unwrap_err());
        assert_eq!(
            vars_used("{{ vars.port }} {{ vars.host | default('x') }} {{ vars.a.b }}"),
            ["a", "port"].map(String::from).into()
        );
    }
}
