//! etcd's faults under the store, with real clusters on loopback: killed and
//! frozen members under watches and writes, compaction, client certificates,
//! prefixes, size and space bounds, leadership and fencing, and a real
//! `ballast serve --store etcd://...` serving an agent.

use crate::store::{change, put, take};
use ballast_controller::store::{
    Compare, EtcdOptions, EtcdStore, Op, Store, StoreError, WatchEvent,
};
use ballast_proto::pb;
use ballast_tests::etcd::EtcdCluster;
use ballast_tests::{ControllerProcess, TestAgent, eventually};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Writes `key` until the store says it is there, through member failures.
fn write_through_faults(s: &EtcdStore, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match s.txn(&[Compare::Absent(key.into())], &[put(key, key)]) {
            // Ok(false): an earlier attempt that reported an error did commit.
            Ok(_) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "write {key}: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Writes made across the member kills, at the least.
const MIN_WRITES: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_resumes_after_its_member_is_killed() {
    let Some(mut cluster) = EtcdCluster::start(3) else {
        return;
    };
    let started = Instant::now();
    let watcher = cluster.store("/fleet/");
    let from = watcher.list_at("k/").unwrap().revision + 1;
    let mut w = watcher.watch("k/", from).unwrap();
    let writer = Arc::new(cluster.store("/fleet/"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = {
        let (writer, stop) = (writer.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut written = Vec::new();
            for i in 0.. {
                // At least MIN_WRITES, however slow the machine: a count
                // that depended on time made the check below flaky.
                if stop.load(std::sync::atomic::Ordering::SeqCst) && written.len() >= MIN_WRITES {
                    break;
                }
                let key = format!("k/{i:05}");
                write_through_faults(&writer, &key);
                written.push(key);
                std::thread::sleep(Duration::from_millis(10));
            }
            written
        })
    };
    // Kill each member in turn: one of them holds the watch.
    for i in 0..cluster.len() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.kill(i);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let c = &mut cluster;
        tokio::task::block_in_place(|| c.restart(i));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = tokio::task::spawn_blocking(move || writing.join().unwrap())
        .await
        .unwrap();
    let events = take(&mut w, written.len(), Duration::from_secs(20)).await;
    let mut seen = Vec::new();
    let mut last = 0;
    for e in &events {
        let WatchEvent::Changes { revision, changes } = e else {
            panic!("no relist expected: {e:?}");
        };
        assert!(*revision > last, "revisions grow: {last} then {revision}");
        last = *revision;
        seen.extend(changes.iter().map(|c| c.key.clone()));
    }
    eprintln!(
        "{} writes, 3 member kills, watched in {:?}",
        written.len(),
        started.elapsed()
    );
    let first_difference = seen.iter().zip(&written).position(|(a, b)| a != b);
    assert!(
        seen == written,
        "every write seen once, in order: {} seen, {} written, first difference at {first_difference:?}, last seen {:?}",
        seen.len(),
        written.len(),
        seen.last()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_reads_and_writes_go_on_while_one_member_is_down() {
    let Some(mut cluster) = EtcdCluster::start(3) else {
        return;
    };
    let s = cluster.store("/fleet/");
    s.txn(&[], &[put("a", "1")]).unwrap();
    cluster.kill(0);
    // The client starts on the first member. A write in flight on its open
    // connection may fail (it might have been applied: not retried); after
    // that every request goes to a live member.
    let mut failed = Vec::new();
    for i in 0..60 {
        let key = format!("k/{i}");
        match s.txn(&[Compare::Absent(key.clone())], &[put(&key, "v")]) {
            Ok(done) => assert!(done, "{key} was absent"),
            Err(e) => failed.push(format!("write {i}: {e}")),
        }
        assert_eq!(
            s.get("a")
                .unwrap_or_else(|e| panic!("read {i} with one member down: {e}"))
                .unwrap()
                .value,
            b"1"
        );
    }
    assert!(failed.len() <= 1, "{failed:#?}");
    assert!(s.list("k/").unwrap().len() >= 59);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_moves_on_from_a_frozen_member() {
    let Some(cluster) = EtcdCluster::start(3) else {
        return;
    };
    let watcher = cluster.store("/fleet/");
    let writer = cluster.store("/fleet/");
    let from = watcher.list_at("k/").unwrap().revision + 1;
    let mut w = watcher.watch("k/", from).unwrap();
    write_through_faults(&writer, "k/before");
    assert_eq!(take(&mut w, 1, Duration::from_secs(10)).await.len(), 1);
    // Both clients start on the first member: freeze it. Its connections
    // stay open and silent; keepalive must notice.
    cluster.signal(0, nix::sys::signal::Signal::SIGSTOP);
    let frozen = Instant::now();
    let written = tokio::task::spawn_blocking(move || {
        let keys: Vec<String> = (0..5).map(|i| format!("k/after-{i}")).collect();
        for k in &keys {
            write_through_faults(&writer, k);
        }
        keys
    })
    .await
    .unwrap();
    let events = take(&mut w, written.len(), Duration::from_secs(30)).await;
    let resumed = frozen.elapsed();
    cluster.signal(0, nix::sys::signal::Signal::SIGCONT);
    let seen: Vec<String> = events
        .iter()
        .flat_map(|e| match e {
            WatchEvent::Changes { changes, .. } => changes.iter().map(|c| c.key.clone()).collect(),
            WatchEvent::Relist => vec!["<relist>".to_owned()],
        })
        .collect();
    eprintln!("the watch resumed {resumed:?} after its member froze");
    assert_eq!(seen, written, "every write seen once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_lists_past_the_response_bound_in_smaller_pages() {
    let Some(cluster) = EtcdCluster::start(1) else {
        return;
    };
    let s = cluster.store("/fleet/");
    // 20 values of 1 MiB: a first page of 512 keys would pass 16 MiB.
    let value = vec![b'v'; 1 << 20];
    for i in 0..20 {
        assert!(
            s.txn(&[], &[Op::Put(format!("big/{i:02}"), value.clone())])
                .unwrap()
        );
    }
    let listing = s.list_at("big/").unwrap();
    assert_eq!(listing.entries.len(), 20);
    assert!(listing.entries.iter().all(|(_, e)| e.value == value));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_compaction_makes_a_watch_relist() {
    let Some(cluster) = EtcdCluster::start(1) else {
        return;
    };
    let s = cluster.store("/fleet/");
    s.txn(&[], &[put("k/0", "0")]).unwrap();
    let old = s.get("k/0").unwrap().unwrap().version;
    for i in 1..5 {
        s.txn(&[], &[put(&format!("k/{i}"), "v")]).unwrap();
    }
    let now = s.list_at("k/").unwrap().revision;
    let out = cluster.etcdctl(&["compact", &now.to_string()]);
    assert!(out.status.success(), "{out:?}");
    // History from before the compaction is gone: relist, and the watch ends.
    let mut w = s.watch("k/", old + 1).unwrap();
    let got = take(&mut w, 2, Duration::from_secs(10)).await;
    assert_eq!(got, [WatchEvent::Relist]);
    // The consumer relists and watches on from there.
    let listing = s.list_at("k/").unwrap();
    assert_eq!(listing.entries.len(), 5);
    let mut w = s.watch("k/", listing.revision + 1).unwrap();
    s.txn(&[], &[put("k/5", "new")]).unwrap();
    let got = take(&mut w, 1, Duration::from_secs(10)).await;
    assert!(
        matches!(&got[..], [WatchEvent::Changes { changes, .. }] if changes == &[change("k/5", Some("new"))]),
        "{got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_certificates_are_required_and_accepted() {
    let Some(cluster) = EtcdCluster::start_tls(1) else {
        return;
    };
    let s = cluster.store("/fleet/");
    assert!(s.txn(&[], &[put("k", "v")]).unwrap());
    assert_eq!(s.get("k").unwrap().unwrap().value, b"v");
    // Without a client certificate the members refuse.
    let mut opts = cluster.options("/fleet/");
    opts.tls.as_mut().unwrap().cert = None;
    opts.tls.as_mut().unwrap().key = None;
    let err = tokio::task::spawn_blocking(move || EtcdStore::connect(&opts).err())
        .await
        .unwrap()
        .expect("no client certificate is refused");
    assert!(
        err.to_string().contains(&cluster.endpoints()[0]),
        "the error names the endpoint: {err}"
    );
    // A certificate from another CA is refused too.
    let other = tempfile::tempdir().unwrap();
    let stranger = ballast_tests::etcd::EtcdPki::generate(other.path());
    let mut opts = cluster.options("/fleet/");
    let tls = opts.tls.as_mut().unwrap();
    tls.cert = Some(stranger.client_cert.clone());
    tls.key = Some(stranger.client_key.clone());
    let refused = tokio::task::spawn_blocking(move || EtcdStore::connect(&opts).err())
        .await
        .unwrap();
    assert!(refused.is_some(), "a stranger's certificate is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_prefixes_keep_fleets_apart() {
    let Some(cluster) = EtcdCluster::start(1) else {
        return;
    };
    let (eu, us) = (cluster.store("/eu/"), cluster.store("/us/"));
    eu.txn(&[], &[put("nodes/a", "eu")]).unwrap();
    assert!(us.get("nodes/a").unwrap().is_none());
    assert!(us.list("").unwrap().is_empty());
    assert!(
        us.txn(
            &[Compare::Absent("nodes/a".into())],
            &[put("nodes/a", "us")]
        )
        .unwrap()
    );
    assert_eq!(eu.get("nodes/a").unwrap().unwrap().value, b"eu");
    let out = cluster.etcdctl(&["get", "--prefix", "/", "--keys-only"]);
    let keys = String::from_utf8_lossy(&out.stdout);
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys, ["/eu/nodes/a", "/us/nodes/a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_size_bounds_are_refused_clearly() {
    let Some(cluster) = EtcdCluster::start(1) else {
        return;
    };
    let s = cluster.store("/fleet/");
    for size in [1_800_000, 3 << 20] {
        let err = s
            .txn(&[], &[Op::Put("big".into(), vec![b'x'; size])])
            .unwrap_err();
        assert!(matches!(err, StoreError::TooLarge(_)), "{size}: {err}");
    }
    let ops: Vec<Op> = (0..200).map(|i| put(&format!("op/{i}"), "v")).collect();
    let err = s.txn(&[], &ops).unwrap_err();
    assert!(matches!(err, StoreError::TooLarge(_)), "{err}");
    assert!(s.list("").unwrap().is_empty(), "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_etcd_refuses_writes_clearly_and_never_stores_a_refused_one() {
    // A 4 MiB quota: etcd raises its NOSPACE alarm after a few writes.
    let Some(cluster) = EtcdCluster::start_with(1, false, &["--quota-backend-bytes", "4194304"])
    else {
        return;
    };
    let s = Arc::new(cluster.store("/fleet/"));
    // Writers in parallel keep several writes between etcd's two quota
    // checks (before proposing, and while applying) when the quota is
    // crossed: the one that crosses it at apply is made and still answered
    // NOSPACE. Every write answered `Full` must be absent, every
    // acknowledged one present.
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let s = s.clone();
            std::thread::spawn(move || {
                let value = vec![b'v'; 256 << 10];
                let mut acked = Vec::new();
                for i in 0..64 {
                    let key = format!("k/{w}/{i:02}");
                    match s.txn(&[], &[Op::Put(key.clone(), value.clone())]) {
                        Ok(_) => acked.push(key),
                        Err(e) => return (acked, Some((key, e))),
                    }
                }
                (acked, None)
            })
        })
        .collect();
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    for w in writers {
        let (a, r) = w.join().unwrap();
        acked.extend(a);
        refused.push(r.expect("a full etcd refuses writes"));
    }
    for (key, e) in &refused {
        assert!(matches!(e, StoreError::Full(_)), "{key}: {e}");
        assert!(
            e.to_string().contains("etcdctl alarm disarm"),
            "says what to do: {e}"
        );
    }
    // Reads go on and see every acknowledged write, and nothing refused.
    let keys: Vec<String> = s.list("k/").unwrap().into_iter().map(|(k, _)| k).collect();
    acked.sort();
    assert_eq!(keys, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_is_an_error_naming_the_endpoints() {
    let port = ballast_tests::free_port();
    let opts = EtcdOptions::from_url(&format!("etcd://127.0.0.1:{port}")).unwrap();
    let err = tokio::task::spawn_blocking(move || EtcdStore::connect(&opts).err())
        .await
        .unwrap()
        .expect("nothing listens there");
    assert!(matches!(err, StoreError::Engine(_)), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

const SPEC: &str = r#"
roles:
  base:
    directories: [{path: /etc/app, mode: "0755"}]
    files: [{path: /etc/app/a.conf, content: "on etcd\n", mode: "0644"}]
groups:
  all:
    roles: [base]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_on_etcd_serves_an_agent_end_to_end() {
    let Some(cluster) = EtcdCluster::start(3) else {
        return;
    };
    let url = cluster.url();
    let mut ctl = ControllerProcess::start_with_args("", &["--store", &url]).await;
    let token = ctl.token().await;
    let mut agent = TestAgent::enroll_at(&ctl.controller(), &ctl.fingerprint, &token, "n1").await;
    agent.start(Duration::from_secs(1));
    ctl.apply(SPEC).await.expect("apply");
    let read = |a: &TestAgent| std::fs::read_to_string(a.path("/etc/app/a.conf")).ok();
    eventually(Duration::from_secs(20), "the agent converges", || {
        read(&agent).as_deref() == Some("on etcd\n")
    })
    .await;
    // The fleet lives in etcd, not in a redb file.
    assert!(!ctl.data_dir().join("ballast.redb").exists());
    let out = cluster.etcdctl(&["get", "--prefix", "/ballast/", "--keys-only"]);
    let keys = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(keys.contains("/ballast/nodes/n1"), "{keys}");
    // A restarted controller finds the node and the revision in etcd.
    ctl.restart().await;
    let nodes = ctl
        .admin()
        .await
        .unwrap()
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        format!("{nodes:?}").contains("\"n1\""),
        "the node survives a restart: {nodes:?}"
    );
    agent.stop().await;
    ctl.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_reaches_etcd_with_client_certificates_from_its_config_file() {
    let Some(cluster) = EtcdCluster::start_tls(1) else {
        return;
    };
    let pki = cluster.pki();
    let config = format!(
        "store: {}\nstore_prefix: /tls-fleet/\netcd_ca: {}\netcd_cert: {}\netcd_key: {}\n",
        cluster.url(),
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let mut ctl = ControllerProcess::start(&config).await;
    let _token = ctl.token().await;
    let out = cluster.etcdctl(&["get", "--prefix", "/tls-fleet/", "--keys-only"]);
    let keys = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(keys.contains("/tls-fleet/tokens/"), "{keys}");
    ctl.kill();
}

#[test]
fn serve_names_the_etcd_endpoints_it_cannot_reach() {
    let dir = tempfile::tempdir().unwrap();
    let port = ballast_tests::free_port();
    let started = Instant::now();
    let out = std::process::Command::new(ballast_tests::controller_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--store", &format!("etcd://127.0.0.1:{port}")])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("etcd at 127.0.0.1:{port} is unreachable")),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // TLS flags without an etcd store are refused before anything starts.
    let out = std::process::Command::new(ballast_tests::controller_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--etcd-ca", "/nonexistent/ca.pem"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("add --store etcd://"), "{stderr}");
}

/// Every lease id etcd holds, as etcdctl prints them (hex).
fn leases(cluster: &EtcdCluster) -> Vec<String> {
    let out = cluster.etcdctl(&["lease", "list"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_has_one_leader_and_a_deposed_leaders_writes_are_fenced() {
    let Some(cluster) = EtcdCluster::start(1) else {
        return;
    };
    let (a, b) = (cluster.store("/fleet/"), cluster.store("/fleet/"));
    let ttl = Duration::from_secs(2);
    let mut la = a
        .try_lead("leader/jobs", "a", ttl)
        .unwrap()
        .expect("a leads");
    assert!(b.try_lead("leader/jobs", "b", ttl).unwrap().is_none());
    assert!(
        a.txn(&[la.fence()], &[put("jobs/compacted", "by a")])
            .unwrap()
    );
    // a is deposed without noticing (its key is gone, its lease lives on):
    // b takes over, and a's fenced writes are refused.
    let out = cluster.etcdctl(&["del", "/fleet/leader/jobs"]);
    assert!(out.status.success(), "{out:?}");
    let mut lb = b
        .try_lead("leader/jobs", "b", ttl)
        .unwrap()
        .expect("b leads once the key is free");
    assert!(la.is_held(), "a has not noticed");
    assert!(
        !a.txn(&[la.fence()], &[put("jobs/compacted", "by a again")])
            .unwrap(),
        "a deposed leader cannot write"
    );
    assert!(
        b.txn(&[lb.fence()], &[put("jobs/compacted", "by b")])
            .unwrap()
    );
    assert_eq!(a.get("jobs/compacted").unwrap().unwrap().value, b"by b");
    // When etcd drops the leases, both holders hear of it within the TTL.
    let ids = leases(&cluster);
    assert_eq!(ids.len(), 2, "{ids:?}");
    for id in &ids {
        let out = cluster.etcdctl(&["lease", "revoke", id]);
        assert!(out.status.success(), "{out:?}");
    }
    for l in [&mut la, &mut lb] {
        tokio::time::timeout(ttl * 2, l.lost())
            .await
            .expect("leadership loss is noticed within the TTL");
        assert!(!l.is_held());
    }
    // Dropping a leadership resigns: the key is free at once.
    let lc = b.try_lead("leader/jobs", "b", ttl).unwrap().expect("free");
    drop(lc);
    eventually(Duration::from_secs(5), "resigning frees the key", || {
        a.get("leader/jobs").unwrap().is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leadership_outlives_the_member_it_was_renewed_on() {
    let Some(mut cluster) = EtcdCluster::start(3) else {
        return;
    };
    let (a, b) = (cluster.store("/fleet/"), cluster.store("/fleet/"));
    // Longer than an etcd election (about 1.3 s here) plus a renewal period:
    // if the killed member led etcd, renewals wait for the next leader.
    let ttl = Duration::from_secs(5);
    let la = a
        .try_lead("leader/jobs", "a", ttl)
        .unwrap()
        .expect("a leads");
    // Both clients start on the first member: kill it, and wait for twice
    // the TTL. Only renewals through another member keep it.
    cluster.kill(0);
    tokio::time::sleep(ttl * 2).await;
    assert!(la.is_held(), "the keep-alive moved to a live member");
    assert!(
        b.try_lead("leader/jobs", "b", ttl).unwrap().is_none(),
        "etcd still holds a's lease"
    );
    assert!(a.txn(&[la.fence()], &[put("jobs/x", "a")]).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_steps_down_within_the_ttl() {
    let Some(cluster) = EtcdCluster::start(1) else {
        return;
    };
    let a = cluster.store("/fleet/");
    let ttl = Duration::from_secs(2);
    let mut la = a
        .try_lead("leader/jobs", "a", ttl)
        .unwrap()
        .expect("a leads");
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.signal(0, nix::sys::signal::Signal::SIGSTOP);
    let frozen = Instant::now();
    let stepped_down = tokio::time::timeout(ttl * 3, la.lost()).await;
    let after = frozen.elapsed();
    cluster.signal(0, nix::sys::signal::Signal::SIGCONT);
    stepped_down.expect("a leader that cannot renew steps down");
    eprintln!("stepped down {after:?} after etcd froze (TTL {ttl:?})");
    // It counts from the last renewal sent, so never later than etcd would
    // expire the lease; the slack is for a loaded machine.
    assert!(after <= ttl + Duration::from_secs(1), "{after:?}");
}

/// The leader's compaction job: the store keeps the newest `keep` revisions
/// and drops older history, so a watch from before it relists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_compaction_keeps_the_newest_revisions() {
    let Some(cluster) = EtcdCluster::start(1) else {
        return;
    };
    let s = cluster.store("/fleet/");
    for i in 0..20 {
        s.txn(&[], &[put(&format!("c/{i}"), "v")]).unwrap();
    }
    let now = s.list_at("c/").unwrap().revision;
    assert_eq!(s.compact(now + 5).unwrap(), 0, "nothing to drop yet");
    let to = s.compact(5).unwrap();
    assert_eq!(to, now - 5);
    assert_eq!(
        s.compact(5).unwrap(),
        to,
        "compacting again is not an error"
    );
    // Within the kept window a watch resumes; before it, it relists.
    let mut w = s.watch("c/", to + 1).unwrap();
    let got = take(&mut w, 1, Duration::from_secs(10)).await;
    assert!(matches!(&got[..], [WatchEvent::Changes { .. }]), "{got:?}");
    let mut w = s.watch("c/", to - 3).unwrap();
    let got = take(&mut w, 1, Duration::from_secs(10)).await;
    assert_eq!(got, [WatchEvent::Relist]);
}

/// A node's watch is served from the controller's memory: a frozen store
/// (SIGSTOP, so reads hang until they time out) does not hold up the first
/// desired state of a node that connects. Reading the node's runs back
/// from the store (they may come from a dead controller) happens beside
/// the stream, a few nodes at a time, not before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_store_does_not_hold_up_a_connecting_nodes_watch() {
    let Some(cluster) = EtcdCluster::start(1) else {
        return;
    };
    let url = cluster.url();
    let ctl = ControllerProcess::start_with_args("", &["--store", &url]).await;
    let token = ctl.token().await;
    let agent = TestAgent::enroll_at(&ctl.controller(), &ctl.fingerprint, &token, "n1").await;
    let applied = ctl.apply(SPEC).await.expect("apply");
    let enrolled = ballast_agent::client::Enrolled::load(agent.state.path()).unwrap();
    let mut client = ballast_agent::client::agent_client(enrolled.channel(None).await.unwrap());
    cluster.signal(0, nix::sys::signal::Signal::SIGSTOP);
    let asked = Instant::now();
    let first = tokio::time::timeout(Duration::from_secs(30), async {
        let mut stream = client
            .watch(pb::WatchRequest::default())
            .await
            .expect("watch")
            .into_inner();
        stream.message().await
    })
    .await;
    let took = asked.elapsed();
    cluster.signal(0, nix::sys::signal::Signal::SIGCONT);
    let first = first
        .expect("an answer")
        .expect("a message")
        .expect("desired state");
    assert_eq!(first.revision, applied.revision);
    // A store read waits out etcd's 10 s request timeout.
    assert!(
        took < Duration::from_secs(5),
        "the watch waited on the frozen store: {took:?}"
    );
}
