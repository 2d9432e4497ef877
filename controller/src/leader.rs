//! Single-owner jobs: of all the controllers of a fleet, the one holding the
//! `leader` key (on an etcd lease; always this process on redb) compacts the
//! store's history and sweeps long-expired tokens, every `every`. Every write
//! a job makes carries the leadership's fence (`Leadership::fence`), so a
//! deposed leader that has not noticed yet cannot write. Compaction cannot
//! carry a fence (etcd compacts outside transactions): right before it the
//! leader reads the leader key, and steps down, saying so, when the key has
//! moved on. The rollout job (`Fleet::rollout_step`) runs every
//! `ROLLOUT_EVERY`: it checks the current wave's gate and moves the rollout
//! on, from the stored record alone.
//!
//! Test hook: `BALLAST_TEST_JOBS_EVERY_MS` sets the period of the jobs (the
//! fenced ex-leader test needs a round soon after the old leader resumes);
//! the jobs themselves, and their fenced writes, are the real ones.

use crate::fleet::{self, Clock, Fleet};
use crate::store::{Leadership, Store};
use std::sync::Arc;
use std::time::Duration;

/// The leader key's lease: a dead leader is replaced within this.
pub const LEADER_TTL: Duration = Duration::from_secs(10);
/// How often the leader runs the jobs.
pub const JOBS_EVERY: Duration = Duration::from_secs(300);
/// How many of the newest store revisions compaction keeps: enough for a
/// watch that fell a little behind to resume rather than relist.
pub const KEEP_REVISIONS: u64 = 10_000;
/// How often the leader checks the current rollout's gate.
pub const ROLLOUT_EVERY: Duration = Duration::from_millis(500);

/// The test hook's period, when set (see the module doc).
fn every_for_tests() -> Option<Duration> {
    let ms = std::env::var("BALLAST_TEST_JOBS_EVERY_MS").ok()?;
    ms.parse().ok().map(Duration::from_millis)
}

/// How long a stopping leader waits for the store to release the leader key.
pub const RESIGN_WAIT: Duration = Duration::from_secs(3);

/// Tries to lead, and while leading runs the jobs every `every`; runs until
/// `stop` turns true, and then, if it leads, resigns (the key released
/// before it returns, so a peer takes over at its next try rather than when
/// the lease runs out).
pub async fn run(
    store: Arc<dyn Store>,
    fleet: Arc<Fleet>,
    holder: String,
    clock: Clock,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = every_for_tests().unwrap_or(every);
    while !stopping(&stop) {
        let (s, h) = (store.clone(), holder.clone());
        let tried =
            tokio::task::spawn_blocking(move || s.try_lead(fleet::LEADER_KEY, &h, LEADER_TTL))
                .await;
        match tried {
            Ok(Ok(Some(lead))) => {
                tracing::info!(holder, "leading the fleet's single-owner jobs");
                fleet.metrics().set_leader(true);
                let held = lead_while_held(&store, &fleet, lead, &clock, every, &mut stop).await;
                fleet.metrics().set_leader(false);
                if let Some(lead) = held {
                    lead.resign(RESIGN_WAIT).await;
                    tracing::info!(holder, "stopping: gave up the lead");
                    return;
                }
                tracing::info!(holder, "no longer leading");
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not try for leadership"),
            Err(e) => tracing::error!(error = %e, "leadership task failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(LEADER_TTL / 2) => {}
            _ = stop.wait_for(|stop| *stop) => {}
        }
    }
}

/// True once the server stops: `stop` turned true, or its sender is gone.
fn stopping(stop: &tokio::sync::watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Runs the jobs while the leadership holds; the leadership back when
/// `stop` turned true, `None` when it was lost.
async fn lead_while_held(
    store: &Arc<dyn Store>,
    fleet: &Arc<Fleet>,
    mut lead: Leadership,
    clock: &Clock,
    every: Duration,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Leadership> {
    loop {
        let (s, c) = (store.clone(), clock.clone());
        let round = tokio::task::spawn_blocking(move || {
            let done = jobs(s.as_ref(), &lead, &c);
            (lead, done)
        })
        .await;
        let done;
        (lead, done) = match round {
            Ok(r) => r,
            Err(e) => {
                // The leadership went with the panicked task: resigned.
                tracing::error!(error = %e, "single-owner jobs panicked");
                return None;
            }
        };
        match done {
            Ok(Round::Deposed { swept }) => {
                tracing::warn!(
                    swept,
                    key = %lead.key,
                    "deposed: the leader key has moved on, so this controller's single-owner writes are refused (fenced); stepping down"
                );
                return None;
            }
            Ok(Round::Done { swept, compacted }) if swept > 0 || compacted > 0 => {
                tracing::info!(swept, compacted_to = compacted, "single-owner jobs done")
            }
            Ok(Round::Done { .. }) => {}
            Err(e) => {
                tracing::warn!(error = %e, "single-owner jobs failed; the next round retries")
            }
        }
        lead = match rollouts_until(fleet, lead, every, stop).await {
            Some(lead) if stopping(stop) => return Some(lead),
            Some(lead) => lead,
            None => return None,
        };
    }
}

/// Runs the rollout job every `ROLLOUT_EVERY` for `every`, or until `stop`;
/// gives the leadership back, or `None` when it was lost.
async fn rollouts_until(
    fleet: &Arc<Fleet>,
    mut lead: Leadership,
    every: Duration,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Leadership> {
    let until = tokio::time::Instant::now() + every;
    while tokio::time::Instant::now() < until {
        tokio::select! {
            _ = lead.lost() => return None,
            _ = stop.wait_for(|stop| *stop) => return Some(lead),
            _ = tokio::time::sleep(ROLLOUT_EVERY.min(every)) => {}
        }
        let f = fleet.clone();
        let stepped = tokio::task::spawn_blocking(move || {
            let done = f.rollout_step(&lead);
            (lead, done)
        })
        .await;
        let done;
        (lead, done) = match stepped {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "rollout job panicked");
                return None;
            }
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "rollout job failed; the next round retries");
        }
    }
    Some(lead)
}

/// What one round of the jobs did.
enum Round {
    /// Tokens swept, and the revision compacted to (0: none).
    Done { swept: usize, compacted: u64 },
    /// The leader key is no longer this leadership's: its fenced writes
    /// were refused, and nothing unfenced (compaction) was done.
    Deposed { swept: usize },
}

/// One round: sweep tokens (fenced), then, if the leader key is still
/// ours, compact.
fn jobs(
    store: &dyn Store,
    lead: &Leadership,
    clock: &Clock,
) -> Result<Round, crate::store::StoreError> {
    let swept = fleet::sweep_expired_tokens(store, lead, clock.now_ms())?;
    // Read whatever the keep-alive says: a deposed leader may not have
    // heard yet.
    if store.get(&lead.key)?.map(|e| e.version) != Some(lead.version) {
        return Ok(Round::Deposed { swept });
    }
    if !lead.is_held() {
        return Ok(Round::Done {
            swept,
            compacted: 0,
        });
    }
    let compacted = store.compact(KEEP_REVISIONS)?;
    Ok(Round::Done { swept, compacted })
}
