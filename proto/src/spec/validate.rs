//! Validators shared by the controller (at apply time) and the agent (again,
//! on every document it receives). Each returns what is wrong and what is allowed.

use super::{Ensure, PackageEnsure, Resource};

/// The agent's own state lives here; desired state may not manage it.
pub const AGENT_STATE_DIR: &str = "/var/lib/ballast-agent";

/// Node names: 1-63 of `[a-z0-9-.]`, starting and ending alphanumeric.
pub fn node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid node name {name:?}: allowed are 1 to 63 characters of a-z, 0-9, '-' and '.', starting and ending with a letter or digit"
        ))
    }
}

/// Label keys: 1-63 of `[A-Za-z0-9_.-]` starting alphanumeric.
pub fn label_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 63
        && key.as_bytes()[0].is_ascii_alphanumeric()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid label key {key:?}: allowed are 1 to 63 characters of A-Z, a-z, 0-9, '_', '.' and '-', starting with a letter or digit"
        ))
    }
}

/// Label values: 0-63 of `[A-Za-z0-9_.-]`.
pub fn label_value(value: &str) -> Result<(), String> {
    let ok = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {value:?}: allowed are up to 63 characters of A-Z, a-z, 0-9, '_', '.' and '-'"
        ))
    }
}

/// Role and node-group names: `[a-z0-9][a-z0-9_-]*`, at most 63.
pub fn spec_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: allowed are 1 to 63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
        ))
    }
}

/// Absolute, normalised paths: no `.` or `..` segments, no `//`, no trailing
/// slash, no NUL, at most 4096 bytes, and not the agent's own state dir.
pub fn abs_path(path: &str) -> Result<(), String> {
    let allowed = "allowed are absolute, normalised paths (no '.' or '..' segments, no '//', no trailing '/')";
    if !path.starts_with('/') {
        return Err(format!("path {path:?} is not absolute: {allowed}"));
    }
    if path.len() > 4096 || path.contains('\0') || path.contains('\n') {
        return Err(format!(
            "path {path:?} is too long or holds NUL or newline: {allowed}"
        ));
    }
    if path == "/" {
        return Err(format!("path \"/\" cannot be managed: {allowed}"));
    }
    if path.ends_with('/')
        || path[1..]
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(format!("path {path:?} is not normalised: {allowed}"));
    }
    if path == AGENT_STATE_DIR || path.starts_with(&format!("{AGENT_STATE_DIR}/")) {
        return Err(format!(
            "path {path:?} is inside the agent's state dir {AGENT_STATE_DIR}, which cannot be managed"
        ));
    }
    Ok(())
}

/// User and group names per Debian's rules: `[a-z_][a-z0-9_-]*` with an
/// optional trailing `$`, at most 32 characters.
pub fn unix_name(name: &str) -> Result<(), String> {
    let body = name.strip_suffix('$').unwrap_or(name);
    let ok = !body.is_empty()
        && name.len() <= 32
        && (body.as_bytes()[0].is_ascii_lowercase() || body.as_bytes()[0] == b'_')
        && body
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid user or group name {name:?}: allowed are up to 32 characters of a-z, 0-9, '_' and '-', starting with a letter or '_' (optionally ending in '$')"
        ))
    }
}

/// Permission bits, at most 0o7777.
pub fn mode(mode: u32) -> Result<(), String> {
    if mode <= 0o7777 {
        Ok(())
    } else {
        Err(format!(
            "mode {mode:o} is out of range: allowed are octal 0000 to 7777"
        ))
    }
}

/// Parses an octal mode string such as "0644" or "755".
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let allowed = "allowed are octal strings of 3 or 4 digits such as \"0644\"";
    if !(3..=4).contains(&s.len()) || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!("invalid mode {s:?}: {allowed}"));
    }
    u32::from_str_radix(s, 8).map_err(|_| format!("invalid mode {s:?}: {allowed}"))
}

/// Debian package names: `[a-z0-9][a-z0-9+.-]+`.
pub fn package_name(name: &str) -> Result<(), String> {
    let ok = name.len() >= 2
        && name.len() <= 128
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid package name {name:?}: allowed are 2 to 128 characters of a-z, 0-9, '+', '.' and '-', starting with a letter or digit"
        ))
    }
}

/// Debian version strings: start with a digit, then `[A-Za-z0-9.+~:-]`.
pub fn package_version(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.as_bytes()[0].is_ascii_digit()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'~' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid package ensure {v:?}: allowed are present, absent, latest, or an exact version starting with a digit"
        ))
    }
}

/// Cron job names (the file is /etc/cron.d/ballast-NAME; run-parts ignores dots).
pub fn cron_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid cron job name {name:?}: allowed are 1 to 64 characters of a-z, 0-9, '_' and '-'"
        ))
    }
}

/// The `@` forms Debian's cron (Vixie cron 3.0) knows; they are case-sensitive.
const CRON_KEYWORDS: [&str; 8] = [
    "@reboot",
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// One of the five fields of a cron schedule: its name, bounds and names.
struct CronField {
    name: &'static str,
    low: u32,
    high: u32,
    /// Three-letter names for `low..`, matched without regard to case.
    names: &'static [&'static str],
}

const CRON_FIELDS: [CronField; 5] = [
    CronField {
        name: "minute",
        low: 0,
        high: 59,
        names: &[],
    },
    CronField {
        name: "hour",
        low: 0,
        high: 23,
        names: &[],
    },
    CronField {
        name: "day-of-month",
        low: 1,
        high: 31,
        names: &[],
    },
    CronField {
        name: "month",
        low: 1,
        high: 12,
        names: &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
    },
    CronField {
        name: "day-of-week",
        low: 0,
        high: 7,
        names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"],
    },
];

impl CronField {
    fn allowed(&self) -> String {
        match self.names {
            [] => format!("{}-{}", self.low, self.high),
            // Day-of-week's names end with Sunday again (7): name the range sun-sat.
            [first, .., last] if first == last => {
                format!(
                    "{}-{} or {first}-{}",
                    self.low,
                    self.high,
                    self.names[self.names.len() - 2]
                )
            }
            [first, .., last] => format!("{}-{} or {first}-{last}", self.low, self.high),
            [one] => format!("{}-{} or {one}", self.low, self.high),
        }
    }

    /// One value: a decimal number or (month, day-of-week) a name.
    fn value(&self, v: &str) -> Result<u32, String> {
        let n = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            // Leading zeros are fine ("00"); too many digits is out of range.
            match v.trim_start_matches('0') {
                "" => 0,
                digits => digits.parse::<u32>().unwrap_or(u32::MAX),
            }
        } else if let Some(i) = self.names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
            self.low + i as u32
        } else {
            return Err(format!(
                "{} {v:?} is not a number{} (allowed: {})",
                self.name,
                if self.names.is_empty() {
                    ""
                } else {
                    " or a three-letter name"
                },
                self.allowed()
            ));
        };
        if n < self.low || n > self.high {
            return Err(format!("{} {v} out of range {}", self.name, self.allowed()));
        }
        Ok(n)
    }

    /// One list item: `*`, a value or a range `a-b`, each optionally with a `/step`.
    fn item(&self, item: &str) -> Result<(), String> {
        let (base, step) = match item.split_once('/') {
            Some((b, s)) => (b, Some(s)),
            None => (item, None),
        };
        let ranged = if base == "*" {
            true
        } else if let Some((a, b)) = base.split_once('-') {
            let (lo, hi) = (self.value(a)?, self.value(b)?);
            if lo > hi {
                return Err(format!(
                    "{} range {base} is reversed, and cron would never run it; write it as {a}-{},{}-{b}",
                    self.name, self.high, self.low
                ));
            }
            true
        } else {
            self.value(base)?;
            false
        };
        if let Some(step) = step {
            if !ranged {
                return Err(format!(
                    "{} {item:?}: a step needs a range or '*' before it, as in {base}-{}/{step} or */{step}",
                    self.name, self.high
                ));
            }
            let span = self.high - self.low + 1;
            match step.parse::<u32>() {
                Ok(n) if (1..=span).contains(&n) && step.bytes().all(|b| b.is_ascii_digit()) => {}
                _ => {
                    return Err(format!(
                        "{} step {step:?} in {item:?} is not a number from 1 to {span}",
                        self.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// A comma-separated list of items.
    fn check(&self, field: &str) -> Result<(), String> {
        for item in field.split(',') {
            if item.is_empty() {
                return Err(format!("{} {field:?} has an empty list item", self.name));
            }
            self.item(item)?;
        }
        Ok(())
    }
}

/// A cron schedule as Debian's cron (Vixie cron) reads it: one of the `@`
/// keywords, or five fields separated by spaces or tabs: minute 0-59, hour
/// 0-23, day-of-month 1-31, month 1-12 or jan-dec, day-of-week 0-7 (0 and 7
/// are Sunday) or sun-sat; each a list of `*`, values and ranges `a-b`, with
/// an optional `/step` after `*` or a range. Stricter than cron where cron
/// takes a schedule it then never runs or reads oddly: a reversed range
/// (`5-1`), `*-5`, `1-2-3`, a step on a single value, a step of 0.
pub fn cron_schedule(s: &str) -> Result<(), String> {
    let fail =
        |why: String| -> Result<(), String> { Err(format!("invalid cron schedule {s:?}: {why}")) };
    if s.chars().any(|c| c.is_control() && c != '\t') {
        return fail("it must be one line, without control characters other than tab".into());
    }
    if s.starts_with('@') {
        if CRON_KEYWORDS.contains(&s) {
            return Ok(());
        }
        return fail(format!(
            "unknown keyword; allowed are {}",
            CRON_KEYWORDS.join(", ")
        ));
    }
    let fields: Vec<&str> = s.split([' ', '\t']).filter(|f| !f.is_empty()).collect();
    if fields.len() != 5 {
        return fail(format!(
            "expected five fields (minute hour day-of-month month day-of-week) or one of {}, found {} fields",
            CRON_KEYWORDS.join(", "),
            fields.len()
        ));
    }
    for (field, spec) in fields.iter().zip(&CRON_FIELDS) {
        if let Some(c) = field
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '*' | ',' | '/' | '-')))
        {
            return fail(format!(
                "{} {field:?}: {c:?} is not allowed (allowed: digits, names, '*', ',', '-' and '/')",
                spec.name
            ));
        }
        if let Err(why) = spec.check(field) {
            return fail(why);
        }
    }
    Ok(())
}

/// A cron command: one line; `%` must be written `\%` (cron turns a bare `%` into a newline).
pub fn cron_command(c: &str) -> Result<(), String> {
    if c.trim().is_empty() || c.contains(['\n', '\r', '\0']) {
        return Err("invalid cron command: it must be one non-empty line, without newline, carriage return or NUL".into());
    }
    let b = c.as_bytes();
    if (0..b.len()).any(|i| b[i] == b'%' && (i == 0 || b[i - 1] != b'\\')) {
        return Err(format!(
            "invalid cron command {c:?}: cron turns a bare '%' into a newline; write it as '\\%'"
        ));
    }
    Ok(())
}

/// Environment variable names for cron jobs.
pub fn env_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && (n.as_bytes()[0].is_ascii_alphabetic() || n.as_bytes()[0] == b'_')
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid environment variable name {n:?}: allowed are A-Z, a-z, 0-9 and '_', not starting with a digit"
        ))
    }
}

/// One line, no NUL.
pub fn one_line(what: &str, v: &str) -> Result<(), String> {
    if v.contains(['\n', '\r', '\0']) {
        Err(format!(
            "invalid {what}: it must be one line, without newline, carriage return or NUL"
        ))
    } else {
        Ok(())
    }
}

/// systemd's unit types: a name that ends in one of these is not a bare service name.
const UNIT_TYPES: [&str; 11] = [
    "service",
    "socket",
    "device",
    "mount",
    "automount",
    "swap",
    "target",
    "path",
    "timer",
    "slice",
    "scope",
];

/// Longest unit name systemd accepts (`UNIT_NAME_MAX` less its NUL).
const UNIT_NAME_MAX: usize = 255;

/// Service names, as systemd checks unit names (`unit_name_is_valid`), given
/// without the `.service` suffix: `NAME.service` at most 255 bytes, of
/// `[A-Za-z0-9:_.\\@-]`, an `@` neither first nor last (a template needs an
/// instance to run). Stricter than systemd in one point: no leading `-`, so
/// a name never reads as an option whatever a tool does with `--`.
pub fn service_name(n: &str) -> Result<(), String> {
    let allowed = format!(
        "allowed are a systemd unit name without its .service suffix: 1 to {} characters of A-Z, a-z, 0-9, ':', '-', '_', '.', '\\' and '@', not starting with '-' or '@', with an instance after any '@' (as in getty@tty1)",
        UNIT_NAME_MAX - ".service".len()
    );
    let bad = |why: &str| Err(format!("invalid service name {n:?}: {why}; {allowed}"));
    if n.is_empty() {
        return bad("it is empty");
    }
    if n.len() + ".service".len() > UNIT_NAME_MAX {
        return bad("it is too long");
    }
    if let Some(c) = n
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@')))
    {
        return bad(&format!("{c:?} is not allowed"));
    }
    if n.starts_with('-') {
        return bad("it starts with '-'");
    }
    if n.starts_with('@') {
        return bad("it starts with '@'");
    }
    if n.ends_with('@') {
        return bad("a template unit needs an instance after '@'");
    }
    if let Some((_, suffix)) = n.rsplit_once('.')
        && UNIT_TYPES.contains(&suffix)
    {
        return bad(&format!("it ends in .{suffix}"));
    }
    Ok(())
}

/// Checks every attribute of one typed resource; returns (field, message) pairs.
pub fn resource(r: &Resource) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut check = |field: &str, res: Result<(), String>| {
        if let Err(m) = res {
            out.push((field.to_owned(), m));
        }
    };
    let owner_group = |check: &mut dyn FnMut(&str, Result<(), String>),
                       owner: &Option<String>,
                       group: &Option<String>| {
        if let Some(o) = owner {
            check("owner", unix_name(o));
        }
        if let Some(g) = group {
            check("group", unix_name(g));
        }
    };
    match r {
        Resource::File(f) => {
            check("path", abs_path(&f.path));
            owner_group(&mut check, &f.owner, &f.group);
            if let Some(m) = f.mode {
                check("mode", mode(m));
            }
            for n in &f.notify {
                check("notify", service_name(n));
            }
            match (&f.content, f.template) {
                (None, true) => check(
                    "template",
                    Err("template: true needs content to render".into()),
                ),
                (Some(t), true) => check("content", super::template::check(t)),
                _ => {}
            }
        }
        Resource::Directory(d) => {
            check("path", abs_path(&d.path));
            owner_group(&mut check, &d.owner, &d.group);
            if let Some(m) = d.mode {
                check("mode", mode(m));
            }
        }
        Resource::Symlink(s) => {
            check("path", abs_path(&s.path));
            match (&s.target, s.ensure) {
                (None, Ensure::Present) => check("target", Err("a symlink needs a target".into())),
                (Some(t), _) if t.is_empty() || t.len() > 4096 || t.contains(['\0', '\n']) => {
                    check(
                        "target",
                        Err(format!(
                            "invalid target {t:?}: allowed is a non-empty path without NUL or newline"
                        )),
                    )
                }
                _ => {}
            }
        }
        Resource::User(u) => {
            check("name", unix_name(&u.name));
            if let Some(g) = &u.group {
                check("group", unix_name(g));
            }
            for g in u.groups.iter().flatten() {
                check("groups", unix_name(g));
            }
            if let Some(h) = &u.home {
                check("home", abs_path(h));
            }
            if let Some(s) = &u.shell {
                check("shell", abs_path(s));
            }
            for k in u.authorized_keys.iter().flatten() {
                check(
                    "authorized_keys",
                    if k.trim().is_empty() {
                        Err("an authorized key may not be empty".into())
                    } else {
                        one_line("authorized key", k)
                    },
                );
            }
        }
        Resource::Group(g) => check("name", unix_name(&g.name)),
        Resource::Package(p) => {
            check("name", package_name(&p.name));
            if let PackageEnsure::Version(v) = &p.ensure {
                check("ensure", package_version(v));
            }
            for n in &p.notify {
                check("notify", service_name(n));
            }
        }
        Resource::Cron(c) => {
            check("name", cron_name(&c.name));
            check("user", unix_name(&c.user));
            if c.ensure == Ensure::Present {
                match &c.schedule {
                    Some(s) => check("schedule", cron_schedule(s)),
                    None => check("schedule", Err("a cron job needs a schedule".into())),
                }
                match &c.command {
                    Some(cmd) => check("command", cron_command(cmd)),
                    None => check("command", Err("a cron job needs a command".into())),
                }
            }
            for (k, v) in &c.env {
                check("env", env_name(k));
                check("env", one_line("environment value", v));
            }
        }
        Resource::Service(s) => check("name", service_name(&s.name)),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_and_normalised() {
        assert!(abs_path("/etc/motd").is_ok());
        for bad in [
            "etc/motd",
            "/etc/../shadow",
            "/etc//x",
            "/etc/x/",
            "/",
            "/a/./b",
            "/var/lib/ballast-agent/x",
            "/a\0b",
        ] {
            assert!(abs_path(bad).is_err(), "{bad:?}");
        }
        assert!(abs_path("/var/lib/ballast-agents").is_ok());
    }

    #[test]
    fn unix_names_follow_debian_rules() {
        for ok in ["www-data", "_apt", "deploy", "host$", "a1"] {
            assert!(unix_name(ok).is_ok(), "{ok}");
        }
        for bad in ["-dash", "123", "Root", "a:b", "a\nb", "", &"x".repeat(33)] {
            assert!(unix_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn modes_are_octal_strings() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert!(parse_mode("0849").is_err());
        assert!(parse_mode("64").is_err());
    }

    #[test]
    fn service_names_follow_systemd_unit_rules() {
        for ok in [
            "nginx",
            "getty@tty1",
            "systemd-fsck@dev-disk-by\\x2dlabel-root",
            "a:b_c.d",
            "openvpn@client.conf",
            &"x".repeat(247),
        ] {
            assert_eq!(service_name(ok), Ok(()), "{ok:?}");
        }
        let table = [
            ("", "it is empty"),
            ("-x", "it starts with '-'"),
            ("--help", "it starts with '-'"),
            ("@x", "it starts with '@'"),
            ("getty@", "a template unit needs an instance after '@'"),
            ("nginx.service", "it ends in .service"),
            ("backup.timer", "it ends in .timer"),
            ("a/b", "'/' is not allowed"),
            ("a b", "' ' is not allowed"),
            ("caf\u{e9}", "'\u{e9}' is not allowed"),
            ("a\nb", "'\\n' is not allowed"),
            (&"x".repeat(248), "it is too long"),
        ];
        for (bad, why) in table {
            let err = service_name(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid service name {bad:?}: {why}; allowed are")),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn cron_fields_are_checked() {
        assert!(cron_command("date +\\%s > /tmp/x").is_ok());
        assert!(cron_command("date +%s").unwrap_err().contains("\\%"));
        assert!(cron_command("a\nb").is_err());
    }

    /// Every schedule here was also given to Debian 12's `crontab -n`
    /// (cron 3.0pl1-162): the accepted ones it accepts, the refused ones it
    /// refuses, or (marked "cron takes it") takes and never runs or reads oddly.
    #[test]
    fn cron_schedules_follow_vixie_cron() {
        for ok in [
            "* * * * *",
            "*/5 * * * *",
            "0 3 * * *",
            "00 01 * * *",
            "*/5,1-3 * * * *",
            "5-10/2 * * * *",
            "1-1 * * * *",
            "*/60 * * * *",
            "0 0 31 2 *",
            "0 0 * jan-mar *",
            "0 0 * JAN,Dec *",
            "0 0 * jan-3 *",
            "0 0 * * mon-fri",
            "0 0 * * MON,wed",
            "0 0 * * mon-fri/2",
            "0 0 * * sun-sat",
            "0 0 * * 0-7",
            "0 0 * * 7",
            "0 0 * * */2",
            "0\t0\t*\t*\t*",
            " 0  0 * * * ",
            "@reboot",
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
        ] {
            assert_eq!(cron_schedule(ok), Ok(()), "{ok:?}");
        }
        let table = [
            ("61 * * * *", "minute 61 out of range 0-59"),
            ("-1 * * * *", "minute \"\" is not a number (allowed: 0-59)"),
            ("0 24 * * *", "hour 24 out of range 0-23"),
            ("0 0 0 * *", "day-of-month 0 out of range 1-31"),
            ("0 0 32 * *", "day-of-month 32 out of range 1-31"),
            ("0 0 * 0 *", "month 0 out of range 1-12 or jan-dec"),
            ("0 0 * 13 *", "month 13 out of range 1-12 or jan-dec"),
            (
                "0 0 * june *",
                "month \"june\" is not a number or a three-letter name (allowed: 1-12 or jan-dec)",
            ),
            ("0 0 * * 8", "day-of-week 8 out of range 0-7 or sun-sat"),
            (
                "0 0 * * mo",
                "day-of-week \"mo\" is not a number or a three-letter name (allowed: 0-7 or sun-sat)",
            ),
            (
                "0 0 * * sunday",
                "day-of-week \"sunday\" is not a number or a three-letter name (allowed: 0-7 or sun-sat)",
            ),
            (
                "mon * * * *",
                "minute \"mon\" is not a number (allowed: 0-59)",
            ),
            (
                "0x1 * * * *",
                "minute \"0x1\" is not a number (allowed: 0-59)",
            ),
            (
                "99999999999 * * * *",
                "minute 99999999999 out of range 0-59",
            ),
            (
                "0 0 L * *",
                "day-of-month \"L\" is not a number (allowed: 1-31)",
            ),
            (
                "0 0 ? * *",
                "day-of-month \"?\": '?' is not allowed (allowed: digits, names, '*', ',', '-' and '/')",
            ),
            (
                "0 0 * * thu#2",
                "day-of-week \"thu#2\": '#' is not allowed (allowed: digits, names, '*', ',', '-' and '/')",
            ),
            (
                "+1 * * * *",
                "minute \"+1\": '+' is not allowed (allowed: digits, names, '*', ',', '-' and '/')",
            ),
            (
                "*/0 * * * *",
                "minute step \"0\" in \"*/0\" is not a number from 1 to 60",
            ),
            (
                "0 0 1-31/0 * *",
                "day-of-month step \"0\" in \"1-31/0\" is not a number from 1 to 31",
            ),
            (
                "*/ * * * *",
                "minute step \"\" in \"*/\" is not a number from 1 to 60",
            ),
            (
                "5/10 * * * *",
                "minute \"5/10\": a step needs a range or '*' before it, as in 5-59/10 or */10",
            ),
            (
                "0 0 * jan/2 *",
                "month \"jan/2\": a step needs a range or '*' before it, as in jan-12/2 or */2",
            ),
            ("1,,2 * * * *", "minute \"1,,2\" has an empty list item"),
            (",1 * * * *", "minute \",1\" has an empty list item"),
            ("1- * * * *", "minute \"\" is not a number (allowed: 0-59)"),
            (
                "* * * *",
                "expected five fields (minute hour day-of-month month day-of-week) or one of @reboot, @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, found 4 fields",
            ),
            (
                "* * * * * *",
                "expected five fields (minute hour day-of-month month day-of-week) or one of @reboot, @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, found 6 fields",
            ),
            (
                "@DAILY",
                "unknown keyword; allowed are @reboot, @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly",
            ),
            (
                "@every 5m",
                "unknown keyword; allowed are @reboot, @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly",
            ),
            (
                "* * * * *\n* * * * * root rm -rf /",
                "it must be one line, without control characters other than tab",
            ),
            (
                "@daily\r",
                "it must be one line, without control characters other than tab",
            ),
            // cron takes these:
            (
                "10-5 * * * *",
                "minute range 10-5 is reversed, and cron would never run it; write it as 10-59,0-5",
            ),
            (
                "0 0 * * fri-mon",
                "day-of-week range fri-mon is reversed, and cron would never run it; write it as fri-7,0-mon",
            ),
            (
                "*-5 * * * *",
                "minute \"*\" is not a number (allowed: 0-59)",
            ),
            (
                "1-2-3 * * * *",
                "minute \"2-3\" is not a number (allowed: 0-59)",
            ),
            (
                "0-59/100 * * * *",
                "minute step \"100\" in \"0-59/100\" is not a number from 1 to 60",
            ),
            (
                "*/5/2 * * * *",
                "minute step \"5/2\" in \"*/5/2\" is not a number from 1 to 60",
            ),
            (
                "0 0 ** * *",
                "day-of-month \"**\" is not a number (allowed: 1-31)",
            ),
        ];
        for (bad, why) in table {
            assert_eq!(
                cron_schedule(bad),
                Err(format!("invalid cron schedule {bad:?}: {why}")),
                "{bad:?}"
            );
        }
    }
}
