//! The `Store` contract, one body per rule run against both backends (redb in
//! a temp dir, a real one-member etcd), and etcd's faults: a killed member
//! under a watch, compaction, client certificates, size bounds, and a real
//! `ballast serve --store etcd://...` serving an agent.

use ballast_controller::store::{
    Change, Compare, EtcdOptions, EtcdStore, Followed, Op, RedbStore, Store, StoreError, Watch,
    WatchEvent,
};
use ballast_proto::pb;
use ballast_tests::etcd::EtcdCluster;
use ballast_tests::{ControllerProcess, TestAgent, eventually};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

/// A store under test, with whatever keeps it alive.
struct Fixture {
    store: Arc<dyn Store>,
    _keep: Box<dyn std::any::Any>,
}

fn redb() -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
    Some(Fixture {
        store: Arc::new(store),
        _keep: Box::new(dir),
    })
}

fn etcd() -> Option<Fixture> {
    let cluster = EtcdCluster::start(1)?;
    let store = cluster.store("/test/");
    Some(Fixture {
        store: Arc::new(store),
        _keep: Box::new(cluster),
    })
}

/// One body, two tests: `$name::redb` and `$name::etcd`.
macro_rules! contract {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redb() {
                if let Some(f) = super::redb() {
                    super::$body(f.store.clone()).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                if let Some(f) = super::etcd() {
                    super::$body(f.store.clone()).await;
                }
            }
        }
    };
}

contract!(
    compare_and_swap_writes_only_when_every_compare_holds,
    cas_body
);
contract!(list_returns_one_prefix_sorted_at_a_revision, list_body);
contract!(concurrent_cas_has_one_winner_per_version, racing_body);
contract!(watch_delivers_each_commit_once_in_order, watch_body);

fn put(k: &str, v: &str) -> Op {
    Op::Put(k.into(), v.as_bytes().to_vec())
}

async fn cas_body(s: Arc<dyn Store>) {
    assert!(
        s.txn(&[Compare::Absent("a".into())], &[put("a", "1")])
            .unwrap()
    );
    let v1 = s.get("a").unwrap().unwrap();
    assert_eq!(v1.value, b"1");
    assert!(v1.version > 0);
    assert!(
        !s.txn(&[Compare::Absent("a".into())], &[put("a", "2")])
            .unwrap(),
        "absent fails"
    );
    assert!(
        !s.txn(
            &[Compare::Version("a".into(), v1.version + 7)],
            &[put("b", "x")]
        )
        .unwrap(),
        "wrong version fails"
    );
    assert!(
        s.get("b").unwrap().is_none(),
        "a failed compare writes nothing"
    );
    assert!(
        s.txn(
            &[Compare::Version("a".into(), v1.version)],
            &[put("a", "2"), Op::Delete("zz".into())]
        )
        .unwrap()
    );
    let v2 = s.get("a").unwrap().unwrap();
    assert!(v2.version > v1.version);
    assert!(
        !s.txn(
            &[Compare::Version("a".into(), v1.version)],
            &[put("a", "3")]
        )
        .unwrap(),
        "the old version no longer matches"
    );
    assert!(s.txn(&[], &[Op::Delete("a".into())]).unwrap());
    assert!(s.get("a").unwrap().is_none());
    assert!(
        s.txn(&[Compare::Absent("a".into())], &[put("a", "again")])
            .unwrap(),
        "a deleted key is absent again"
    );
    // Several compares: all must hold.
    let a = s.get("a").unwrap().unwrap().version;
    assert!(
        !s.txn(
            &[Compare::Version("a".into(), a), Compare::Absent("a".into())],
            &[put("c", "x")]
        )
        .unwrap()
    );
    assert!(s.get("c").unwrap().is_none());
}

async fn list_body(s: Arc<dyn Store>) {
    for k in ["nodes/b", "nodes/a", "nodesx", "node", "revisions/1"] {
        s.txn(&[], &[put(k, k)]).unwrap();
    }
    let listing = s.list_at("nodes/").unwrap();
    let keys: Vec<&str> = listing.entries.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["nodes/a", "nodes/b"]);
    assert_eq!(listing.entries[0].1.value, b"nodes/a");
    let newest = listing
        .entries
        .iter()
        .map(|(_, e)| e.version)
        .max()
        .unwrap();
    assert!(listing.revision >= newest, "{listing:?}");
    assert_eq!(s.list("nodes/").unwrap(), listing.entries);
    // Many keys: more than one page on etcd, still sorted and complete.
    let ops: Vec<Op> = (0..100)
        .map(|i| put(&format!("many/{i:04}"), "v"))
        .collect();
    for chunk in ops.chunks(50) {
        assert!(s.txn(&[], chunk).unwrap());
    }
    for chunk in (100..1100).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|i| put(&format!("many/{i:04}"), "v"))
            .collect();
        assert!(s.txn(&[], &ops).is_ok_and(|ok| ok));
    }
    let many = s.list("many/").unwrap();
    assert_eq!(many.len(), 1100);
    assert!(many.windows(2).all(|w| w[0].0 < w[1].0), "sorted by key");
    assert!(s.list("none/").unwrap().is_empty());
}

async fn racing_body(s: Arc<dyn Store>) {
    const THREADS: usize = 6;
    const ROUNDS: usize = 15;
    s.txn(&[], &[put("counter", "0")]).unwrap();
    // Each thread reads the counter and tries to bump it from the version it
    // read; every win is recorded with the version it replaced.
    let wins: Vec<Vec<u64>> = (0..THREADS)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut won = Vec::new();
                for _ in 0..ROUNDS {
                    let cur = s.get("counter").unwrap().unwrap();
                    let n: u64 = String::from_utf8(cur.value).unwrap().parse().unwrap();
                    let next = (n + 1).to_string();
                    if s.txn(
                        &[Compare::Version("counter".into(), cur.version)],
                        &[put("counter", &next)],
                    )
                    .unwrap()
                    {
                        won.push(cur.version);
                    }
                }
                won
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let mut all: Vec<u64> = wins.into_iter().flatten().collect();
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), total, "exactly one winner per version");
    let end: u64 = String::from_utf8(s.get("counter").unwrap().unwrap().value)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(end as usize, total, "every win counted once, none lost");
    assert!(
        total >= ROUNDS,
        "at least one thread won each of its rounds"
    );
    // And token-style creation: one of many creators wins.
    let winners: usize = (0..8)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || {
                s.txn(
                    &[Compare::Absent("token".into())],
                    &[Op::Put("token".into(), vec![i])],
                )
                .unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| usize::from(h.join().unwrap()))
        .collect::<Vec<_>>()
        .iter()
        .sum();
    assert_eq!(winners, 1);
}

/// The next `n` events, or fewer if the watch ends or `within` passes.
async fn take(w: &mut Watch, n: usize, within: Duration) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, w.next()).await {
            Ok(Some(e)) => out.push(e),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

fn change(k: &str, v: Option<&str>) -> Change {
    Change {
        key: k.into(),
        value: v.map(|v| v.as_bytes().to_vec()),
    }
}

async fn watch_body(s: Arc<dyn Store>) {
    s.txn(&[], &[put("w/before", "0")]).unwrap();
    let start = s.list_at("w/").unwrap().revision;
    let mut live = s.watch("w/", start + 1).unwrap();
    s.txn(&[], &[put("w/a", "1"), put("other/x", "no")])
        .unwrap();
    s.txn(&[], &[put("other/y", "no")]).unwrap();
    s.txn(&[], &[put("w/b", "2"), Op::Delete("w/before".into())])
        .unwrap();
    s.txn(&[], &[Op::Delete("w/absent".into())]).unwrap();
    s.txn(&[], &[Op::Delete("w/a".into())]).unwrap();
    let got = take(&mut live, 3, Duration::from_secs(10)).await;
    let changes: Vec<Vec<Change>> = got
        .iter()
        .map(|e| match e {
            WatchEvent::Changes { changes, .. } => changes.clone(),
            WatchEvent::Relist => panic!("no relist expected: {got:?}"),
        })
        .collect();
    assert_eq!(
        changes,
        [
            vec![change("w/a", Some("1"))],
            vec![change("w/b", Some("2")), change("w/before", None)],
            vec![change("w/a", None)],
        ]
    );
    let revs: Vec<u64> = got
        .iter()
        .map(|e| match e {
            WatchEvent::Changes { revision, .. } => *revision,
            WatchEvent::Relist => 0,
        })
        .collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
    assert_eq!(
        s.get("w/b").unwrap().unwrap().version,
        revs[1],
        "an event's revision is its keys' version"
    );
    // Nothing more, nothing repeated.
    assert!(
        take(&mut live, 1, Duration::from_millis(300))
            .await
            .is_empty()
    );
    // A watch that starts behind replays from its revision.
    let mut late = s.watch("w/", revs[1]).unwrap();
    assert_eq!(take(&mut late, 2, Duration::from_secs(10)).await, got[1..]);
}

/// Applies what a follower yields to a map; returns how many resets came.
fn apply_followed(
    state: &mut std::collections::BTreeMap<String, Vec<u8>>,
    item: Followed,
) -> usize {
    match item {
        Followed::Reset(listing) => {
            *state = listing
                .entries
                .into_iter()
                .map(|(k, e)| (k, e.value))
                .collect();
            1
        }
        Followed::Changes { changes, .. } => {
            for c in changes {
                match c.value {
                    Some(v) => state.insert(c.key, v),
                    None => state.remove(&c.key),
                };
            }
            0
        }
    }
}

/// A follower that stops reading while `commits` writes happen, then reads
/// until its state is the store's; returns how many resets it saw.
async fn slow_follower_body(s: Arc<dyn Store>, commits: usize) -> usize {
    s.txn(&[], &[put("f/first", "1")]).unwrap();
    let mut f = Box::pin(ballast_controller::store::follow(s.clone(), "f/".into()));
    let mut state = Default::default();
    let mut resets = apply_followed(&mut state, f.next().await.unwrap());
    assert_eq!(resets, 1, "a reset comes first");
    let writer = s.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..commits {
            let k = format!("f/{i:05}");
            writer.txn(&[], &[put(&k, "v")]).unwrap();
            if i % 3 == 0 {
                writer.txn(&[], &[Op::Delete(k)]).unwrap();
            }
        }
    })
    .await
    .unwrap();
    let want: std::collections::BTreeMap<String, Vec<u8>> = s
        .list("f/")
        .unwrap()
        .into_iter()
        .map(|(k, e)| (k, e.value))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while state != want {
        let item = tokio::time::timeout_at(deadline, f.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the follower did not catch up: {} of {} keys",
                    state.len(),
                    want.len()
                )
            })
            .expect("the follower goes on");
        resets += apply_followed(&mut state, item);
    }
    resets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_fell_behind_relists_and_ends_with_the_stores_state_redb() {
    let f = redb().unwrap();
    // More commits than the redb broadcast holds: the follower must relist.
    let resets = slow_follower_body(f.store.clone(), 1100).await;
    assert!(
        resets >= 2,
        "the lagging follower relisted: {resets} resets"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_follower_ends_with_the_stores_state_etcd() {
    let Some(f) = etcd() else {
        return;
    };
    slow_follower_body(f.store.clone(), 300).await;
}

// ---- etcd only ----

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
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
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
    assert!(written.len() > 50, "too few writes to mean anything");
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
async fn a_full_etcd_refuses_writes_clearly_and_keeps_reads() {
    // A 4 MiB quota: etcd raises its NOSPACE alarm after a few writes.
    let Some(cluster) = EtcdCluster::start_with(1, false, &["--quota-backend-bytes", "4194304"])
    else {
        return;
    };
    let s = cluster.store("/fleet/");
    let value = vec![b'v'; 1 << 20];
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..64 {
        let key = format!("k/{i:02}");
        match s.txn(&[], &[Op::Put(key.clone(), value.clone())]) {
            Ok(_) => acked.push(key),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("a full etcd refuses writes");
    assert!(matches!(refused, StoreError::Full(_)), "{refused}");
    assert!(
        refused.to_string().contains("etcdctl alarm disarm"),
        "says what to do: {refused}"
    );
    // Reads go on and see every acknowledged write.
    let keys: Vec<String> = s.list("k/").unwrap().into_iter().map(|(k, _)| k).collect();
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
    let mut admin = ctl.admin().await.unwrap();
    admin
        .apply(pb::ApplyRequest {
            sources: vec![pb::SourceFile {
                name: "spec.yaml".into(),
                content: SPEC.into(),
            }],
            author: "test".into(),
            message: String::new(),
        })
        .await
        .expect("apply");
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
