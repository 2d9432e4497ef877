//! The only module that knows the storage engine: a small etcd-shaped `Store`
//! trait (get, list by prefix, compare-and-swap transactions) and its redb backend.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

/// A stored value and the store revision of its last modification (> 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub version: u64,
}

/// A precondition of a transaction.
#[derive(Debug, Clone)]
pub enum Compare {
    Absent(String),
    Version(String, u64),
}

#[derive(Debug, Clone)]
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store engine: {0}")]
    Engine(String),
}

fn engine<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Engine(e.to_string())
}

pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;
    /// Every key starting with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<(String, Entry)>, StoreError>;
    /// Applies `ops` atomically iff every compare holds; `Ok(false)` when one
    /// does not (nothing written). `Ok(true)` only once the commit is durable.
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<bool, StoreError>;
}

/// key → (version, value)
const KV: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("kv");
/// "revision" → the store revision counter
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let db = Database::create(path).map_err(engine)?;
        let tx = db.begin_write().map_err(engine)?;
        tx.open_table(KV).map_err(engine)?;
        tx.open_table(META).map_err(engine)?;
        tx.commit().map_err(engine)?;
        Ok(RedbStore { db })
    }
}

impl Store for RedbStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let tx = self.db.begin_read().map_err(engine)?;
        let table = tx.open_table(KV).map_err(engine)?;
        Ok(table.get(key).map_err(engine)?.map(|v| {
            let (version, value) = v.value();
            Entry {
                value: value.to_vec(),
                version,
            }
        }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, Entry)>, StoreError> {
        let tx = self.db.begin_read().map_err(engine)?;
        let table = tx.open_table(KV).map_err(engine)?;
        let mut out = Vec::new();
        for item in table.range(prefix..).map_err(engine)? {
            let (k, v) = item.map_err(engine)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            let (version, value) = v.value();
            out.push((
                key.to_owned(),
                Entry {
                    value: value.to_vec(),
                    version,
                },
            ));
        }
        Ok(out)
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<bool, StoreError> {
        // redb allows one write transaction at a time, so compares and writes
        // see no interleaving; commit uses Durability::Immediate (the default).
        let tx = self.db.begin_write().map_err(engine)?;
        {
            let mut table = tx.open_table(KV).map_err(engine)?;
            for c in compares {
                let holds = match c {
                    Compare::Absent(k) => table.get(k.as_str()).map_err(engine)?.is_none(),
                    Compare::Version(k, v) => {
                        table.get(k.as_str()).map_err(engine)?.map(|e| e.value().0) == Some(*v)
                    }
                };
                if !holds {
                    return Ok(false);
                }
            }
            let mut meta = tx.open_table(META).map_err(engine)?;
            let revision = meta
                .get("revision")
                .map_err(engine)?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            meta.insert("revision", revision).map_err(engine)?;
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        table
                            .insert(k.as_str(), (revision, v.as_slice()))
                            .map_err(engine)?;
                    }
                    Op::Delete(k) => {
                        table.remove(k.as_str()).map_err(engine)?;
                    }
                }
            }
        }
        tx.commit().map_err(engine)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn store() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        (dir, s)
    }

    #[test]
    fn compare_and_swap_writes_only_when_every_compare_holds() {
        let (_d, s) = store();
        assert!(
            s.txn(
                &[Compare::Absent("a".into())],
                &[Op::Put("a".into(), b"1".to_vec())]
            )
            .unwrap()
        );
        let v1 = s.get("a").unwrap().unwrap();
        assert_eq!(v1.value, b"1");
        assert!(
            !s.txn(
                &[Compare::Absent("a".into())],
                &[Op::Put("a".into(), b"2".to_vec())]
            )
            .unwrap(),
            "absent fails"
        );
        assert!(
            !s.txn(
                &[Compare::Version("a".into(), v1.version + 7)],
                &[Op::Put("b".into(), b"x".to_vec())]
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
                &[Op::Put("a".into(), b"2".to_vec()), Op::Delete("zz".into())]
            )
            .unwrap()
        );
        let v2 = s.get("a").unwrap().unwrap();
        assert!(v2.version > v1.version);
        assert!(s.txn(&[], &[Op::Delete("a".into())]).unwrap());
        assert!(s.get("a").unwrap().is_none());
    }

    #[test]
    fn list_returns_one_prefix_sorted() {
        let (_d, s) = store();
        for k in ["nodes/b", "nodes/a", "nodesx", "node", "revisions/1"] {
            s.txn(&[], &[Op::Put(k.into(), k.as_bytes().to_vec())])
                .unwrap();
        }
        let keys: Vec<String> = s
            .list("nodes/")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["nodes/a", "nodes/b"]);
    }

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            s.txn(&[], &[Op::Put("k".into(), b"v".to_vec())]).unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.get("k").unwrap().unwrap().value, b"v");
    }

    #[test]
    fn exactly_one_of_many_racing_creators_wins() {
        let (_d, s) = store();
        let s = Arc::new(s);
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
            .sum();
        assert_eq!(winners, 1);
    }
}
