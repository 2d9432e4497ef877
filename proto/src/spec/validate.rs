//! Validators shared by the controller (at apply time) and the agent (again,
//! on every document it receives). Each returns what is wrong and what is allowed.
//!
//! Over 600 lines only with its tests (the code is under 530).

use super::{Ensure, PackageEnsure, Resource, ServiceEnsure};

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

pub use super::cron::cron_schedule;

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

/// Top-level directories of `/proc/sys`: the first segment of every key.
const SYSCTL_TOP: [&str; 8] = ["abi", "debug", "dev", "fs", "kernel", "net", "user", "vm"];

/// Longest sysctl key accepted.
pub const SYSCTL_KEY_MAX: usize = 255;
/// Longest sysctl value accepted.
pub const SYSCTL_VALUE_MAX: usize = 1024;

/// Sysctl keys, strictly: dotted segments of `[A-Za-z0-9_-]` (none empty,
/// none starting with '-'), at least two, the first a top-level directory
/// of `/proc/sys`, at most 255 characters. No '/', '*' or '..': the key maps
/// to one file below `/proc/sys` and nothing else. (An interface name with
/// a dot, as in `net.ipv4.conf.eth0/100.rp_filter`, is not accepted.)
pub fn sysctl_key(k: &str) -> Result<(), String> {
    let allowed = format!(
        "allowed are 2 or more dot-separated segments of A-Z, a-z, 0-9, '_' and '-' (not starting with '-'), at most {SYSCTL_KEY_MAX} characters, the first one of {}",
        SYSCTL_TOP.join(", ")
    );
    let bad = |why: &str| Err(format!("invalid sysctl key {k:?}: {why}; {allowed}"));
    if k.len() > SYSCTL_KEY_MAX {
        return bad("it is too long");
    }
    if let Some(c) = k
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return bad(&format!("{c:?} is not allowed"));
    }
    let segments: Vec<&str> = k.split('.').collect();
    if segments.len() < 2 {
        return bad("it has fewer than two segments");
    }
    for seg in &segments {
        if seg.is_empty() {
            return bad("it has an empty segment");
        }
        if seg.starts_with('-') {
            return bad(&format!("segment {seg:?} starts with '-'"));
        }
    }
    if !SYSCTL_TOP.contains(&segments[0]) {
        return bad(&format!(
            "{:?} is not a top-level directory of /proc/sys",
            segments[0]
        ));
    }
    Ok(())
}

/// Sysctl values: 1 to 1024 printable ASCII characters, fields separated
/// by single spaces (as `/proc/sys` prints them with tabs), not starting
/// with '-' unless a number (`-1`), no '#' or ';' (comments in sysctl.d).
pub fn sysctl_value(v: &str) -> Result<(), String> {
    let allowed = format!(
        "allowed are 1 to {SYSCTL_VALUE_MAX} printable ASCII characters without '#' or ';', fields separated by single spaces"
    );
    let bad = |why: &str| Err(format!("invalid sysctl value {v:?}: {why}; {allowed}"));
    if v.is_empty() || v.len() > SYSCTL_VALUE_MAX {
        return bad("its length is out of range");
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_graphic() || *c == ' ') || matches!(c, '#' | ';'))
    {
        return bad(&format!("{c:?} is not allowed"));
    }
    if v.starts_with(' ') || v.ends_with(' ') || v.contains("  ") {
        return bad("fields must be separated by single spaces");
    }
    if v.starts_with('-') && v[1..].parse::<i64>().is_err() {
        return bad("only a number may start with '-'");
    }
    Ok(())
}

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
            if f.replace && f.ensure != Ensure::Present {
                check(
                    "replace",
                    Err("replace applies only to a file with ensure: present (it replaces a symlink or an empty directory at the path with the file)".into()),
                );
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
            if u.remove_home && u.ensure != Ensure::Absent {
                check(
                    "remove_home",
                    Err("remove_home applies only to a user with ensure: absent".into()),
                );
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
        Resource::Sysctl(k) => {
            check("key", sysctl_key(&k.key));
            match (&k.value, k.ensure) {
                (Some(v), _) => check("value", sysctl_value(v)),
                (None, Ensure::Present) => check("value", Err("a sysctl needs a value".into())),
                (None, Ensure::Absent) => {}
            }
        }
        Resource::Service(s) => {
            check("name", service_name(&s.name));
            if s.ensure == Some(ServiceEnsure::Absent) {
                if s.unit.is_some() {
                    check(
                        "unit",
                        Err("a service with ensure: absent takes no unit (its unit file is removed if the agent wrote it)".into()),
                    );
                }
                if s.enabled == Some(true) {
                    check(
                        "enabled",
                        Err("a service with ensure: absent is disabled; enabled: true contradicts it".into()),
                    );
                }
            }
        }
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
    fn sysctl_keys_and_values_are_strict() {
        for good in [
            "net.ipv4.ip_forward",
            "vm.swappiness",
            "net.ipv4.conf.all.rp_filter",
            "kernel.core_pattern",
            "net.ipv4.conf.eth-0.forwarding",
        ] {
            assert_eq!(sysctl_key(good), Ok(()), "{good}");
        }
        let mut out = String::new();
        for bad in [
            "ip_forward",
            "net..ipv4",
            "net/ipv4/ip_forward",
            "net.ipv4.*",
            "proc.x",
            "net.-x",
            "net.ipv4.conf.eth0/100.rp_filter",
            ".net.x",
            "net.x.",
        ] {
            out.push_str(&sysctl_key(bad).unwrap_err());
            out.push('\n');
        }
        for good in ["1", "0", "-1", "32768 60999", "|/usr/bin/x %p"] {
            assert_eq!(sysctl_value(good), Ok(()), "{good}");
        }
        for bad in ["", "1\n2", "1 # x", "--x", "1  2", " 1", "1\t2"] {
            out.push_str(&sysctl_value(bad).unwrap_err());
            out.push('\n');
        }
        expect_test::expect![[r#"
            invalid sysctl key "ip_forward": it has fewer than two segments; allowed are 2 or more dot-separated segments of A-Z, a-z, 0-9, '_' and '-' (not starting with '-'), at most 255 characters, the first one of abi, debug, dev, fs, kernel, net, user, vm
            invalid sysctl key "net..ipv4": it has an empty segment; allowed are 2 or more dot-separated segments of A-Z, a-z, 0-9, '_' and '-' (not starting with '-'), at most 255 characters, the first one of abi, debug, dev, fs, kernel, net, user, vm
            invalid sysctl key "net/ipv4/ip_forward": '/' is not allowed; allowed are 2 or more dot-separated segments of A-Z, a-z, 0-9, '_' and '-' (not starting with '-'), at most 255 characters, the first one of abi, debug, dev, fs, kernel, net, user, vm
            invalid sysctl key "net.ipv4.*": '*' is not allowed; allowed are 2 or more dot-separated segments of A-Z, a-z, 0-9, '_' and '-' (not starting with '-'), at most 255 characters, the first one of abi, debug, dev, fs, kernel, net, user, vm
            invalid sysctl key "proc.x": "proc" is not a top-level directory of /proc/sys; allowed are 2 or more dot-separated segments of A-Z, a-z, 0-9, '_' and '-' (not starting with '-'), at most 255 characters, the first one of abi, debug, dev, fs, kernel, net, user, vm
            invalid sysctl key "net.-x": segment "-x" starts with '-'; allowed are 2 or more dot-separated segments of A-Z, a-z, 0-9, '_' and '-' (not starting with '-'), at most 255 characters, the first one of abi, debug, dev, fs, kernel, net, user, vm
            invalid sysctl key "net.ipv4.conf.eth0/100.rp_filter": '/' is not allowed; allowed are 2 or more dot-separated segments of A-Z, a-z, 0-9, '_' and '-' (not starting with '-'), at most 255 characters, the first one of abi, debug, dev, fs, kernel, net, user, vm
            invalid sysctl key ".net.x": it has an empty segment; allowed are 2 or more dot-separated segments of A-Z, a-z, 0-9, '_' and '-' (not starting with '-'), at most 255 characters, the first one of abi, debug, dev, fs, kernel, net, user, vm
            invalid sysctl key "net.x.": it has an empty segment; allowed are 2 or more dot-separated segments of A-Z, a-z, 0-9, '_' and '-' (not starting with '-'), at most 255 characters, the first one of abi, debug, dev, fs, kernel, net, user, vm
            invalid sysctl value "": its length is out of range; allowed are 1 to 1024 printable ASCII characters without '#' or ';', fields separated by single spaces
            invalid sysctl value "1\n2": '\n' is not allowed; allowed are 1 to 1024 printable ASCII characters without '#' or ';', fields separated by single spaces
            invalid sysctl value "1 # x": '#' is not allowed; allowed are 1 to 1024 printable ASCII characters without '#' or ';', fields separated by single spaces
            invalid sysctl value "--x": only a number may start with '-'; allowed are 1 to 1024 printable ASCII characters without '#' or ';', fields separated by single spaces
            invalid sysctl value "1  2": fields must be separated by single spaces; allowed are 1 to 1024 printable ASCII characters without '#' or ';', fields separated by single spaces
            invalid sysctl value " 1": fields must be separated by single spaces; allowed are 1 to 1024 printable ASCII characters without '#' or ';', fields separated by single spaces
            invalid sysctl value "1\t2": '\t' is not allowed; allowed are 1 to 1024 printable ASCII characters without '#' or ';', fields separated by single spaces
        "#]].assert_eq(&out);
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

    /// `replace` on a file is parsed (YAML key allowed, a bool), carried in
    /// the model, and refused where it means nothing, with file, line, field.
    #[test]
    fn file_replace_is_parsed_and_checked() {
        use crate::spec::{Resource, Source, parse};
        let parsed = |yaml: &str| {
            parse(&[Source {
                name: "site.yaml".into(),
                text: format!("roles:\n  r:\n    files:\n{yaml}groups:\n  all: {{roles: [r]}}\n"),
            }])
        };
        let spec =
            parsed("      - {path: /etc/a, content: x, replace: true}\n      - {path: /etc/b}\n")
                .unwrap_or_else(|e| panic!("{e}"));
        let replace: Vec<bool> = spec.roles["r"]
            .resources
            .iter()
            .map(|r| matches!(r, Resource::File(f) if f.replace))
            .collect();
        assert_eq!(replace, [true, false]);
        let out = parsed(
            "      - {path: /etc/a, replace: yes-please}\n      - {path: /etc/b, ensure: absent, replace: true}\n      - {path: /etc/c, replaces: true}\n",
        )
        .unwrap_err()
        .to_string();
        expect_test::expect![[r#"
            site.yaml:4: roles.r.files[0].replace: expected true or false
            site.yaml:5: roles.r.files[1].replace: replace applies only to a file with ensure: present (it replaces a symlink or an empty directory at the path with the file)
            site.yaml:6: roles.r.files[2].replaces: unknown field `replaces`, did you mean `replace`? allowed: path, content, template, owner, group, mode, ensure, replace, notify, requires"#]]
        .assert_eq(&out);
    }
}
