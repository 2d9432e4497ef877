//! Temp-root tests of what the host guarantees around writes: bounded
//! backups, orphaned temp files, a full disk, and an unprivileged user
//! racing the agent. The last two need root (a tmpfs mount, `setpriv`).

use crate::engine::{Outcome, Report, RunOptions, reconcile};
use crate::host::Host;
use ballast_proto::spec::{NodeMeta, Source, parse};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn run(host: &Host, state_dir: &Path, yaml: &str) -> Report {
    let spec = parse(&[Source {
        name: "t.yaml".into(),
        text: format!("roles:\n  r:\n{yaml}groups:\n  all: {{roles: [r]}}\n"),
    }])
    .unwrap_or_else(|e| panic!("{e}"));
    let state = spec.render(&NodeMeta {
        name: "n1".into(),
        labels: Default::default(),
    });
    reconcile(
        &state,
        host,
        &RunOptions {
            noop: false,
            state_dir: &crate::state::StateDir::new(state_dir),
            facts: &serde_json::Value::Null,
        },
    )
}

fn errors(r: &Report) -> Vec<String> {
    r.resources
        .iter()
        .filter_map(|x| x.error.as_ref().map(|e| format!("{}: {e}", x.id)))
        .collect()
}

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: needs root");
    false
}

#[test]
fn backups_of_a_rewritten_file_stay_within_the_per_path_cap() {
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let host = Host::new(Some(root.path().to_owned()));
    let yaml = "    directories: [{path: /etc}]\n    files: [{path: /etc/app.conf, content: good}, {path: /etc/other.conf, content: fine}]\n";
    run(&host, state.path(), yaml);
    let conf = root.path().join("etc/app.conf");
    let rounds = crate::backup::MAX_PER_PATH * 3;
    for i in 0..rounds {
        std::fs::write(
            &conf,
            format!("rewritten by a user, round {i}\n").repeat(100),
        )
        .unwrap();
        let r = run(&host, state.path(), yaml);
        assert_eq!(r.changed(), 1, "{:?}", errors(&r));
        assert!(r.resources[1].backup.is_some(), "round {i} backed up");
    }
    std::fs::write(root.path().join("etc/other.conf"), "changed once").unwrap();
    run(&host, state.path(), yaml);
    let kept = crate::backup::list(&crate::state::StateDir::new(state.path()));
    let total: u64 = kept.iter().map(|(_, size)| size).sum();
    assert_eq!(
        kept.len(),
        crate::backup::MAX_PER_PATH + 1,
        "{} rewrites of one file keep {} backups, another file keeps its own: {kept:?}",
        rounds,
        crate::backup::MAX_PER_PATH
    );
    assert!(total <= crate::backup::MAX_TOTAL_BYTES);
    // The newest are the ones kept.
    let last = std::fs::read_to_string(&kept.iter().rev().nth(1).unwrap().0).unwrap();
    assert!(last.starts_with(&format!("rewritten by a user, round {}\n", rounds - 1)));
}

#[test]
fn orphaned_temp_files_are_removed_and_look_alikes_are_kept() {
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let host = Host::new(Some(root.path().to_owned()));
    let yaml = "    directories: [{path: /etc}, {path: /etc/app}]\n    files: [{path: /etc/app/a.conf, content: one}]\n    symlinks: [{path: /etc/app/current, target: a.conf}]\n";
    run(&host, state.path(), yaml);
    let dir = root.path().join("etc/app");
    let orphans = [
        ".a.conf.ballast-0123456789ab.tmp",
        ".x.ballast-ffffffffffff.tmp",
    ];
    for o in orphans {
        std::fs::write(dir.join(o), "half written").unwrap();
    }
    std::os::unix::fs::symlink("a.conf", dir.join(".current.ballast-abcdef012345.tmp")).unwrap();
    let look_alikes = [
        "a.conf.ballast-0123456789ab.tmp",
        ".a.conf.ballast-0123456789AB.tmp",
        ".a.conf.ballast-0123456789a.tmp",
        ".a.conf.ballast-0123456789ab.tmp.keep",
        ".a.conf.other-0123456789ab.tmp",
        ".ballast-0123456789ab.tmp",
    ];
    for l in look_alikes {
        std::fs::write(dir.join(l), "someone else's").unwrap();
    }
    // A run that changes nothing in the directory still clears it.
    let r = run(&host, state.path(), yaml);
    assert_eq!(r.changed(), 0, "{:?}", errors(&r));
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let mut want: Vec<String> = ["a.conf", "current"]
        .iter()
        .chain(look_alikes.iter())
        .map(|s| s.to_string())
        .collect();
    want.sort();
    assert_eq!(left, want);
}

/// A tmpfs mounted for one test, unmounted (and its mount point removed) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "ballast-test",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        Tmpfs { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_still_lets_the_agent_put_back_smaller_content() {
    if !is_root() {
        return;
    }
    let fs = Tmpfs::mount("4m");
    let (root, state) = (fs.path().join("root"), fs.path().join("state"));
    std::fs::create_dir_all(root.join("srv")).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let host = Host::new(Some(root.clone()));
    let yaml = "    files: [{path: /srv/app.conf, content: \"known good\\n\"}]\n";
    assert_eq!(run(&host, &state, yaml).changed(), 1);
    // The managed file grows to 3 MiB, and the rest of the disk fills up
    // but for a little room: too little to back the 3 MiB up.
    std::fs::write(root.join("srv/app.conf"), vec![b'x'; 3 << 20]).unwrap();
    let filler = fs.path().join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(len.saturating_sub(64 << 10))
        .unwrap();
    let r = run(&host, &state, yaml);
    assert_eq!(r.resources[0].outcome, Outcome::Changed, "{:?}", errors(&r));
    assert_eq!(r.resources[0].backup, None, "no room for the backup");
    assert_eq!(
        std::fs::read_to_string(root.join("srv/app.conf")).unwrap(),
        "known good\n"
    );
}

#[test]
fn a_disk_with_no_room_at_all_gives_up_old_backups_for_the_repair() {
    if !is_root() {
        return;
    }
    let fs = Tmpfs::mount("4m");
    let (root, state) = (fs.path().join("root"), fs.path().join("state"));
    std::fs::create_dir_all(root.join("srv")).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let host = Host::new(Some(root.clone()));
    let yaml = "    files: [{path: /srv/app.conf, content: \"known good\\n\"}]\n";
    assert_eq!(run(&host, &state, yaml).changed(), 1);
    let conf = root.join("srv/app.conf");
    // Earlier drift left backups behind (5 x 400 KiB).
    for i in 0..5u8 {
        std::fs::write(&conf, vec![b'a' + i; 400 << 10]).unwrap();
        assert_eq!(run(&host, &state, yaml).changed(), 1);
    }
    // Now the disk is full to the last byte.
    std::fs::write(&conf, vec![b'x'; 512 << 10]).unwrap();
    let mut f = std::fs::File::create(fs.path().join("filler")).unwrap();
    for size in [64 << 10, 4 << 10, 512, 1] {
        let chunk = vec![0u8; size];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    }
    drop(f);
    let r = run(&host, &state, yaml);
    assert_eq!(r.resources[0].outcome, Outcome::Changed, "{:?}", errors(&r));
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "known good\n");
}

const RACER: &str = r#"
import os, sys, time
r, keep, stop = sys.argv[1], sys.argv[2], sys.argv[3]
i = 0
end = time.time() + 60
while not os.path.exists(stop) and time.time() < end:
    i += 1
    mine = os.path.join(keep, "f%d" % i)
    with open(mine, "w") as f:
        f.write("hello\n")
    os.chmod(mine, 0o755)
    new = os.path.join(r, ".x.new")
    try:
        if i % 2:
            os.link(mine, new)          # x becomes a hard link to a file of mine
        else:
            with open(new, "w") as f:  # or a plain file of mine
                f.write("hello\n")
        os.rename(new, os.path.join(r, "x"))
    except OSError:
        pass
print(i)
"#;

#[test]
fn a_racing_user_never_gets_a_root_owned_or_set_id_file() {
    if !is_root() {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    let carol = root.join("home/carol");
    let (r, keep) = (carol.join("r"), carol.join("keep"));
    for d in [&root.join("etc"), &r, &keep] {
        std::fs::create_dir_all(d).unwrap();
    }
    for d in [base.path(), &root, &root.join("home")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    for d in [&carol, &r, &keep] {
        std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
    }
    std::fs::copy("/etc/passwd", root.join("etc/passwd")).unwrap();
    std::fs::copy("/etc/group", root.join("etc/group")).unwrap();
    let script = base.path().join("racer.py");
    std::fs::write(&script, RACER).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stop = base.path().join("stop");
    let racer = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
        ])
        .arg(&script)
        .args([&r, &keep, &stop])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let host = Host::new(Some(root.clone()));
    let yaml = "    files: [{path: /home/carol/r/x, content: \"hello\\n\", owner: root, group: root, mode: \"4755\"}]\n";
    let mut changed = 0;
    for _ in 0..400 {
        let r = run(&host, state.path(), yaml);
        changed += r.changed();
    }
    std::fs::write(&stop, "").unwrap();
    let out = racer.wait_with_output().unwrap();
    let swaps: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(
        swaps > 10 && changed > 10,
        "the race ran: {swaps} swaps, {changed} repairs"
    );
    let mut bad = Vec::new();
    for e in std::fs::read_dir(&keep).unwrap() {
        let m = std::fs::symlink_metadata(e.as_ref().unwrap().path()).unwrap();
        if m.uid() != 65534 || m.mode() & 0o6000 != 0 {
            bad.push(format!(
                "{:?} uid {} mode {:o}",
                e.unwrap().file_name(),
                m.uid(),
                m.mode() & 0o7777
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of the racer's files changed owner or got set-id bits: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    // A run with the racer gone settles on the desired file.
    run(&host, state.path(), yaml);
    let m = std::fs::symlink_metadata(r.join("x")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777, m.nlink()), (0, 0o4755, 1));
}

#[test]
fn the_open_file_soft_limit_is_raised_to_the_hard_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // One below the hard limit: lower, but harmless to tests running beside.
    setrlimit(Resource::RLIMIT_NOFILE, hard - 1, hard).unwrap();
    assert_eq!(crate::host::raise_nofile_limit().unwrap(), hard);
    assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
}

#[test]
fn set_id_bits_do_not_survive_a_change_of_owner() {
    if !is_root() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::copy("/etc/passwd", root.path().join("etc/passwd")).unwrap();
    std::fs::copy("/etc/group", root.path().join("etc/group")).unwrap();
    let tool = root.path().join("etc/tool");
    std::fs::write(&tool, "#!/bin/sh\n").unwrap();
    std::os::unix::fs::chown(&tool, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o6755)).unwrap();
    let host = Host::new(Some(root.path().to_owned()));
    // The mode is not managed: it is kept, but not its set-id bits.
    let r = run(
        &host,
        state.path(),
        "    files: [{path: /etc/tool, content: \"#!/bin/sh\\n\", owner: root}]\n",
    );
    assert_eq!(r.changed(), 1, "{:?}", errors(&r));
    let m = std::fs::symlink_metadata(&tool).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 65534, 0o755));
}

/// A replacement checked against one object never takes another: a
/// directory that filled up, or a symlink swapped for another, between
/// observing and committing, is put back whole, and the staged file goes.
#[test]
fn a_replacement_puts_back_what_changed_since_it_was_observed() {
    let root = tempfile::tempdir().unwrap();
    let host = Host::new(Some(root.path().to_owned()));
    let at = |p: &str| root.path().join(p);
    let temp_names = || -> Vec<String> {
        std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".ballast-"))
            .collect()
    };
    // An empty directory, observed, then given an entry before the commit.
    std::fs::create_dir(at("d")).unwrap();
    let seen = host.lstat("/d").unwrap().unwrap();
    assert!(host.dir_is_empty("/d", &seen).unwrap());
    let staged = host
        .stage_file("/d", b"new", 0o644, None, None)
        .unwrap()
        .replacing(seen);
    std::fs::write(at("d/late"), "late").unwrap();
    let err = host.commit_durable(staged).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "/d is no longer an empty directory; not replaced"
    );
    assert_eq!(std::fs::read_to_string(at("d/late")).unwrap(), "late");
    assert!(temp_names().is_empty(), "{:?}", temp_names());
    // A symlink, observed, then replaced by another symlink.
    std::os::unix::fs::symlink("one", at("l")).unwrap();
    let seen = host.lstat("/l").unwrap().unwrap();
    let staged = host
        .stage_file("/l", b"new", 0o644, None, None)
        .unwrap()
        .replacing(seen);
    std::os::unix::fs::symlink("two", at("l2")).unwrap();
    std::fs::rename(at("l2"), at("l")).unwrap();
    let err = host.commit_durable(staged).unwrap_err();
    assert!(
        format!("{err:#}").contains("changed while it was being checked"),
        "{err:#}"
    );
    assert_eq!(std::fs::read_link(at("l")).unwrap(), Path::new("two"));
    assert!(temp_names().is_empty(), "{:?}", temp_names());
    // Unchanged since observed: the file takes the symlink's place.
    let seen = host.lstat("/l").unwrap().unwrap();
    let staged = host
        .stage_file("/l", b"new", 0o644, None, None)
        .unwrap()
        .replacing(seen);
    host.commit_durable(staged).unwrap();
    assert_eq!(std::fs::read_to_string(at("l")).unwrap(), "new");
    assert!(temp_names().is_empty(), "{:?}", temp_names());
}

/// A crash between the exchange and the removal leaves the old empty
/// directory under a temp name: the next run removes it like any orphan.
#[test]
fn an_orphaned_empty_directory_under_a_temp_name_is_removed() {
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let orphan = root.path().join("etc/.x.ballast-0123456789ab.tmp");
    std::fs::create_dir_all(&orphan).unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    std::fs::File::open(&orphan)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let host = Host::new(Some(root.path().to_owned()));
    let report = run(
        &host,
        state.path(),
        "    files: [{path: /etc/x, content: x}]\n",
    );
    assert!(errors(&report).is_empty(), "{:?}", errors(&report));
    assert!(!orphan.exists());
}
