//! How the CLI prints: one `-o table|json|yaml` flag for every command that
//! prints data, JSON and YAML documents with stable field names (README,
//! "Output formats"), and the one escaping function for human-readable text.
//!
//! Invariant: nothing a node sends reaches the operator's terminal raw. Table
//! and text output pass every string through [`esc`]; JSON is serde's exact
//! JSON (every control character, DEL and C1 included, as `\uXXXX`); YAML
//! double-quotes and escapes any string that is not plain.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

/// How a command prints what it got.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned columns and text lines for people; control characters escaped.
    #[default]
    Table,
    /// One pretty-printed JSON document.
    Json,
    /// One YAML document with the same fields as JSON.
    Yaml,
}

/// The `-o` flag, flattened into every command that prints data.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct OutputArg {
    /// Output format: table for people; json or yaml for programs (field names in README).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Prints `doc` as JSON or YAML, or calls `table` for the human format.
pub fn emit(
    out: &mut dyn Write,
    format: Format,
    doc: impl FnOnce() -> serde_json::Value,
    table: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    match format {
        Format::Table => table(out),
        Format::Json => Ok(writeln!(out, "{}", to_json(&doc())?)?),
        Format::Yaml => Ok(write!(out, "{}", to_yaml(&doc()))?),
    }
}

/// Whether a character may not reach a terminal as itself: C0 controls (ESC
/// among them), DEL, C1 controls, and the Unicode line separators and
/// bidirectional overrides that make text read differently from what it is.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

fn escape_char(out: &mut String, c: char) {
    let n = u32::from(c);
    if n < 0x100 {
        let _ = write!(out, "\\x{n:02x}");
    } else {
        let _ = write!(out, "\\u{n:04x}");
    }
}

/// A content diff (a node's, or rendered from sources), each line indented
/// and escaped: a file's bytes never reach the terminal raw.
pub fn write_diff(out: &mut dyn Write, indent: &str, diff: &str) -> anyhow::Result<()> {
    for line in diff.lines() {
        writeln!(out, "{indent}{}", esc(line))?;
    }
    Ok(())
}

/// The one escaping function for human-readable output: control characters
/// become `\xNN` (`\u{1b}` prints as `\x1b`), bidi overrides `\uNNNN`;
/// everything else is kept, so ordinary text reads as it is.
pub fn esc(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            escape_char(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Several strings escaped and joined with `sep`.
pub fn esc_join(items: &[String], sep: &str) -> String {
    items.iter().map(|s| esc(s)).collect::<Vec<_>>().join(sep)
}

/// RFC 3339 to the second, or "never" for 0.
pub fn time(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// RFC 3339 for documents, or null for 0.
pub fn time_json(ms: u64) -> serde_json::Value {
    if ms == 0 {
        serde_json::Value::Null
    } else {
        time(ms).into()
    }
}

pub fn short_hash(h: &str) -> String {
    esc(h).chars().take(19).collect()
}

/// Labels sorted by key, `k=v,k2=v2`, escaped.
pub fn labels_text(labels: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<&String, &String> = labels.iter().collect();
    sorted
        .iter()
        .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Pretty JSON in which no control character appears raw: serde escapes C0;
/// DEL, C1 and the bidi overrides become `\uXXXX` here. Still exact JSON.
pub fn to_json(v: &serde_json::Value) -> anyhow::Result<String> {
    use serde::Serialize;
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, SafeJson(Default::default()));
    v.serialize(&mut ser)?;
    Ok(String::from_utf8(buf)?)
}

/// `PrettyFormatter` with the extra string escapes.
struct SafeJson(serde_json::ser::PrettyFormatter<'static>);

macro_rules! delegate {
    ($($name:ident $(($arg:ident: $ty:ty))?),*) => {$(
        fn $name<W: ?Sized + Write>(&mut self, w: &mut W $(, $arg: $ty)?) -> std::io::Result<()> {
            self.0.$name(w $(, $arg)?)
        }
    )*};
}

impl serde_json::ser::Formatter for SafeJson {
    delegate!(
        begin_array, end_array, begin_array_value(first: bool), end_array_value,
        begin_object, end_object, begin_object_key(first: bool), begin_object_value,
        end_object_value
    );

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if unsafe_char(c) {
                w.write_all(&fragment.as_bytes()[start..i])?;
                write!(w, "\\u{:04x}", u32::from(c))?;
                start = i + c.len_utf8();
            }
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

/// A JSON value as a block-style YAML document. Keys keep JSON's order
/// (sorted); strings are plain only when they cannot read as anything else.
pub fn to_yaml(v: &serde_json::Value) -> String {
    let mut s = String::new();
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => yaml_map(&mut s, m, 0),
        serde_json::Value::Array(a) if !a.is_empty() => yaml_seq(&mut s, a, 0),
        scalar => {
            s.push_str(&yaml_scalar(scalar));
            s.push('\n');
        }
    }
    s
}

fn indent(s: &mut String, n: usize) {
    s.extend(std::iter::repeat_n(' ', n));
}

fn yaml_map(s: &mut String, m: &serde_json::Map<String, serde_json::Value>, at: usize) {
    for (k, v) in m {
        indent(s, at);
        s.push_str(&yaml_str(k));
        s.push(':');
        yaml_child(s, v, at);
    }
}

fn yaml_seq(s: &mut String, a: &[serde_json::Value], at: usize) {
    for v in a {
        indent(s, at);
        s.push('-');
        yaml_child(s, v, at);
    }
}

/// The value after `key:` or `-` at indentation `at`.
fn yaml_child(s: &mut String, v: &serde_json::Value, at: usize) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            s.push('\n');
            yaml_map(s, m, at + 2);
        }
        serde_json::Value::Array(a) if !a.is_empty() => {
            s.push('\n');
            yaml_seq(s, a, at + 2);
        }
        scalar => {
            s.push(' ');
            s.push_str(&yaml_scalar(scalar));
            s.push('\n');
        }
    }
}

fn yaml_scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => yaml_str(s),
        serde_json::Value::Array(_) => "[]".into(),
        serde_json::Value::Object(_) => "{}".into(),
    }
}

/// A plain scalar when it is a name-like word that YAML reads as a string,
/// else a double-quoted scalar with escapes.
fn yaml_str(s: &str) -> String {
    let plain = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        )
        && s.parse::<f64>().is_err();
    if plain {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) || c == '\u{feff}' => escape_char(&mut out, c),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "a\x1b[2J\x1b]0;pwned\x07\r\n\t\x7f\u{9b}31m\u{202e}b";

    #[test]
    fn esc_leaves_ordinary_text_and_escapes_every_control() {
        assert!(matches!(esc("file[/etc/motd] é ✓"), Cow::Borrowed(_)));
        assert_eq!(
            esc(HOSTILE),
            "a\\x1b[2J\\x1b]0;pwned\\x07\\x0d\\x0a\\x09\\x7f\\x9b31m\\u202eb"
        );
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            let e = esc(&c.to_string()).into_owned();
            assert!(
                e.starts_with("\\x") && !e.chars().any(char::is_control),
                "{c:?}"
            );
        }
    }

    #[test]
    fn yaml_output_reads_back_as_the_same_document_and_hides_no_control() {
        let doc = serde_json::json!({
            "name": "web-1",
            "labels": {"role": "web", "we ird": "x: y"},
            "count": 3, "ok": true, "none": null, "ratio": 0.5,
            "empty": [], "nothing": {},
            "words": ["true", "no", "1.5", "0x1f", "", "-x", "#c", " pad", "sha256:ab", "é"],
            "hostile": HOSTILE,
            "nested": [{"id": "file[/a]", "changes": ["x", "y"]}, [1, [2]]],
        });
        let text = to_yaml(&doc);
        assert!(!text.chars().any(|c| unsafe_char(c) && c != '\n'), "{text}");
        let parsed = yaml_rust2::YamlLoader::load_from_str(&text).expect("valid YAML");
        assert_eq!(from_yaml(&parsed[0]), doc, "{text}");
        assert_eq!(to_yaml(&serde_json::json!([])), "[]\n");
    }

    fn from_yaml(y: &yaml_rust2::Yaml) -> serde_json::Value {
        use yaml_rust2::Yaml;
        match y {
            Yaml::Null => serde_json::Value::Null,
            Yaml::Boolean(b) => (*b).into(),
            Yaml::Integer(i) => (*i).into(),
            Yaml::Real(r) => r.parse::<f64>().unwrap().into(),
            Yaml::String(s) => s.clone().into(),
            Yaml::Array(a) => a.iter().map(from_yaml).collect(),
            Yaml::Hash(h) => h
                .iter()
                .map(|(k, v)| (k.as_str().unwrap().to_owned(), from_yaml(v)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
            other => panic!("unexpected {other:?}"),
        }
    }
}
