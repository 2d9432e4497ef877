//! Tests of the state dir's layout: names, modes, atomic replacement, and
//! records that are missing or corrupt.

use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// The process umask, read without changing it (tests run in parallel).
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn state_files_keep_their_names_and_modes() {
    let table: Vec<String> = StateFile::ALL
        .iter()
        .map(|f| format!("{:<22} {:o}", f.name(), f.mode()))
        .collect();
    expect_test::expect![[r#"
        agent.json             644
        node.key               600
        node.pem               644
        ca.pem                 644
        desired.json           600
        managed.json           600
        pending-restarts.json  600"#]]
    .assert_eq(&table.join("\n"));
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::create(dir.path().join("a/b")).unwrap();
    assert_eq!(mode(state.path()), 0o700, "the state dir is private");
    for f in StateFile::ALL {
        state.write(f, b"x").unwrap();
        assert_eq!(mode(&state.file(f)), f.mode() & !umask(), "{}", f.name());
    }
    let _run = state.lock(Lock::Run).unwrap();
    assert_eq!(
        mode(&state.path().join("run.lock")),
        0o600 & !umask(),
        "a lock file is the agent's alone"
    );
    let _agent = state.lock(Lock::Agent).unwrap();
    let again = state
        .lock(Lock::Agent)
        .expect_err("one daemon per state dir");
    assert!(format!("{again:#}").contains("agent.lock"), "{again:#}");
}

#[test]
fn a_write_replaces_the_file_whole_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    state.write(StateFile::Managed, b"old").unwrap();
    let before = dir.path().join("before");
    std::fs::hard_link(state.file(StateFile::Managed), &before).unwrap();
    state.write(StateFile::Managed, b"new").unwrap();
    assert_eq!(state.read(StateFile::Managed).unwrap().unwrap(), b"new");
    // A new file was renamed over the old one: a reader of the old one never
    // saw a half-written record.
    assert_eq!(std::fs::read(&before).unwrap(), b"old");
    assert_ne!(
        std::fs::metadata(&before).unwrap().ino(),
        std::fs::metadata(state.file(StateFile::Managed))
            .unwrap()
            .ino()
    );
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
    assert_eq!(
        state.read(StateFile::Desired).unwrap(),
        None,
        "missing is None"
    );
}

#[test]
fn a_corrupt_managed_record_is_taken_as_empty_then_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    let (managed, stored) = state.load_managed();
    assert!(
        managed.resources.is_empty() && stored.is_empty(),
        "none yet"
    );
    std::fs::write(state.file(StateFile::Managed), b"{not json").unwrap();
    let (mut managed, stored) = state.load_managed();
    assert!(
        managed.resources.is_empty(),
        "nothing is removed on its word"
    );
    assert_eq!(stored, b"{not json");
    managed
        .resources
        .insert("group[app]".into(), (Kind::Group, "app".into()));
    state.store_managed(&mut managed, &stored);
    let (again, stored) = state.load_managed();
    assert_eq!(again.format, 1);
    assert_eq!(
        again.resources.get("group[app]"),
        Some(&(Kind::Group, "app".into()))
    );
    // Unchanged: not written again.
    let ino = std::fs::metadata(state.file(StateFile::Managed))
        .unwrap()
        .ino();
    state.store_managed(&mut { again }, &stored);
    assert_eq!(
        std::fs::metadata(state.file(StateFile::Managed))
            .unwrap()
            .ino(),
        ino
    );
}

#[test]
fn pending_restarts_survive_and_a_corrupt_record_owes_none() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    assert!(state.load_pending().is_empty());
    state.store_pending(&["app".to_owned()].into());
    assert_eq!(state.load_pending(), ["app".to_owned()].into());
    std::fs::write(state.file(StateFile::PendingRestarts), b"[1,").unwrap();
    assert!(state.load_pending().is_empty());
}

#[test]
fn an_enrollment_round_trips_and_a_missing_one_says_to_enroll() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    let err = state.load_enrollment().err().expect("not enrolled");
    assert!(
        format!("{err:#}").contains("ballast-agent enroll"),
        "{err:#}"
    );
    let e = Enrollment {
        config: AgentConfig {
            controller: "127.0.0.1:1".into(),
            name: "n1".into(),
            ca_fingerprint: "sha256:00".into(),
        },
        ca_pem: "ca".into(),
        cert_pem: "cert".into(),
        key_pem: "key".into(),
    };
    state.store_enrollment(&e).unwrap();
    let back = state.load_enrollment().unwrap();
    assert_eq!(back.config, e.config);
    assert_eq!(
        (back.ca_pem, back.cert_pem, back.key_pem),
        ("ca".into(), "cert".into(), "key".into())
    );
    assert_eq!(mode(&state.file(StateFile::Key)), 0o600);
}

#[test]
fn orphaned_temp_files_in_the_state_dir_are_removed_once_old() {
    let dir = tempfile::tempdir().unwrap();
    let orphan = dir.path().join(".managed.json.0123456789abcdef.tmp");
    let fresh = dir.path().join(".desired.json.fedcba9876543210.tmp");
    let other = dir.path().join(".managed.json.0123456789ABCDEF.tmp");
    for f in [&orphan, &fresh, &other] {
        std::fs::write(f, "x").unwrap();
    }
    let long_ago = std::time::SystemTime::now() - ORPHAN_AGE * 2;
    for f in [&orphan, &other] {
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
    }
    let state = StateDir::new(dir.path());
    state.write(StateFile::Managed, b"{}").unwrap();
    state.remove_orphans();
    assert!(!orphan.exists(), "an old orphan goes");
    assert!(fresh.exists(), "a write that may be in flight stays");
    assert!(other.exists(), "not our pattern");
    assert!(state.file(StateFile::Managed).exists());
}
