//! How the fleet's memory learns of changes: every write another controller
//! (or this one) commits under `meta/`, `nodes/` and `pending/` arrives
//! through [`store::follow`] and is applied here, by the same functions this
//! controller's own writes call right after their commit. Both paths are
//! idempotent and ordered by store version, so whichever comes first wins and
//! the other is a no-op: an apply on controller A reaches an agent watching
//! through B, and a revoke on A ends B's open watch of that node.
//!
//! Operator state is followed, peers' liveness summaries
//! (`controllers/`, see `liveness`) and peers' plans (`plans/`, see
//! `plan_route`). What a node says (`status/`,
//! `reports/`, `facts/`) is read from the store only when a peer's summary
//! says its report changed; heartbeats stay in the memory of the controller
//! it talks to.

use super::records::{NodeRecord, PendingRecord, RevisionRecord};
use super::revisions::parse_sources;
use super::rollout::{Active, TargetRender};
use super::{Current, Feed, Fleet, Node, Result, from_json, keys};
use crate::store::{self, Followed};
use std::sync::{Arc, Weak};
use tokio_stream::StreamExt;

impl Fleet {
    /// Makes `number` (with its parsed spec) the current revision unless a
    /// revision at least as new is already current, and pushes every node
    /// whose rendered state changed. Returns the names it pushed (sorted)
    /// when it installed the revision.
    pub(super) fn install_current(
        &self,
        current: Current,
        rollout: Option<Active>,
    ) -> Option<Vec<String>> {
        let mut inner = self.lock();
        if current.number <= inner.current.number {
            return None;
        }
        let number = current.number;
        inner.current = current;
        inner.rollout = rollout;
        let affected = super::rollout::retarget(&mut inner);
        inner.last_affected = (number, affected.clone());
        Some(affected)
    }

    /// Loads revision `number` from the store and installs it, unless memory
    /// already has it or a newer one.
    pub(super) fn catch_up_current(&self, number: u64) -> Result<()> {
        if number <= self.lock().current.number {
            return Ok(());
        }
        let key = keys::revision(number);
        let Some(entry) = self.store.get(&key)? else {
            return Err(anyhow::anyhow!(
                "meta/current names revision {number}, which is not stored"
            )
            .into());
        };
        let rec: RevisionRecord = from_json(&key, &entry.value)?;
        let spec = parse_sources(&rec.sources)
            .map_err(|e| anyhow::anyhow!("stored revision {number} no longer parses: {e}"))?;
        let rollout = super::rollout::load_active(self.store.as_ref(), number)?;
        self.install_current(
            Current {
                number,
                spec: Arc::new(spec),
                hash: rec.hash,
            },
            rollout,
        );
        Ok(())
    }

    /// Takes a node's operator record stored at `version` (or later: a lower
    /// bound is enough). Older news than memory holds is ignored. A new
    /// certificate serial (enrollment, re-enrollment) starts a fresh node,
    /// which ends any watch on the old one; revocation ends the watch;
    /// changed labels re-render and push the node's state.
    pub(super) fn apply_node_record(&self, record: NodeRecord, version: u64) {
        let mut inner = self.lock();
        let (number, spec) = (inner.current.number, inner.current.spec.clone());
        let active = inner.rollout.take();
        let mut render = TargetRender::new(&spec, number, active.as_ref());
        let name = record.name.clone();
        let desired = render.of(&name, &record.labels);
        drop(render);
        inner.rollout = active;
        if let Some(node) = inner.nodes.get_mut(&name)
            && node.record.cert_serial == record.cert_serial
        {
            if version <= node.record_version {
                return;
            }
            let revoked_now = record.revoked && !node.record.revoked;
            let labels_changed = node.record.labels != record.labels;
            node.record = record;
            node.record_version = version;
            if labels_changed && desired.hash != node.desired.hash {
                node.desired = Arc::new(desired);
                if !node.record.revoked {
                    node.feed.send_replace(Feed::State(node.desired.clone()));
                }
            }
            if revoked_now {
                node.feed.send_replace(Feed::Revoked);
            }
            return;
        }
        if let Some(node) = inner.nodes.get(&name)
            && version <= node.record_version
        {
            return;
        }
        let mut node = Node::new(record, Arc::new(desired));
        node.record_version = version;
        // Replacing a node drops its old feed: any watch on it ends.
        inner.nodes.insert(name, node);
    }

    fn forget_node(&self, name: &str, version: u64) {
        let mut inner = self.lock();
        if inner
            .nodes
            .get(name)
            .is_some_and(|n| n.record_version < version)
        {
            inner.nodes.remove(name);
        }
    }

    fn apply_pending(&self, name: &str, record: Option<PendingRecord>) {
        let mut inner = self.lock();
        match record {
            Some(r) => {
                inner.pending.insert(name.to_owned(), r);
            }
            None => {
                inner.pending.remove(name);
            }
        }
    }

    /// One followed event of one prefix; store reads happen here, so this
    /// runs on a blocking thread.
    fn apply_followed(&self, prefix: &str, event: Followed) -> Result<()> {
        if prefix == keys::CONTROLLERS {
            return self.apply_liveness(event);
        }
        if prefix == keys::PLANS {
            return self.apply_plans(event);
        }
        match event {
            Followed::Reset(listing) => {
                let mut seen = std::collections::BTreeSet::new();
                for (key, entry) in listing.entries {
                    seen.insert(key.clone());
                    self.apply_change(&key, Some(&entry.value), entry.version)?;
                }
                if prefix == keys::NODES {
                    let gone: Vec<String> = self
                        .lock()
                        .nodes
                        .keys()
                        .filter(|n| !seen.contains(&keys::node(n)))
                        .cloned()
                        .collect();
                    for name in gone {
                        self.forget_node(&name, listing.revision);
                    }
                }
                if prefix == keys::PENDING {
                    let gone: Vec<String> = self
                        .lock()
                        .pending
                        .keys()
                        .filter(|n| !seen.contains(&keys::pending(n)))
                        .cloned()
                        .collect();
                    for name in gone {
                        self.apply_pending(&name, None);
                    }
                }
            }
            Followed::Changes { revision, changes } => {
                for c in changes {
                    self.apply_change(&c.key, c.value.as_deref(), revision)?;
                }
            }
        }
        Ok(())
    }

    fn apply_change(&self, key: &str, value: Option<&[u8]>, version: u64) -> Result<()> {
        if key.starts_with(keys::ROLLOUTS) {
            if let Some(v) = value {
                self.apply_rollout(from_json(key, v)?, version)?;
            }
        } else if key == keys::CURRENT {
            if let Some(v) = value {
                self.catch_up_current(from_json(key, v)?)?;
            }
        } else if let Some(name) = key.strip_prefix(keys::NODES) {
            match value {
                Some(v) => self.apply_node_record(from_json(key, v)?, version),
                None => self.forget_node(name, version),
            }
        } else if let Some(name) = key.strip_prefix(keys::PENDING) {
            let rec = value
                .map(|v| from_json::<PendingRecord>(key, v))
                .transpose()?;
            self.apply_pending(name, rec);
        }
        Ok(())
    }

    /// Follows the operator prefixes and peers' liveness, and publishes this
    /// controller's, for as long as the fleet lives (or until the returned
    /// tasks are aborted). Runs on the current tokio runtime.
    pub fn follow_store(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.plans.set_writer(tx);
        let ttl = self.liveness.lease_ttl();
        let writer = super::plan_route::write_answers(self.store.clone(), rx, ttl);
        let prefixes = [
            keys::META,
            keys::NODES,
            keys::PENDING,
            keys::CONTROLLERS,
            keys::PLANS,
        ];
        let mut tasks: Vec<_> = prefixes
            .into_iter()
            .map(|prefix| {
                let weak = Arc::downgrade(self);
                let store = self.store.clone();
                tokio::spawn(follow_prefix(weak, store, prefix))
            })
            .collect();
        tasks.push(super::liveness::spawn_publisher(self));
        tasks.push(tokio::spawn(writer));
        tasks
    }
}

async fn follow_prefix(fleet: Weak<Fleet>, store: Arc<dyn store::Store>, prefix: &'static str) {
    let mut events = std::pin::pin!(store::follow(store, prefix.to_owned()));
    while let Some(event) = events.next().await {
        let Some(f) = fleet.upgrade() else { return };
        let done = tokio::task::spawn_blocking(move || f.apply_followed(prefix, event)).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(%prefix, error = %e, "could not apply a stored change"),
            Err(_) => return,
        }
    }
}
