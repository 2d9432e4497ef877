//! Fleet unit tests over a real redb store (wrapped where a test needs a
//! bound another backend has).

use super::records::{NodeRecord, PendingRecord};
use super::*;
use crate::store::{Followed, Leadership, Listing, RedbStore, StoreError, Watch};

#[test]
fn open_deletes_many_expired_reservations_in_bounded_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let redb = RedbStore::open(&dir.path().join("s.redb")).unwrap();
    let ops: Vec<Op> = (0..300)
        .map(|i| {
            let rec = PendingRecord {
                name: format!("n{i}"),
                labels: Labels::new(),
                timeline: Vec::new(),
                expires_at_ms: 1,
            };
            Op::Put(keys::pending(&rec.name), to_json(&rec))
        })
        .collect();
    for chunk in ops.chunks(100) {
        assert!(redb.txn(&[], chunk).unwrap());
    }
    let counts = Arc::new(CountedWrites::default());
    let store = Arc::new(Counting {
        inner: redb,
        counts: counts.clone(),
    });
    Fleet::open(
        store.clone(),
        Duration::from_secs(60),
        Liveness::default(),
        Clock::System,
    )
    .expect("open with 300 expired");
    assert!(counts.largest.load(std::sync::atomic::Ordering::SeqCst) <= MAX_TXN_OPS);
    assert!(store.list(keys::PENDING).unwrap().is_empty());
}

fn record(name: &str, serial: &str, revoked: bool) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        labels: Labels::new(),
        cert_serial: serial.into(),
        enrolled_at_ms: 1,
        revoked,
        timeline: Vec::new(),
        last_seen_ms: 0,
    }
}

#[test]
fn a_node_record_older_than_memory_never_undoes_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
    let fleet = Fleet::open(
        store,
        Duration::from_secs(60),
        Liveness::default(),
        Clock::System,
    )
    .unwrap();
    // Enrolled at version 5, then revoked at version 9 (say, by another controller).
    fleet.apply_node_record(record("n1", "aa", false), 5);
    let feed = fleet.subscribe("n1").unwrap();
    fleet.apply_node_record(record("n1", "aa", true), 9);
    assert!(matches!(*feed.borrow(), Feed::Revoked));
    // The watch delivers the enrollment late: it must not un-revoke the node.
    fleet.apply_node_record(record("n1", "aa", false), 5);
    assert!(fleet.check_node("n1", "aa").is_err());
    assert!(matches!(*feed.borrow(), Feed::Revoked));
    // A new serial (re-enrollment) at a newer version starts a fresh node.
    fleet.apply_node_record(record("n1", "bb", false), 12);
    assert!(fleet.check_node("n1", "bb").is_ok());
    assert!(
        feed.has_changed().is_err(),
        "the old feed ended with the old node"
    );
}

/// What a [`Counting`] store saw: transactions and leased writes (which
/// redb skips; on etcd each is one request), the last leased write, and the
/// largest transaction asked for.
#[derive(Default)]
struct CountedWrites {
    txns: std::sync::atomic::AtomicUsize,
    leased: std::sync::atomic::AtomicUsize,
    last_leased: Mutex<Vec<Op>>,
    largest: std::sync::atomic::AtomicUsize,
}

/// A redb store that counts the writes asked of it and, as etcd does with
/// its default limit, refuses a transaction of more than 128 operations.
struct Counting {
    inner: RedbStore,
    counts: Arc<CountedWrites>,
}

impl Store for Counting {
    fn get(&self, key: &str) -> std::result::Result<Option<crate::store::Entry>, StoreError> {
        self.inner.get(key)
    }
    fn list_at(&self, prefix: &str) -> std::result::Result<Listing, StoreError> {
        self.inner.list_at(prefix)
    }
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> std::result::Result<bool, StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let n = compares.len().max(ops.len());
        self.counts.txns.fetch_add(1, SeqCst);
        self.counts.largest.fetch_max(n, SeqCst);
        if n > 128 {
            return Err(StoreError::TooLarge("too many operations in txn".into()));
        }
        self.inner.txn(compares, ops)
    }
    fn watch(&self, prefix: &str, from: u64) -> std::result::Result<Watch, StoreError> {
        self.inner.watch(prefix, from)
    }
    fn try_lead(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> std::result::Result<Option<Leadership>, StoreError> {
        self.inner.try_lead(key, holder, ttl)
    }
    fn put_leased(&self, ops: &[Op], ttl: Duration) -> std::result::Result<(), StoreError> {
        self.counts
            .leased
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *self.counts.last_leased.lock().unwrap() = ops.to_vec();
        self.inner.put_leased(ops, ttl)
    }
}

fn counted_fleet(clock: Clock) -> (tempfile::TempDir, Arc<Fleet>, Arc<CountedWrites>) {
    let dir = tempfile::tempdir().unwrap();
    let counts = Arc::new(CountedWrites::default());
    let store = Arc::new(Counting {
        inner: RedbStore::open(&dir.path().join("s.redb")).unwrap(),
        counts: counts.clone(),
    });
    let fleet = Fleet::open(store, Duration::from_secs(60), Liveness::default(), clock).unwrap();
    (dir, fleet, counts)
}

#[test]
fn liveness_costs_one_write_per_controller_per_period_not_one_per_heartbeat() {
    use std::sync::atomic::Ordering::SeqCst;
    let (_dir, fleet, counts) = counted_fleet(Clock::System);
    for n in [100, CHUNK_NODES + 500] {
        let names: Vec<String> = (0..n).map(|i| format!("n{n}-{i}")).collect();
        let mut held = Vec::new();
        for name in &names {
            fleet.apply_node_record(record(name, "aa", false), 1);
            held.push(fleet.subscribe(name).unwrap());
        }
        let (txns, leased) = (counts.txns.load(SeqCst), counts.leased.load(SeqCst));
        let periods = 3;
        let mut written = 0;
        for _ in 0..periods {
            for _ in 0..10 {
                for name in &names {
                    fleet.heartbeat(name);
                }
            }
            written = fleet.publish_liveness(written).unwrap();
        }
        let txns = counts.txns.load(SeqCst) - txns;
        let leased = counts.leased.load(SeqCst) - leased;
        let nodes = n;
        println!(
            "{nodes} held nodes, {} heartbeats over {periods} periods: {txns} transactions, \
             {leased} leased writes ({} per period)",
            nodes * 10 * periods,
            leased / periods
        );
        assert_eq!(txns, 0, "heartbeats never write to the store");
        assert_eq!(leased, periods * nodes.div_ceil(CHUNK_NODES));
        drop(held);
    }
    // Holding nothing after holding some: the chunks are deleted once, then
    // nothing is written at all.
    let before = fleet.own_chunks().len();
    assert_eq!(before, 0);
    let written = fleet.publish_liveness(2).unwrap();
    assert_eq!(written, 0);
    assert!(matches!(
        counts.last_leased.lock().unwrap().as_slice(),
        [Op::Delete(_), Op::Delete(_)]
    ));
    let leased = counts.leased.load(SeqCst);
    assert_eq!(fleet.publish_liveness(0).unwrap(), 0);
    assert_eq!(counts.leased.load(SeqCst), leased);
}

#[test]
fn a_peer_holds_a_node_until_its_summary_vanishes_then_it_is_reconnecting() {
    use crate::store::Change;
    use ballast_proto::enums::NodeStatus;
    let clock = Clock::manual();
    let (_dir, fleet, _) = counted_fleet(clock.clone());
    fleet.apply_node_record(record("n1", "aa", false), 1);
    let status = |f: &Fleet| {
        let page = f.list_nodes(&[], 0, "").unwrap();
        let n = &page.nodes[0];
        (NodeStatus::try_from(n.status).unwrap(), n.last_seen_ms)
    };
    clock.advance(Duration::from_secs(600));
    let seen = clock.now_ms();
    let key = keys::controller_chunk("peer", 0);
    let chunk = liveness::Chunk {
        nodes: [("n1".to_owned(), serde_json::from_str("[0,0,0,0]").unwrap())]
            .into_iter()
            .collect(),
    };
    let mut value = serde_json::to_value(&chunk).unwrap();
    value["nodes"]["n1"][0] = seen.into();
    fleet
        .apply_liveness(Followed::Changes {
            revision: 2,
            changes: vec![Change {
                key: key.clone(),
                value: Some(serde_json::to_vec(&value).unwrap()),
            }],
        })
        .unwrap();
    // Held by the peer: fresh, and its (absent) report decides.
    assert_eq!(status(&fleet), (NodeStatus::Converging, seen));
    clock.advance(Duration::from_secs(3));
    // The peer's lease ended: its keys vanish.
    fleet
        .apply_liveness(Followed::Changes {
            revision: 3,
            changes: vec![Change { key, value: None }],
        })
        .unwrap();
    assert_eq!(status(&fleet), (NodeStatus::Reconnecting, seen));
    clock.advance(DEFAULT_RECONNECT_GRACE);
    assert_eq!(status(&fleet), (NodeStatus::Reconnecting, seen));
    clock.advance(Duration::from_millis(1));
    assert_eq!(status(&fleet), (NodeStatus::Stale, seen));
    // It reconnects here: held, so its report decides again.
    let _feed = fleet.subscribe("n1").unwrap();
    assert_eq!(status(&fleet).0, NodeStatus::Converging);
}

#[test]
fn right_after_a_restart_a_node_not_back_yet_is_reconnecting() {
    use ballast_proto::enums::NodeStatus;
    let clock = Clock::manual();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let seen = clock.now_ms();
    {
        let store = RedbStore::open(&path).unwrap();
        let status = records::NodeStatus {
            cert_serial: "aa".into(),
            last_seen_ms: seen,
            reported: true,
            timeline: Vec::new(),
        };
        let ops = [
            Op::Put(keys::node("n1"), to_json(&record("n1", "aa", false))),
            Op::Put(keys::status("n1"), to_json(&status)),
        ];
        assert!(store.txn(&[], &ops).unwrap());
    }
    clock.advance(Duration::from_secs(2));
    let store = Arc::new(RedbStore::open(&path).unwrap());
    let fleet = Fleet::open(
        store,
        Duration::from_secs(60),
        Liveness::default(),
        clock.clone(),
    )
    .unwrap();
    let status = |f: &Fleet| {
        let n = f.list_nodes(&[], 0, "").unwrap().nodes.remove(0);
        (NodeStatus::try_from(n.status).unwrap(), n.last_seen_ms)
    };
    assert_eq!(status(&fleet), (NodeStatus::Reconnecting, seen));
    let _feed = fleet.subscribe("n1").unwrap();
    assert_eq!(status(&fleet).0, NodeStatus::Converging);
}

/// Two controllers on one store: A takes a node's run and dies before its
/// liveness summary carries it. When the node's stream comes to B, B reads
/// the run from the store (a rollout's gate counts it), and keeps A's
/// timeline rather than writing its older one back with the next report.
#[test]
fn a_node_that_moves_here_brings_the_runs_its_last_controller_took() {
    use ballast_proto::enums::Trigger;
    use ballast_proto::limits::CheckedReport;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
    assert!(
        store
            .txn(
                &[],
                &[Op::Put(
                    keys::node("n1"),
                    to_json(&record("n1", "aa", false))
                )]
            )
            .unwrap()
    );
    let open = || {
        Fleet::open(
            store.clone(),
            Duration::from_secs(60),
            Liveness::default(),
            Clock::manual(),
        )
        .unwrap()
    };
    let (a, b) = (open(), open());
    let run = pb::RunReport {
        revision: 7,
        state_hash: "sha256:seven".into(),
        trigger: Trigger::Change.into(),
        ..Default::default()
    };
    a.report("n1", CheckedReport::try_from(run).unwrap())
        .unwrap();
    drop(a);
    let applied = |f: &Fleet| f.list_nodes(&[], 0, "").unwrap().nodes[0].applied_revision;
    assert_eq!(applied(&b), 0, "B has not heard of the run");
    let _feed = b.subscribe("n1").unwrap();
    b.reload_reported("n1").unwrap();
    assert_eq!(applied(&b), 7);
    let inner = b.lock();
    let node = &inner.nodes["n1"];
    assert_eq!(node.report.as_ref().unwrap().hash, "sha256:seven");
    let stages: Vec<_> = node.status.timeline.iter().map(|e| e.stage).collect();
    assert_eq!(
        stages,
        [records::Stage::FirstReport, records::Stage::Converged]
    );
}
