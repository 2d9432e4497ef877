//! Leadership on etcd: the leader key is created on a lease, and a task
//! keeps the lease alive, reconnecting to the next member when its stream
//! breaks. It gives leadership up when a renewal could not be confirmed
//! within the lease's TTL (counted from when the renewal was sent, so the
//! holder thinks itself deposed no later than etcd does), or when etcd says
//! the lease is gone.

use super::{BACKOFF_MIN, Backoff, EtcdStore, Members, member_fault, never_sent, unavailable};
use crate::store::{Leadership, Op, StoreError};
use etcd_client::{CompareOp, PutOptions, Txn, TxnOp};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// The shortest lease etcd grants with the default election timeout.
pub const MIN_LEADER_TTL: Duration = Duration::from_secs(2);

impl EtcdStore {
    pub(super) fn lead(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Leadership>, StoreError> {
        let ttl = ttl.max(MIN_LEADER_TTL);
        let started = Instant::now();
        let id = self.grant(ttl, "grant a lease")?;
        let full = self.full(key);
        let txn = Txn::new()
            .when([etcd_client::Compare::create_revision(
                full.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(
                full,
                holder.as_bytes().to_vec(),
                Some(PutOptions::new().with_lease(id)),
            )]);
        let created = self.on_members(
            Members::kv,
            |mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            },
            never_sent,
        );
        let resp = match created {
            Ok(r) if r.succeeded() => r,
            other => {
                // Someone else leads, or it failed: give the lease back.
                let _ = self.on_members(
                    Members::lease,
                    move |mut l| async move { l.revoke(id).await },
                    unavailable,
                );
                return match other {
                    Ok(_) => Ok(None),
                    Err(e) => Err(self.error("take the leader key", e)),
                };
            }
        };
        let version = resp.header().map_or(0, |h| h.revision()) as u64;
        let (held_tx, held) = watch::channel(true);
        let (resign, resigned) = oneshot::channel();
        let keeper = Keeper {
            members: self.members.clone(),
            id,
            ttl,
            last_renewed: started,
            key: key.to_owned(),
        };
        self.runtime().spawn(keeper.run(held_tx, resigned));
        Ok(Some(Leadership::new(
            key.to_owned(),
            version,
            held,
            Box::new(resign),
        )))
    }
}

/// This process's liveness lease: the keys `Store::put_leased` writes live
/// on it; its keeper renews it until the store is dropped or renewal fails.
pub(super) struct Liveness {
    id: i64,
    held: watch::Receiver<bool>,
    /// Dropping it revokes the lease.
    _resign: oneshot::Sender<()>,
}

impl EtcdStore {
    /// One transaction of `ops`, puts on the liveness lease; a new lease when
    /// there is none yet or the last one was lost (then tried once more).
    pub(super) fn leased_txn(&self, ops: &[Op], ttl: Duration) -> Result<(), StoreError> {
        let ttl = ttl.max(MIN_LEADER_TTL);
        for attempt in 0..2 {
            let id = self.liveness_lease(ttl)?;
            let then: Vec<TxnOp> = ops
                .iter()
                .map(|o| match o {
                    Op::Put(k, v) => TxnOp::put(
                        self.full(k),
                        v.clone(),
                        Some(PutOptions::new().with_lease(id)),
                    ),
                    Op::Delete(k) => TxnOp::delete(self.full(k), None),
                })
                .collect();
            let txn = Txn::new().and_then(then);
            let done = self.on_members(
                Members::kv,
                |mut kv| {
                    let txn = txn.clone();
                    async move { kv.txn(txn).await }
                },
                never_sent,
            );
            match done {
                Ok(_) => return Ok(()),
                Err(e) if attempt == 0 && e.to_string().contains("lease not found") => {
                    tracing::warn!(lease = id, "liveness lease expired; taking a new one");
                    *self.liveness.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                Err(e) => return Err(self.error("write liveness", e)),
            }
        }
        Err(StoreError::Engine(
            "liveness lease lost twice in a row".into(),
        ))
    }

    /// A new lease of `ttl` (whole seconds, rounded up); its id.
    fn grant(&self, ttl: Duration, what: &str) -> Result<i64, StoreError> {
        let seconds = ttl.as_secs_f64().ceil() as i64;
        let lease = self
            .on_members(
                Members::lease,
                move |mut l| async move { l.grant(seconds, None).await },
                unavailable,
            )
            .map_err(|e| self.error(what, e))?;
        Ok(lease.id())
    }

    /// The liveness lease's id, granted (and its keeper started) if needed.
    fn liveness_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        let mut held = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = held.as_ref()
            && *l.held.borrow()
        {
            return Ok(l.id);
        }
        let started = Instant::now();
        let id = self.grant(ttl, "grant the liveness lease")?;
        let (held_tx, rx) = watch::channel(true);
        let (resign, resigned) = oneshot::channel();
        let keeper = Keeper {
            members: self.members.clone(),
            id,
            ttl,
            last_renewed: started,
            key: "liveness".into(),
        };
        self.runtime().spawn(keeper.run(held_tx, resigned));
        *held = Some(Liveness {
            id,
            held: rx,
            _resign: resign,
        });
        Ok(id)
    }
}

/// Keeps one lease alive.
struct Keeper {
    members: Arc<Members>,
    id: i64,
    ttl: Duration,
    /// When the last confirmed renewal was sent.
    last_renewed: Instant,
    key: String,
}

enum Step {
    /// The lease is gone, or could not be renewed in time.
    Lost,
    /// The leadership was dropped: revoke the lease.
    Resign,
    /// The stream broke: connect again.
    Reconnect,
}

impl Keeper {
    async fn run(mut self, held: watch::Sender<bool>, mut resigned: oneshot::Receiver<()>) {
        let mut backoff = Backoff(BACKOFF_MIN);
        loop {
            let step = tokio::select! {
                s = self.stream(&mut backoff) => s,
                _ = &mut resigned => Step::Resign,
            };
            match step {
                Step::Reconnect => {
                    tokio::select! {
                        _ = backoff.wait() => {}
                        _ = &mut resigned => return self.resign(held).await,
                    }
                    if self.expired() {
                        return self.lost(held);
                    }
                }
                Step::Lost => return self.lost(held),
                Step::Resign => return self.resign(held).await,
            }
        }
    }

    /// Past the TTL with no renewal confirmed: etcd may have expired the
    /// lease and elected someone else.
    fn expired(&self) -> bool {
        Instant::now() >= self.last_renewed + self.ttl
    }

    fn lost(&self, held: watch::Sender<bool>) {
        tracing::warn!(key = %self.key, lease = self.id, "leadership lost");
        let _ = held.send(false);
    }

    async fn resign(&self, held: watch::Sender<bool>) {
        let _ = held.send(false);
        let (_, mut lease) = self.members.lease();
        // Best effort: the lease expires by itself otherwise.
        let _ = tokio::time::timeout(Duration::from_secs(2), lease.revoke(self.id)).await;
    }

    /// Renews every third of the TTL over one keep-alive stream until it
    /// breaks (`Reconnect`) or etcd says the lease is gone (`Lost`).
    async fn stream(&mut self, backoff: &mut Backoff) -> Step {
        let (member, mut lease) = self.members.lease();
        let deadline = self.last_renewed + self.ttl;
        let opened = tokio::time::timeout_at(deadline, lease.keep_alive(self.id)).await;
        let Ok(opened) = opened else {
            return Step::Lost;
        };
        let (mut keeper, mut stream) = match opened {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(key = %self.key, member, error = %e, "lease keep-alive failed; reconnecting");
                if member_fault(&e) {
                    self.members.failed(member);
                }
                return Step::Reconnect;
            }
        };
        loop {
            let sent = Instant::now();
            if let Err(e) = keeper.keep_alive().await {
                tracing::warn!(key = %self.key, member, error = %e, "lease keep-alive broke; reconnecting");
                self.members.failed(member);
                return Step::Reconnect;
            }
            match tokio::time::timeout(self.ttl / 3, stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    self.last_renewed = sent;
                    *backoff = Backoff(BACKOFF_MIN);
                }
                Ok(Ok(Some(_))) => return Step::Lost,
                other => {
                    let error = match other {
                        Ok(Err(e)) => e.to_string(),
                        Ok(Ok(None)) => "stream ended".into(),
                        _ => "no answer in time".into(),
                    };
                    tracing::warn!(key = %self.key, member, %error, "lease keep-alive broke; reconnecting");
                    self.members.failed(member);
                    return if self.expired() {
                        Step::Lost
                    } else {
                        Step::Reconnect
                    };
                }
            }
            tokio::time::sleep(self.ttl / 3).await;
        }
    }
}
