//! Fleet unit tests over a real redb store (wrapped where a test needs a
//! bound another backend has).

use super::records::{NodeRecord, PendingRecord};
use super::*;
use crate::store::{Leadership, Listing, RedbStore, StoreError, Watch};

/// A redb store that refuses a transaction of more than etcd's default 128
/// operations, as etcd does, and remembers the largest one it was asked for.
struct EtcdSizedTxns {
    inner: RedbStore,
    largest: Mutex<usize>,
}

impl Store for EtcdSizedTxns {
    fn get(&self, key: &str) -> std::result::Result<Option<crate::store::Entry>, StoreError> {
        self.inner.get(key)
    }
    fn list_at(&self, prefix: &str) -> std::result::Result<Listing, StoreError> {
        self.inner.list_at(prefix)
    }
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> std::result::Result<bool, StoreError> {
        let n = compares.len().max(ops.len());
        let mut largest = self.largest.lock().unwrap();
        *largest = (*largest).max(n);
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
        self.inner.put_leased(ops, ttl)
    }
}

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
    let store = Arc::new(EtcdSizedTxns {
        inner: redb,
        largest: Mutex::new(0),
    });
    Fleet::open(
        store.clone(),
        Duration::from_secs(60),
        Liveness::default(),
        Clock::System,
    )
    .expect("open with 300 expired");
    assert!(*store.largest.lock().unwrap() <= MAX_TXN_OPS);
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
