//! Tests of the file kind: its pure diff table, and temp-root runs of
//! `replace: true` through the engine (symlink, empty and non-empty
//! directory, FIFO; dry run against real run; a second run).

use super::*;
use crate::engine::{Outcome, Report, RunOptions, reconcile};
use ballast_proto::spec::{NodeMeta, NodeState, Source, parse};

fn meta(kind: Kind, mode: u32, uid: u32, size: u64) -> Meta {
    Meta {
        kind,
        mode,
        uid,
        gid: uid,
        size,
        dev: 1,
        ino: 2,
        nlink: 1,
    }
}

fn file(ensure: Ensure, content: Option<&str>, replace: bool) -> File {
    File {
        path: "/etc/app.conf".into(),
        content: content.map(str::to_owned),
        template: false,
        vars: Default::default(),
        owner: None,
        group: None,
        mode: Some(0o640),
        ensure,
        replace,
        notify: vec![],
        requires: vec![],
    }
}

/// Every desired file against a few observed states, and the changes it
/// gives (owner and group as resolved ids: 1000 is the desired owner).
#[test]
fn diff_table() {
    let specs = [
        ("content", file(Ensure::Present, Some("new\n"), false)),
        ("no content", file(Ensure::Present, None, false)),
        ("replace", file(Ensure::Present, Some("new\n"), true)),
        ("absent", file(Ensure::Absent, None, false)),
    ];
    let seen = |m: Option<Meta>, same: bool, replaces: Option<Replaced>| Observed {
        meta: m,
        same_content: same,
        old: None,
        uid: Some(1000),
        gid: Some(1000),
        replaces,
    };
    let observed = [
        ("nothing", seen(None, false, None)),
        (
            "right",
            seen(Some(meta(Kind::File, 0o640, 1000, 4)), true, None),
        ),
        (
            "old content",
            seen(Some(meta(Kind::File, 0o640, 1000, 9)), false, None),
        ),
        (
            "mode 0644, root",
            seen(Some(meta(Kind::File, 0o644, 0, 4)), true, None),
        ),
        (
            "symlink",
            seen(
                Some(meta(Kind::Symlink, 0o777, 0, 10)),
                false,
                Some(Replaced::Symlink {
                    target: "../sites-available/default".into(),
                }),
            ),
        ),
        (
            "empty dir",
            seen(
                Some(meta(Kind::Dir, 0o755, 0, 4096)),
                false,
                Some(Replaced::EmptyDir),
            ),
        ),
    ];
    let mut out = String::new();
    for (sname, spec) in &specs {
        let r = FileRes {
            spec,
            content: spec.content.clone().map(String::into_bytes),
            state_dir: &StateDir::new("/nonexistent"),
        };
        for (oname, a) in &observed {
            // observe refuses these unless the file says `replace: true`.
            if a.replaces.is_some() && !spec.replace {
                continue;
            }
            let changes: Vec<String> = r.diff(a).iter().map(|c| c.to_string()).collect();
            out.push_str(&format!("{sname} / {oname} => [{}]\n", changes.join("; ")));
        }
    }
    expect_test::expect![[r#"
        content / nothing => [create file (4 bytes)]
        content / right => []
        content / old content => [replace content (9 -> 4 bytes)]
        content / mode 0644, root => [mode 0644 -> 0640; owner uid 0 -> 1000; group gid 0 -> 1000]
        no content / nothing => [create file (0 bytes)]
        no content / right => []
        no content / old content => []
        no content / mode 0644, root => [mode 0644 -> 0640; owner uid 0 -> 1000; group gid 0 -> 1000]
        replace / nothing => [create file (4 bytes)]
        replace / right => []
        replace / old content => [replace content (9 -> 4 bytes)]
        replace / mode 0644, root => [mode 0644 -> 0640; owner uid 0 -> 1000; group gid 0 -> 1000]
        replace / symlink => [replace symlink -> ../sites-available/default with a file (4 bytes)]
        replace / empty dir => [replace empty directory with a file (4 bytes)]
        absent / nothing => []
        absent / right => [remove file]
        absent / old content => [remove file]
        absent / mode 0644, root => [remove file]
    "#]].assert_eq(&out);
}

struct Sandbox {
    root: tempfile::TempDir,
    state: tempfile::TempDir,
    host: Host,
}

impl Sandbox {
    fn new() -> Sandbox {
        let root = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/nginx/sites-enabled")).unwrap();
        let host = Host::new(Some(root.path().to_owned()));
        Sandbox { root, state, host }
    }

    fn at(&self, p: &str) -> std::path::PathBuf {
        self.root.path().join(p.trim_start_matches('/'))
    }

    fn run(&self, files: &str, noop: bool) -> Report {
        let spec = parse(&[Source {
            name: "t.yaml".into(),
            text: format!("roles:\n  r:\n    files:\n{files}groups:\n  all: {{roles: [r]}}\n"),
        }])
        .unwrap_or_else(|e| panic!("{e}"));
        let state: NodeState = spec.render(&NodeMeta {
            name: "n1".into(),
            labels: Default::default(),
        });
        reconcile(
            &state,
            &self.host,
            &RunOptions {
                noop,
                state_dir: &StateDir::new(self.state.path()),
                facts: &serde_json::json!({}),
            },
        )
    }
}

/// One line per resource: outcome, id, changes, error.
fn summary(r: &Report) -> String {
    r.resources
        .iter()
        .map(|x| {
            format!(
                "{:?} {} [{}]{}\n",
                x.outcome,
                x.id,
                x.changes.join("; "),
                x.error
                    .as_deref()
                    .map(|e| format!(" !{e}"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

const DEFAULT: &str = "/etc/nginx/sites-enabled/default";

/// Debian's `sites-enabled/default` is a symlink: without `replace` the
/// file is refused with a message that names the option, and the link
/// stays.
#[test]
fn a_symlink_is_refused_without_replace_and_the_refusal_names_the_option() {
    let s = Sandbox::new();
    std::os::unix::fs::symlink("../sites-available/default", s.at(DEFAULT)).unwrap();
    let report = s.run(
        &format!("      - {{path: {DEFAULT}, content: \"site\\n\"}}\n"),
        false,
    );
    expect_test::expect![[r#"
        Failed file[/etc/nginx/sites-enabled/default] [] !/etc/nginx/sites-enabled/default is a symlink, not a regular file; set `replace: true` on the file to replace it
    "#]].assert_eq(&summary(&report));
    assert!(s.at(DEFAULT).symlink_metadata().unwrap().is_symlink());
}

/// With `replace: true` the symlink gives way to the file; the dry run
/// says exactly what the real run does, and a second run is quiet.
#[test]
fn replace_puts_the_file_where_a_symlink_was_and_a_dry_run_says_the_same() {
    let s = Sandbox::new();
    std::os::unix::fs::symlink("../sites-available/default", s.at(DEFAULT)).unwrap();
    let files = format!(
        "      - {{path: {DEFAULT}, content: \"site\\n\", mode: \"0644\", replace: true}}\n"
    );
    let noop = summary(&s.run(&files, true));
    assert!(s.at(DEFAULT).symlink_metadata().unwrap().is_symlink());
    let real = summary(&s.run(&files, false));
    assert_eq!(noop, real);
    expect_test::expect![[r#"
        Changed file[/etc/nginx/sites-enabled/default] [replace symlink -> ../sites-available/default with a file (5 bytes)]
    "#]].assert_eq(&real);
    let m = s.at(DEFAULT).symlink_metadata().unwrap();
    assert!(m.is_file());
    assert_eq!(std::fs::read_to_string(s.at(DEFAULT)).unwrap(), "site\n");
    let again = s.run(&files, false);
    assert!(
        again
            .resources
            .iter()
            .all(|r| r.outcome == Outcome::Unchanged),
        "{}",
        summary(&again)
    );
}

/// An empty directory is replaced; one with anything in it is refused
/// even with `replace: true`, and what is in it stays.
#[test]
fn replace_takes_an_empty_directory_and_refuses_a_non_empty_one() {
    let s = Sandbox::new();
    std::fs::create_dir(s.at("/etc/empty")).unwrap();
    std::fs::create_dir(s.at("/etc/full")).unwrap();
    std::fs::write(s.at("/etc/full/keep"), "keep").unwrap();
    let files = "      - {path: /etc/empty, content: x, replace: true}\n      - {path: /etc/full, content: x, replace: true}\n";
    let noop = summary(&s.run(files, true));
    let real = summary(&s.run(files, false));
    assert_eq!(noop, real);
    expect_test::expect![[r#"
        Changed file[/etc/empty] [replace empty directory with a file (1 bytes)]
        Failed file[/etc/full] [] !/etc/full is a directory that is not empty; `replace: true` replaces only an empty directory, so nothing in it is lost
    "#]].assert_eq(&real);
    assert_eq!(std::fs::read_to_string(s.at("/etc/empty")).unwrap(), "x");
    assert_eq!(
        std::fs::read_to_string(s.at("/etc/full/keep")).unwrap(),
        "keep"
    );
    // Without replace, a directory is refused and the message says how.
    let without = summary(&s.run("      - {path: /etc/full, content: x}\n", false));
    expect_test::expect![[r#"
        Failed file[/etc/full] [] !/etc/full is a directory, not a regular file; set `replace: true` on the file to replace it if it is empty
        Changed file[/etc/empty] [remove file (no longer in desired state)]
    "#]].assert_eq(&without);
    // The replaced directory left no temp name behind.
    let left: Vec<String> = std::fs::read_dir(s.at("/etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".ballast-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A FIFO is never opened nor replaced, whatever the file says.
#[test]
fn a_fifo_is_refused_even_with_replace() {
    let s = Sandbox::new();
    nix::unistd::mkfifo(
        &s.at("/etc/pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let report = s.run(
        "      - {path: /etc/pipe, content: x, replace: true}\n",
        false,
    );
    expect_test::expect![[r#"
        Failed file[/etc/pipe] [] !/etc/pipe is a device, socket or FIFO; refusing to replace it (`replace: true` replaces only a symlink or an empty directory)
    "#]].assert_eq(&summary(&report));
}
