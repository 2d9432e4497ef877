//! Removing what has outlived its use: enrollment tokens long past their
//! expiry. A single-owner job (see `crate::leader`): every delete carries the
//! leadership's fence and the token's version, so a deposed leader deletes
//! nothing and a token that changed meanwhile is left alone.

use super::records::TokenRecord;
use super::{MAX_TXN_OPS, from_json, keys};
use crate::store::{Compare, Leadership, Op, Store, StoreError};
use std::time::Duration;

/// How long an expired token is kept, so enrolling with it still says
/// "expired" rather than "unknown".
pub const TOKEN_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Deletes tokens that expired more than [`TOKEN_GRACE`] before `now_ms`;
/// how many. Stops at the first refused batch when leadership was lost.
pub fn sweep_expired_tokens(
    store: &dyn Store,
    lead: &Leadership,
    now_ms: u64,
) -> Result<usize, StoreError> {
    let grace = TOKEN_GRACE.as_millis() as u64;
    let mut expired = Vec::new();
    for (key, entry) in store.list(keys::TOKENS)? {
        match from_json::<TokenRecord>(&key, &entry.value) {
            Ok(t) if t.expires_at_ms.saturating_add(grace) < now_ms => {
                expired.push((key, entry.version))
            }
            Ok(_) => {}
            // Left for an operator to see; never deleted unread.
            Err(e) => tracing::warn!(key, error = %e, "unreadable token record"),
        }
    }
    let mut swept = 0;
    // Each delete has its own compare, plus the fence: half the bound each.
    for batch in expired.chunks(MAX_TXN_OPS / 2) {
        let mut compares = vec![lead.fence()];
        compares.extend(
            batch
                .iter()
                .map(|(key, version)| Compare::Version(key.clone(), *version)),
        );
        let ops: Vec<Op> = batch
            .iter()
            .map(|(key, _)| Op::Delete(key.clone()))
            .collect();
        if store.txn(&compares, &ops)? {
            swept += batch.len();
        } else if store.get(&lead.key)?.map(|e| e.version) != Some(lead.version) {
            tracing::info!(swept, "leadership lost; token sweep stopped");
            break;
        }
        // Otherwise a token of this batch changed meanwhile: the next sweep
        // sees it afresh.
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{Clock, Fleet};
    use crate::store::RedbStore;
    use std::sync::Arc;

    fn tokens(store: &dyn Store) -> usize {
        store.list(keys::TOKENS).unwrap().len()
    }

    #[test]
    fn only_long_expired_tokens_are_swept_and_a_deposed_leader_sweeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let clock = Clock::manual();
        let fleet = Fleet::open(
            store.clone(),
            Duration::from_secs(60),
            crate::fleet::Liveness::default(),
            clock.clone(),
        )
        .unwrap();
        let ttl = Duration::from_secs(600);
        for _ in 0..120 {
            fleet
                .create_token(Default::default(), ttl, None, false)
                .unwrap();
        }
        // Expired, but within the grace: kept, so enrolling says "expired".
        clock.advance(ttl + TOKEN_GRACE / 2);
        fleet
            .create_token(Default::default(), ttl, None, false)
            .unwrap();
        let lead = store
            .try_lead(keys::LEADER, "a", Duration::from_secs(10))
            .unwrap()
            .unwrap();
        assert_eq!(
            sweep_expired_tokens(store.as_ref(), &lead, clock.now_ms()).unwrap(),
            0
        );
        assert_eq!(tokens(store.as_ref()), 121);

        // Another holder takes the key: the old leadership's deletes are fenced.
        clock.advance(TOKEN_GRACE);
        let _other = store
            .try_lead(keys::LEADER, "b", Duration::from_secs(10))
            .unwrap()
            .unwrap();
        assert_eq!(
            sweep_expired_tokens(store.as_ref(), &lead, clock.now_ms()).unwrap(),
            0
        );
        assert_eq!(
            tokens(store.as_ref()),
            121,
            "a deposed leader deletes nothing"
        );

        // The holder deletes the 120 long-expired ones, in bounded batches.
        let lead = store
            .try_lead(keys::LEADER, "c", Duration::from_secs(10))
            .unwrap()
            .unwrap();
        assert_eq!(
            sweep_expired_tokens(store.as_ref(), &lead, clock.now_ms()).unwrap(),
            120
        );
        assert_eq!(tokens(store.as_ref()), 1);
    }
}
