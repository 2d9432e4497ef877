//! The real `ballast-agent apply` binary under faults: a low open-file limit,
//! and SIGKILL in the middle of a run over thousands of files.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The agent binary next to this test binary (`target/debug/deps/it-*` →
/// `target/debug/ballast-agent`), or `BALLAST_AGENT_BIN`.
fn agent() -> PathBuf {
    if let Some(p) = std::env::var_os("BALLAST_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("ballast-agent");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p ballast-agent` first",
        p.display()
    );
    p
}

/// A spec of `files` files spread over `dirs` directories under /srv/many.
fn spec(dirs: usize, files: usize, content: &dyn Fn(usize) -> String) -> String {
    let mut y = String::from(
        "roles:\n  r:\n    directories:\n      - {path: /srv}\n      - {path: /srv/many}\n",
    );
    for d in 0..dirs {
        y.push_str(&format!("      - {{path: /srv/many/d{d:04}}}\n"));
    }
    y.push_str("    files:\n");
    for i in 0..files {
        y.push_str(&format!(
            "      - {{path: /srv/many/d{:04}/f{i:05}, content: \"{}\", mode: \"0640\"}}\n",
            i % dirs,
            content(i)
        ));
    }
    y.push_str("groups:\n  all: {roles: [r]}\n");
    y
}

fn apply(spec: &Path, root: &Path, state: &Path) -> Command {
    apply_with(Command::new(agent()), spec, root, state)
}

fn apply_with(mut c: Command, spec: &Path, root: &Path, state: &Path) -> Command {
    c.args(["apply", "--quiet", "--name", "n1", "-f"])
        .arg(spec)
        .arg("--root")
        .arg(root)
        .arg("--state-dir")
        .arg(state)
        .stdin(Stdio::null());
    c
}

/// Every file under `dir` (recursively), relative names.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.symlink_metadata().unwrap().is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn temp_files(root: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    walk(root, &mut all);
    all.into_iter()
        .filter(|p| ballast_agent::host::is_temp_name(&p.file_name().unwrap().to_string_lossy()))
        .collect()
}

#[test]
fn a_first_run_over_20000_files_fits_in_1024_descriptors() {
    let work = tempfile::tempdir().unwrap();
    let (root, state) = (work.path().join("root"), work.path().join("state"));
    std::fs::create_dir_all(&root).unwrap();
    let yaml = work.path().join("site.yaml");
    // More directories than the agent keeps open, and far more files.
    std::fs::write(&yaml, spec(400, 20_000, &|i| format!("v{i}"))).unwrap();
    // Soft and hard limit 1024: raising the soft limit cannot help.
    let mut limited = Command::new("prlimit");
    limited.args(["--nofile=1024:1024", "--"]).arg(agent());
    let out = apply_with(limited, &yaml, &root, &state).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", &text[..text.len().min(2000)]);
    assert!(text.contains("0 failed"), "{text}");
    assert_eq!(
        std::fs::read_to_string(root.join("srv/many/d0399/f19999")).unwrap(),
        "v19999"
    );
    assert!(temp_files(&root).is_empty());
}

/// SIGKILL during runs over 2,000 files, at delays spread over a whole run
/// (measured first: a debug build takes about a second where a release
/// build takes 100 ms), so kills land in staging, backups, the syncfs and the
/// renames in turn. After each kill every file holds its old or its new
/// content; after a clean run no temp file is left.
#[test]
fn a_killed_agent_leaves_old_or_new_content_and_no_temp_files() {
    const FILES: usize = 2000;
    const ROUNDS: usize = 24;
    let work = tempfile::tempdir().unwrap();
    let (root, state) = (work.path().join("root"), work.path().join("state"));
    std::fs::create_dir_all(&root).unwrap();
    // Old and new differ in length and in every byte.
    let old = |i: usize| format!("old {i}");
    let new = |i: usize| format!("new content of file {i}, longer than the old one");
    let (old_spec, new_spec) = (work.path().join("old.yaml"), work.path().join("new.yaml"));
    std::fs::write(&old_spec, spec(20, FILES, &old)).unwrap();
    std::fs::write(&new_spec, spec(20, FILES, &new)).unwrap();
    let file = |i: usize| root.join(format!("srv/many/d{:04}/f{i:05}", i % 20));
    let count_new = |round: usize, delay: Duration| {
        let mut newer = 0;
        for i in 0..FILES {
            let got = std::fs::read_to_string(file(i)).unwrap();
            assert!(
                got == old(i) || got == new(i),
                "round {round} (killed after {delay:?}): file {i} holds {got:?}"
            );
            newer += usize::from(got == new(i));
        }
        newer
    };
    assert!(apply(&old_spec, &root, &state).status().unwrap().success());
    // How long a run that replaces every file takes here.
    let mut full = Duration::MAX;
    for s in [&new_spec, &old_spec, &new_spec, &old_spec] {
        let t = Instant::now();
        assert!(apply(s, &root, &state).status().unwrap().success());
        full = full.min(t.elapsed());
    }
    let started = Instant::now();
    let (mut killed, mut changed, mut unchanged) = (0, 0, 0);
    let mut before = 0;
    for round in 0..ROUNDS {
        // Always towards the other content, so that every run has work.
        let target = if before < FILES / 2 {
            &new_spec
        } else {
            &old_spec
        };
        // Spread over 10 ms .. 1.6 runs, with jitter.
        let mut b = [0u8; 2];
        getrandom::fill(&mut b).unwrap();
        let step = full.mul_f64(1.6) / ROUNDS as u32;
        let delay = Duration::from_millis(10)
            + step * round as u32
            + step.mul_f64(f64::from(u16::from_le_bytes(b)) / 65536.0);
        let mut child = apply(target, &root, &state)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let after = count_new(round, delay);
        if after == before {
            unchanged += 1;
        } else {
            changed += 1;
        }
        eprintln!(
            "round {round}: stopped after {delay:?} ({}), {after} of {FILES} files new{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .map(|l| format!("; {l}"))
                .unwrap_or_default()
        );
        before = after;
    }
    assert!(
        killed >= ROUNDS / 4 && changed > 0 && unchanged > 0,
        "kills must land before and after the renames: {killed} of {ROUNDS} killed, \
         {changed} rounds changed files, {unchanged} changed none (a run takes {full:?})"
    );
    let out = apply(&new_spec, &root, &state).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    for i in 0..FILES {
        assert_eq!(std::fs::read_to_string(file(i)).unwrap(), new(i));
    }
    let left = temp_files(&root);
    assert!(
        left.is_empty(),
        "{} temp files left after a clean run, e.g. {:?}",
        left.len(),
        left.first()
    );
    eprintln!(
        "{ROUNDS} rounds, {killed} killed mid-run, in {:?}",
        started.elapsed()
    );
}
