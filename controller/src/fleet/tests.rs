//! Fleet unit tests over a real redb store (wrapped where a test needs a
//! bound another backend has).

use super::records::PendingRecord;
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
    Fleet::open(store.clone(), Duration::from_secs(60)).expect("open with 300 expired");
    assert!(*store.largest.lock().unwrap() <= MAX_TXN_OPS);
    assert!(store.list(keys::PENDING).unwrap().is_empty());
}
