//! The `Store` contract, one body per rule run against both backends (redb in
//! a temp dir, a real one-member etcd), and `store::follow`. etcd's own
//! faults are in `store_etcd`.

use ballast_controller::store::{
    Change, Compare, Followed, Op, RedbStore, Store, Watch, WatchEvent,
};
use ballast_tests::etcd::EtcdCluster;
use std::sync::Arc;
use std::time::Duration;
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

pub(crate) fn put(k: &str, v: &str) -> Op {
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
pub(crate) async fn take(w: &mut Watch, n: usize, within: Duration) -> Vec<WatchEvent> {
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

pub(crate) fn change(k: &str, v: Option<&str>) -> Change {
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
