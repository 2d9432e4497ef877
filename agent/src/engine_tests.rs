//! Temp-root tests of the engine: every run happens under a `--root` sandbox.
//!
//! Over 600 lines on purpose: whole-run scenarios, grouped by topic in
//! modules; each one reads on its own.

use super::*;
use crate::state::StateFile;
use ballast_proto::spec::{NodeMeta, Source, parse};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use tempfile::TempDir;

struct Sandbox {
    root: TempDir,
    state: TempDir,
    host: Host,
}

impl Sandbox {
    fn new() -> Sandbox {
        let root = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let host = Host::new(Some(root.path().to_owned()));
        Sandbox { root, state, host }
    }

    fn state(yaml: &str) -> NodeState {
        let spec = parse(&[Source {
            name: "t.yaml".into(),
            text: yaml.into(),
        }])
        .unwrap_or_else(|e| panic!("{e}"));
        spec.render(&NodeMeta {
            name: "n1".into(),
            labels: Default::default(),
        })
    }

    fn run(&self, yaml: &str, noop: bool) -> Report {
        let facts = serde_json::json!({"os": {"id": "debian", "pretty_name": "Debian 12"}});
        reconcile(
            &Self::state(yaml),
            &self.host,
            &RunOptions {
                noop,
                state_dir: &StateDir::new(self.state.path()),
                facts: &facts,
            },
        )
    }

    fn path(&self, p: &str) -> std::path::PathBuf {
        self.root.path().join(p.trim_start_matches('/'))
    }

    fn read(&self, p: &str) -> Option<String> {
        std::fs::read_to_string(self.path(p)).ok()
    }
}

fn summary(r: &Report) -> Vec<String> {
    r.resources
        .iter()
        .map(|x| {
            format!(
                "{:?} {} {}{}",
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

fn wrap(roles: &str) -> String {
    format!("roles:\n  r:\n{roles}groups:\n  all: {{roles: [r]}}\n")
}

const SITE: &str = "    directories: [{path: /etc/app, mode: \"0750\"}]\n    files:\n      - {path: /etc/app/a.conf, content: \"one\\n\", mode: \"0640\"}\n      - {path: /etc/app/motd, template: true, content: \"{{ node.name }} on {{ facts.os.pretty_name }}\"}\n    symlinks: [{path: /etc/app/current, target: a.conf}]\n";

#[test]
fn first_run_creates_and_second_run_changes_nothing() {
    let sb = Sandbox::new();
    let first = sb.run(&wrap(SITE), false);
    assert_eq!(first.changed(), 4, "{:#?}", summary(&first));
    assert_eq!(sb.read("/etc/app/a.conf").as_deref(), Some("one\n"));
    assert_eq!(sb.read("/etc/app/motd").as_deref(), Some("n1 on Debian 12"));
    assert_eq!(
        std::fs::metadata(sb.path("/etc/app/a.conf"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o640
    );
    assert_eq!(
        std::fs::metadata(sb.path("/etc/app"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o750
    );
    assert_eq!(
        std::fs::read_link(sb.path("/etc/app/current"))
            .unwrap()
            .to_str(),
        Some("a.conf")
    );
    let second = sb.run(&wrap(SITE), false);
    assert_eq!(second.changed(), 0, "{:#?}", summary(&second));
    assert!(
        second
            .resources
            .iter()
            .all(|r| r.outcome == Outcome::Unchanged)
    );
}

#[test]
fn drift_is_repaired_and_noop_reports_the_same_changes_without_making_them() {
    let sb = Sandbox::new();
    sb.run(&wrap(SITE), false);
    std::fs::write(sb.path("/etc/app/a.conf"), "tampered\n").unwrap();
    std::fs::set_permissions(
        sb.path("/etc/app/a.conf"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let dry = sb.run(&wrap(SITE), true);
    assert_eq!(
        sb.read("/etc/app/a.conf").as_deref(),
        Some("tampered\n"),
        "noop changes nothing"
    );
    let real = sb.run(&wrap(SITE), false);
    assert_eq!(
        summary(&dry),
        summary(&real)
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
        "a dry run cannot lie"
    );
    expect_test::expect![[r#"
        [
            "Unchanged directory[/etc/app] ",
            "Changed file[/etc/app/a.conf] replace content (9 -> 4 bytes); mode 0666 -> 0640",
            "Unchanged file[/etc/app/motd] ",
            "Unchanged symlink[/etc/app/current] ",
        ]
    "#]]
    .assert_debug_eq(&summary(&real));
    assert_eq!(sb.read("/etc/app/a.conf").as_deref(), Some("one\n"));
    // The replaced content was backed up by hash.
    let backup = real.resources[1].backup.clone().expect("a backup");
    let saved = std::fs::read_to_string(
        crate::backup::find(&StateDir::new(sb.state.path()), "/etc/app/a.conf", &backup)
            .expect("kept"),
    )
    .unwrap();
    assert_eq!(saved, "tampered\n");
}

#[test]
fn a_symlink_on_the_way_is_never_followed() {
    let sb = Sandbox::new();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), sb.path("/etc")).unwrap();
    let r = sb.run(
        &wrap("    files: [{path: /etc/evil.conf, content: x}]\n"),
        false,
    );
    assert_eq!(r.failed(), 1);
    assert!(
        r.resources[0]
            .error
            .as_deref()
            .unwrap()
            .contains("/etc is a symlink; refusing to follow it"),
        "{:?}",
        summary(&r)
    );
    assert!(
        std::fs::read_dir(outside.path()).unwrap().next().is_none(),
        "nothing written outside the root"
    );
}

#[test]
fn things_of_another_kind_are_reported_not_clobbered() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("/srv/data/keep")).unwrap();
    std::fs::write(sb.path("/srv/file"), "x").unwrap();
    let r = sb.run(&wrap("    files: [{path: /srv/data, content: x}]\n    symlinks: [{path: /srv/file, target: /tmp}]\n"), false);
    let s = summary(&r);
    assert!(
        s[0].contains("!/srv/data is a directory, not a regular file"),
        "{s:?}"
    );
    assert!(
        s[1].contains("!/srv/file is a regular file, not a symlink"),
        "{s:?}"
    );
    assert!(sb.path("/srv/data/keep").is_dir());
    assert_eq!(sb.read("/srv/file").as_deref(), Some("x"));
}

#[test]
fn a_failure_does_not_stop_others_and_dependents_are_skipped() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("/srv/blocked")).unwrap();
    let r = sb.run(&wrap("    files:\n      - {path: /srv/blocked, content: x}\n      - {path: /srv/after, content: y, requires: [\"file:/srv/blocked\"]}\n      - {path: /srv/other, content: z}\n"), false);
    let by_id = |id: &str| r.resources.iter().find(|x| x.id == id).unwrap().outcome;
    assert_eq!(by_id("file[/srv/blocked]"), Outcome::Failed);
    assert_eq!(by_id("file[/srv/after]"), Outcome::Skipped);
    assert_eq!(by_id("file[/srv/other]"), Outcome::Changed);
    assert_eq!(sb.read("/srv/other").as_deref(), Some("z"));
}

#[test]
fn only_what_the_agent_created_is_removed_when_it_leaves_the_desired_state() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("/etc")).unwrap();
    std::fs::write(sb.path("/etc/preexisting"), "theirs\n").unwrap();
    sb.run(&wrap("    files:\n      - {path: /etc/ours, content: a}\n      - {path: /etc/preexisting, content: managed}\n"), false);
    let r = sb.run(
        &wrap("    files: [{path: /etc/other, content: b}]\n"),
        false,
    );
    assert_eq!(
        sb.read("/etc/ours"),
        None,
        "created by the agent, so removed"
    );
    assert_eq!(
        sb.read("/etc/preexisting").as_deref(),
        Some("managed"),
        "never created by the agent, so kept"
    );
    assert!(
        summary(&r)
            .iter()
            .any(|s| s == "Changed file[/etc/ours] remove file (no longer in desired state)"),
        "{:?}",
        summary(&r)
    );
}

#[test]
fn absent_directories_must_be_empty() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("/srv/full")).unwrap();
    std::fs::write(sb.path("/srv/full/x"), "x").unwrap();
    let r = sb.run(
        &wrap("    directories: [{path: /srv/full, ensure: absent}]\n"),
        false,
    );
    assert!(
        r.resources[0]
            .error
            .as_deref()
            .unwrap()
            .contains("not empty"),
        "{:?}",
        summary(&r)
    );
    assert!(sb.path("/srv/full/x").exists());
}

#[test]
fn writes_leave_no_temp_files_behind() {
    let sb = Sandbox::new();
    sb.run(&wrap(SITE), false);
    std::fs::write(sb.path("/etc/app/a.conf"), "drift").unwrap();
    sb.run(&wrap(SITE), false);
    let names: Vec<String> = std::fs::read_dir(sb.path("/etc/app"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
}

#[test]
fn cron_jobs_are_files_in_cron_d_owned_by_root() {
    let sb = Sandbox::new();
    let yaml = wrap(
        "    cron: [{name: backup, schedule: \"@daily\", command: \"/usr/local/bin/backup\"}]\n",
    );
    let r = sb.run(&yaml, false);
    assert_eq!(r.changed(), 1, "{:?}", summary(&r));
    let path = sb.path("/etc/cron.d/ballast-backup");
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .ends_with("@daily root /usr/local/bin/backup\n")
    );
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o644, 0));
    assert_eq!(sb.run(&yaml, false).changed(), 0);
    sb.run(
        &wrap("    files: [{path: /etc/x, content: x}]\n    directories: [{path: /etc}]\n"),
        false,
    );
    assert!(
        !path.exists(),
        "a job that left the desired state is removed"
    );
}

#[test]
fn users_and_groups_in_a_sandbox_database() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("/etc")).unwrap();
    std::fs::create_dir_all(sb.path("/home")).unwrap();
    std::fs::write(sb.path("/etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(sb.path("/etc/group"), "root:x:0:\nadm:x:4:\n").unwrap();
    std::fs::write(sb.path("/etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    std::fs::write(sb.path("/etc/gshadow"), "root:*::\nadm:*::\n").unwrap();
    let yaml = wrap(
        "    groups: [{name: www, gid: 2001}]\n    users: [{name: deploy, uid: 2001, group: www, groups: [adm], shell: /bin/sh, authorized_keys: [\"ssh-ed25519 AAAAC3 deploy@x\"]}]\n",
    );
    let r = sb.run(&yaml, false);
    assert_eq!(r.failed(), 0, "{:?}", summary(&r));
    let passwd = std::fs::read_to_string(sb.path("/etc/passwd")).unwrap();
    assert!(
        passwd.contains("deploy:x:2001:2001::/home/deploy:/bin/sh"),
        "{passwd}"
    );
    assert!(
        std::fs::read_to_string(sb.path("/etc/group"))
            .unwrap()
            .contains("adm:x:4:deploy")
    );
    let keys = sb.path("/home/deploy/.ssh/authorized_keys");
    assert_eq!(
        std::fs::read_to_string(&keys).unwrap(),
        "ssh-ed25519 AAAAC3 deploy@x\n"
    );
    let meta = std::fs::metadata(&keys).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o600, 2001, 2001)
    );
    let again = sb.run(&yaml, false);
    assert_eq!(again.changed(), 0, "{:?}", summary(&again));
    // Drift: the shell changed by hand is put back.
    let edited = std::fs::read_to_string(sb.path("/etc/passwd"))
        .unwrap()
        .replace("/home/deploy:/bin/sh", "/home/deploy:/bin/false");
    std::fs::write(sb.path("/etc/passwd"), edited).unwrap();
    let fixed = sb.run(&yaml, false);
    assert_eq!(
        summary(&fixed)[1],
        "Changed user[deploy] shell /bin/false -> /bin/sh"
    );
}

#[test]
fn a_pending_restart_survives_a_run_that_fails_before_it() {
    let sb = Sandbox::new();
    let yaml = wrap(
        "    directories: [{path: /etc/app}]\n    files: [{path: /etc/app/app.conf, content: v1, notify: [app]}]\n    services: [{name: app, ensure: running}]\n",
    );
    let r = sb.run(&yaml, false);
    // In a sandbox services cannot run: the service fails after the file changed.
    assert!(
        summary(&r)
            .iter()
            .any(|s| s.starts_with("Failed service[app]")),
        "{:?}",
        summary(&r)
    );
    let pending: BTreeSet<String> = serde_json::from_slice(
        &std::fs::read(sb.state.path().join(StateFile::PendingRestarts.name())).unwrap(),
    )
    .unwrap();
    assert!(
        pending.contains("app"),
        "the owed restart is kept for the next run"
    );
}

#[test]
fn a_dry_run_counts_on_users_and_groups_it_would_create() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("/etc")).unwrap();
    std::fs::create_dir_all(sb.path("/home")).unwrap();
    std::fs::write(sb.path("/etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(sb.path("/etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(sb.path("/etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    std::fs::write(sb.path("/etc/gshadow"), "root:*::\n").unwrap();
    std::fs::write(sb.path("/etc/app.conf"), "old").unwrap();
    let yaml = wrap(
        "    groups: [{name: app}]\n    users: [{name: app, group: app}]\n    files:\n      - {path: /etc/app.conf, content: old, owner: app, group: app}\n      - {path: /etc/new.conf, content: x, owner: app}\n",
    );
    let dry = sb.run(&yaml, true);
    expect_test::expect![[r#"
        [
            "Changed group[app] create group",
            "Changed user[app] create user",
            "Changed file[/etc/app.conf] owner uid 0 -> a user this run creates; group gid 0 -> a group this run creates",
            "Changed file[/etc/new.conf] create file (1 bytes)",
        ]
    "#]]
    .assert_debug_eq(&summary(&dry));
    assert!(
        !std::fs::read_to_string(sb.path("/etc/passwd"))
            .unwrap()
            .contains("app"),
        "a dry run creates nothing"
    );
    let real = sb.run(&yaml, false);
    assert_eq!(real.failed(), 0, "{:?}", summary(&real));
    assert_eq!(real.changed(), 4);
}

#[test]
fn a_dry_run_reports_a_missing_parent_as_the_real_run_would() {
    let sb = Sandbox::new();
    let yaml = wrap("    files: [{path: /etc/nginx/app.conf, content: x}]\n");
    let dry = sb.run(&yaml, true);
    let real = sb.run(&yaml, false);
    assert_eq!(summary(&dry), summary(&real));
    assert!(
        summary(&real)[0]
            .contains("parent directory /etc/nginx of /etc/nginx/app.conf does not exist"),
        "{:?}",
        summary(&real)
    );
    // With the directory managed, the dry run counts on it being created first.
    let yaml = wrap(
        "    directories: [{path: /etc/nginx}]\n    files: [{path: /etc/nginx/app.conf, content: x}]\n    symlinks: [{path: /etc/nginx/current, target: app.conf}]\n",
    );
    let dry = sb.run(&yaml, true);
    assert_eq!(dry.failed(), 0, "{:?}", summary(&dry));
    assert_eq!(summary(&dry), summary(&sb.run(&yaml, false)));
}

/// Order of removals and the dry run's simulation of it (issue 7, item 20).
mod removal_order {
    use super::*;

    /// A sandbox whose user database is a copy of this machine's, so that
    /// useradd, userdel, groupadd and groupdel work on it with `--root`.
    fn with_user_db() -> Sandbox {
        let sb = Sandbox::new();
        std::fs::create_dir_all(sb.path("/etc")).unwrap();
        std::fs::create_dir_all(sb.path("/home")).unwrap();
        for f in ["passwd", "group", "shadow", "gshadow"] {
            std::fs::copy(format!("/etc/{f}"), sb.path(&format!("/etc/{f}"))).unwrap();
        }
        sb
    }

    fn has_line(sb: &Sandbox, file: &str, prefix: &str) -> bool {
        std::fs::read_to_string(sb.path(file))
            .unwrap()
            .lines()
            .any(|l| l.starts_with(prefix))
    }

    const DEPLOY: &str = "roles:\n  app:\n    groups: [{name: www}]\n    users: [{name: deploy, group: www}]\n    directories: [{path: /srv/app}]\n    files: [{path: /srv/app/a.conf, content: x}]\n  base:\n    files: [{path: /etc/motd, content: hi}]\ngroups:\n  all: {roles: [base, app]}\n";
    const BASE_ONLY: &str = "roles:\n  base:\n    files: [{path: /etc/motd, content: hi}]\ngroups:\n  all: {roles: [base]}\n";

    #[test]
    fn dropping_a_user_and_its_primary_group_removes_the_user_first() {
        let sb = with_user_db();
        let first = sb.run(DEPLOY, false);
        assert_eq!(first.failed(), 0, "{:?}", summary(&first));
        assert!(has_line(&sb, "/etc/passwd", "deploy:"));
        let dry = sb.run(BASE_ONLY, true);
        assert!(
            has_line(&sb, "/etc/passwd", "deploy:"),
            "noop removes nothing"
        );
        let real = sb.run(BASE_ONLY, false);
        expect_test::expect![[r#"
            [
                "Unchanged file[/etc/motd] ",
                "Changed file[/srv/app/a.conf] remove file (no longer in desired state)",
                "Changed directory[/srv/app] remove empty directory (no longer in desired state)",
                "Changed user[deploy] remove user (home directory kept) (no longer in desired state)",
                "Changed group[www] remove group (no longer in desired state)",
            ]
        "#]]
        .assert_debug_eq(&summary(&real));
        assert_eq!(
            summary(&dry),
            summary(&real),
            "the dry run predicted the real run"
        );
        assert!(!has_line(&sb, "/etc/passwd", "deploy:"));
        assert!(!has_line(&sb, "/etc/group", "www:"));
        assert!(!sb.path("/srv/app").exists());
        let again = sb.run(BASE_ONLY, false);
        assert_eq!(again.changed() + again.failed(), 0, "{:?}", summary(&again));
    }

    #[test]
    fn explicit_absent_resources_run_in_reverse_kind_order() {
        let sb = with_user_db();
        assert_eq!(sb.run(DEPLOY, false).failed(), 0);
        let absent = "roles:\n  app:\n    groups: [{name: www, ensure: absent}]\n    users: [{name: deploy, ensure: absent}]\n    directories: [{path: /srv/app, ensure: absent}]\n    files: [{path: /srv/app/a.conf, ensure: absent}]\ngroups:\n  all: {roles: [app]}\n";
        let dry = sb.run(absent, true);
        let real = sb.run(absent, false);
        expect_test::expect![[r#"
            [
                "Changed file[/srv/app/a.conf] remove file",
                "Changed file[/etc/motd] remove file (no longer in desired state)",
                "Changed directory[/srv/app] remove empty directory",
                "Changed user[deploy] remove user (home directory kept)",
                "Changed group[www] remove group",
            ]
        "#]]
        .assert_debug_eq(&summary(&real));
        assert_eq!(summary(&dry), summary(&real));
    }

    #[test]
    fn a_dry_run_predicts_a_group_that_cannot_be_removed() {
        let sb = with_user_db();
        assert_eq!(sb.run(DEPLOY, false).failed(), 0);
        // The group leaves, the user whose primary group it is stays.
        let keep_user =
            "roles:\n  app:\n    users: [{name: deploy}]\ngroups:\n  all: {roles: [app]}\n";
        let dry = sb.run(keep_user, true);
        let real = sb.run(keep_user, false);
        assert_eq!(
            summary(&dry),
            summary(&real),
            "the dry run predicted the real run"
        );
        let group = summary(&real)
            .into_iter()
            .find(|s| s.contains("group[www]"))
            .unwrap();
        assert_eq!(
            group,
            "Failed group[www]  !cannot remove group www: it is the primary group of user deploy; remove those users or give them another primary group first"
        );
        assert!(
            has_line(&sb, "/etc/group", "www:"),
            "kept, and retried next run"
        );
    }
}

/// Names reach every command after `--` (issue 7, item 12).
mod argv {
    use ballast_proto::spec::{Group, Package, PackageEnsure, User};

    /// `--` comes once, before the names, and only names follow it.
    fn names_after_double_dash(args: &[&str], names: &[&str]) {
        let dd = args
            .iter()
            .position(|a| *a == "--")
            .unwrap_or_else(|| panic!("no -- in {args:?}"));
        assert_eq!(&args[dd + 1..], names, "{args:?}");
        for n in names {
            assert!(!args[..dd].contains(n), "{n} before -- in {args:?}");
        }
    }

    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    #[test]
    fn every_command_passes_names_after_double_dash() {
        use crate::{group, package, service, user};
        for verb in [
            &["is-active"][..],
            &["is-enabled"],
            &["enable", "--quiet"],
            &["disable", "--quiet"],
            &["start"],
            &["stop"],
            &["restart"],
        ] {
            names_after_double_dash(
                &service::systemctl_args(verb, "app.service"),
                &["app.service"],
            );
        }
        let u = User {
            name: "deploy".into(),
            uid: Some(2001),
            group: Some("www".into()),
            groups: Some(vec!["adm".into()]),
            home: Some("/srv/deploy".into()),
            shell: Some("/bin/sh".into()),
            system: true,
            authorized_keys: None,
            remove_home: false,
            ensure: Default::default(),
            requires: vec![],
        };
        use user::Change as U;
        let changes = [
            U::Create,
            U::Uid { from: 1, to: 2 },
            U::Shell {
                from: "/bin/false".into(),
                to: "/bin/sh".into(),
            },
            U::Remove,
        ];
        let cmds = user::commands(&u, &changes);
        let programs: Vec<&str> = cmds.iter().map(|(p, _)| *p).collect();
        assert_eq!(programs, ["useradd", "userdel", "usermod"]);
        for (_, args) in &cmds {
            names_after_double_dash(&strs(args), &["deploy"]);
        }
        let g = Group {
            name: "www".into(),
            gid: Some(2001),
            system: true,
            ensure: Default::default(),
            requires: vec![],
        };
        use group::Change as G;
        for c in [G::Create, G::Gid { from: 1, to: 2 }, G::Remove] {
            let (_, args) = group::command(&g, &c);
            names_after_double_dash(&strs(&args), &["www"]);
        }
        names_after_double_dash(&package::dpkg_query_args("nginx"), &["nginx"]);
        names_after_double_dash(&package::apt_cache_args("nginx"), &["nginx"]);
        let p = |name: &str| Package {
            name: name.into(),
            ensure: PackageEnsure::Present,
            notify: vec![],
            requires: vec![],
        };
        let (a, b, c) = (p("nginx"), p("jq"), p("curl"));
        use package::Change as P;
        let batch = [
            (&a, vec![P::Install { version: None }]),
            (
                &b,
                vec![P::Install {
                    version: Some("1.6-2.1".into()),
                }],
            ),
            (&c, vec![P::Remove]),
        ];
        let args = package::apt_get_args(&batch).expect("changes");
        names_after_double_dash(&strs(&args), &["nginx", "jq=1.6-2.1", "curl-"]);
        assert!(package::apt_get_args(&[]).is_none());
    }
}

/// Owed restarts name declared services only (issue 7, item 16).
mod pending_restarts {
    use super::*;

    #[test]
    fn a_restart_owed_to_an_undeclared_service_is_dropped() {
        let sb = Sandbox::new();
        std::fs::create_dir_all(sb.path("/etc")).unwrap();
        // Owed by an earlier state (or an older agent) to services since dropped.
        std::fs::write(
            sb.state.path().join(StateFile::PendingRestarts.name()),
            br#"["ghost","app"]"#,
        )
        .unwrap();
        let yaml = wrap("    files: [{path: /etc/x, content: x}]\n");
        sb.run(&yaml, true);
        let read = || -> BTreeSet<String> {
            serde_json::from_slice(
                &std::fs::read(sb.state.path().join(StateFile::PendingRestarts.name())).unwrap(),
            )
            .unwrap()
        };
        assert_eq!(read().len(), 2, "a dry run writes nothing");
        sb.run(&yaml, false);
        assert!(read().is_empty(), "{:?}", read());
    }
}

/// Templates are bounded on the node (issue 7, item 10).
mod template_limits {
    use super::*;

    /// Peak resident memory of this process so far, in KiB.
    fn peak_rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/self/status")
    }

    /// Set in the child that runs the memory test alone.
    const ALONE: &str = "BALLAST_TEST_ALONE";

    /// Peak memory is per process, and other tests run beside this one in
    /// the test binary: the test runs itself again in a process of its own.
    #[test]
    fn a_runaway_template_fails_quickly_with_bounded_memory() {
        if std::env::var_os(ALONE).is_some() {
            return runaway_template_alone();
        }
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        let name = format!("{module}::a_runaway_template_fails_quickly_with_bounded_memory");
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name.as_str(), "--exact", "--test-threads=1", "--nocapture"])
            .env(ALONE, "1")
            .output()
            .expect("run the test binary again");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the test alone: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn runaway_template_alone() {
        let sb = Sandbox::new();
        std::fs::create_dir_all(sb.path("/etc")).unwrap();
        let before = peak_rss_kib();
        let started = Instant::now();
        // 100,000 x 1,000 turns: 100 MB of output on the old code.
        let r = sb.run(
            &wrap("    files:\n      - {path: /etc/moderate, template: true, content: \"{% for i in range(100000) %}{% for j in range(1000) %}x{% endfor %}{% endfor %}\"}\n      - {path: /etc/runaway, template: true, content: \"{% for i in range(100000) %}{% for j in range(100000) %}{{ i * j }}{% endfor %}{% endfor %}\"}\n      - {path: /etc/fine, template: true, content: \"{{ node.name }}\"}\n"),
            false,
        );
        let took = started.elapsed();
        let grown_mib = (peak_rss_kib().saturating_sub(before)) / 1024;
        let s = summary(&r);
        assert_eq!(s.len(), 3, "{s:?}");
        for (i, path) in [(1, "/etc/moderate"), (2, "/etc/runaway")] {
            assert_eq!(
                s[i],
                format!(
                    "Failed file[{path}]  !render template: engine ran out of fuel (template line 1); a template may run at most 5000000 instructions"
                ),
            );
            assert!(!sb.path(path).exists(), "nothing written");
        }
        assert_eq!(s[0], "Changed file[/etc/fine] create file (2 bytes)");
        assert!(took < Duration::from_secs(10), "took {took:?}");
        assert!(grown_mib < 64, "peak memory grew by {grown_mib} MiB");
    }
}

/// Implicit dependencies (Puppet's autorequire), written once in the model.
mod implicit_dependencies {
    use super::*;

    #[test]
    fn what_a_failed_user_owns_or_runs_is_skipped_not_failed() {
        let sb = Sandbox::new();
        std::fs::create_dir_all(sb.path("/etc/cron.d")).unwrap();
        std::fs::write(sb.path("/etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(sb.path("/etc/group"), "root:x:0:\n").unwrap();
        std::fs::write(sb.path("/etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        std::fs::write(sb.path("/etc/gshadow"), "root:*::\n").unwrap();
        // uid 0 is taken: useradd refuses, so user[ghost] fails.
        let yaml = wrap(
            "    users: [{name: ghost, uid: 0}]\n    files: [{path: /etc/ghost.conf, content: x, owner: ghost}, {path: /etc/other.conf, content: x}]\n    cron: [{name: job, schedule: \"@daily\", user: ghost, command: \"true\"}]\n",
        );
        let r = sb.run(&yaml, false);
        let lines = summary(&r);
        assert!(lines[0].starts_with("Failed user[ghost]"), "{lines:?}");
        assert_eq!(
            lines[1..],
            [
                "Skipped file[/etc/ghost.conf]  !skipped: user[ghost] failed",
                "Changed file[/etc/other.conf] create file (1 bytes)",
                "Skipped cron[job]  !skipped: user[ghost] failed",
            ],
            "{lines:?}"
        );
    }
}

/// `sysctl` under a temp root: only the persisted file is managed there.
mod sysctl {
    use super::*;

    const CONF: &str = "/etc/sysctl.d/90-ballast.conf";

    #[test]
    fn sysctl_persists_in_one_file_and_removal_deletes_only_its_line() {
        let live_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").ok();
        let sb = Sandbox::new();
        std::fs::create_dir_all(sb.path("/etc/sysctl.d")).unwrap();
        let both = wrap(
            "    sysctl: [{key: net.ipv4.ip_forward, value: \"1\"}, {key: vm.swappiness, value: 10}]\n",
        );
        let r = sb.run(&both, false);
        assert_eq!(
            summary(&r),
            [
                "Changed sysctl[net.ipv4.ip_forward] persist 1 in /etc/sysctl.d/90-ballast.conf",
                "Changed sysctl[vm.swappiness] persist 10 in /etc/sysctl.d/90-ballast.conf",
            ]
        );
        expect_test::expect![[r#"
            # Managed by Ballast: one line per sysctl resource; local changes are overwritten.
            net.ipv4.ip_forward = 1
            vm.swappiness = 10
        "#]]
        .assert_eq(&sb.read(CONF).unwrap());
        let meta = std::fs::metadata(sb.path(CONF)).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o644, 0));
        assert_eq!(sb.run(&both, false).changed(), 0);
        // One leaves the desired state: its line goes, the other stays.
        let one = wrap("    sysctl: [{key: vm.swappiness, value: 10}]\n");
        let r = sb.run(&one, false);
        assert_eq!(
            summary(&r),
            [
                "Unchanged sysctl[vm.swappiness] ",
                "Changed sysctl[net.ipv4.ip_forward] remove from /etc/sysctl.d/90-ballast.conf (live value kept) (no longer in desired state)"
            ]
        );
        assert!(!sb.read(CONF).unwrap().contains("ip_forward"));
        // The last one goes: so does the file.
        sb.run(&wrap("    files: []\n"), false);
        assert!(sb.read(CONF).is_none());
        // A sandboxed run never touches the real kernel's values.
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").ok(),
            live_before
        );
    }
}

/// Every changed file's report carries its content diff, made by the same
/// observe and diff in a dry run and a real run, in the batch and alone.
mod content_diffs {
    use super::*;

    fn diffs(r: &Report) -> Vec<(String, String)> {
        r.resources
            .iter()
            .filter_map(|x| Some((x.id.clone(), x.diff.clone()?)))
            .collect()
    }

    #[test]
    fn a_run_reports_the_content_diff_of_each_file_it_changed() {
        let sb = Sandbox::new();
        std::fs::create_dir_all(sb.path("/etc")).unwrap();
        let site = |motd: &str| {
            format!(
                "roles:\n  r:\n    directories: [{{path: /srv}}]\n    files:\n      - {{path: /etc/motd, content: \"{motd}\"}}\n      - {{path: /srv/app.conf, content: \"port = {{{{ vars.port }}}}\\n\", template: true, requires: [\"directory:/srv\"]}}\ngroups:\n  all: {{roles: [r], vars: {{port: '80'}}}}\n"
            )
        };
        let first = sb.run(&site("one\\ntwo\\nthree\\n"), false);
        expect_test::expect![[r#"
            [
                (
                    "file[/etc/motd]",
                    "diff (+3 -0 lines)\n--- /dev/null\n+++ /etc/motd\n@@ -1,0 +1,3 @@\n+one\n+two\n+three\n",
                ),
                (
                    "file[/srv/app.conf]",
                    "diff (+1 -0 lines)\n--- /dev/null\n+++ /srv/app.conf\n@@ -1,0 +1,1 @@\n+port = 80\n",
                ),
            ]
        "#]]
        .assert_debug_eq(&diffs(&first));
        // Unchanged: no diff.
        assert!(diffs(&sb.run(&site("one\\ntwo\\nthree\\n"), false)).is_empty());
        // A new content, then drift by hand: the diff is of what was there.
        let want = site("one\\nTWO\\nthree\\n");
        let dry = sb.run(&want, true);
        let real = sb.run(&want, false);
        assert_eq!(diffs(&dry), diffs(&real), "a dry run shows the same diff");
        assert_eq!(
            diffs(&real),
            [(
                "file[/etc/motd]".to_owned(),
                "diff (+1 -1 lines)\n--- /etc/motd\n+++ /etc/motd\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n".to_owned()
            )]
        );
        std::fs::write(sb.path("/srv/app.conf"), "port = 8080\n").unwrap();
        let r = sb.run(&want, false);
        assert_eq!(
            diffs(&r),
            [(
                "file[/srv/app.conf]".to_owned(),
                "diff (+1 -1 lines)\n--- /srv/app.conf\n+++ /srv/app.conf\n@@ -1,1 +1,1 @@\n-port = 8080\n+port = 80\n".to_owned()
            )]
        );
        // What is there is binary: only its size is told.
        std::fs::write(sb.path("/etc/motd"), b"\x7fELF\0\0").unwrap();
        let r = sb.run(&want, false);
        assert_eq!(
            diffs(&r),
            [(
                "file[/etc/motd]".to_owned(),
                "diff not shown (binary, 6 -> 14 bytes)".to_owned()
            )]
        );
        // A mode change alone has no content diff; a removal has none.
        let r = sb.run(
            &wrap(
                "    files: [{path: /etc/motd, content: \"one\\nTWO\\nthree\\n\", mode: '0600'}]\n",
            ),
            false,
        );
        assert_eq!(summary(&r)[0], "Changed file[/etc/motd] mode 0644 -> 0600");
        assert!(diffs(&r).is_empty(), "{:?}", diffs(&r));
        let pb = r.to_pb(1, "h", 0, false, Trigger::Change);
        assert!(pb.resources.iter().all(|x| x.diff.is_empty()));
    }
}
