//! One-time tokens, reserved names and enrollment.
//!
//! A token created with a name reserves it (`pending/{name}`) until the
//! token's expiry plus [`PENDING_GRACE`]: only a token bound to that name can
//! enroll it. A revoked node's name is enrolled again only with a token bound
//! to it and created with `replace_revoked`. A refused enrollment is recorded
//! against the token's own name (its reservation or node), at most once per
//! [`REFUSAL_LOG_EVERY`] per token, and never under a name the caller chose.

use super::records::{NodeRecord, PendingRecord, Stage, TokenRecord, push_event};
use super::{
    Fleet, FleetError, MAX_TOKEN_TTL, NODE_CERT_VALIDITY, OPERATOR_TRIES, PENDING_GRACE, Result,
    from_json, keys, to_json, validate_labels,
};
use crate::ca::Ca;
use crate::store::{Compare, Op};
use ballast_proto::pb;
use ballast_proto::spec::{self, Labels};
use std::time::Duration;

/// A refused enrollment of one token is logged at most this often.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// Tokens whose last refusal time is remembered; the oldest are forgotten.
const REFUSALS_REMEMBERED: usize = 4096;

fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn humantime_secs(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn conflict_elsewhere(what: &str) -> FleetError {
    FleetError::Conflict(format!(
        "{what} was changed by another controller at the same time; retry"
    ))
}

impl Fleet {
    /// Creates a one-time token; only its hash is stored. With a name, the
    /// token reserves it, and `replace_revoked` lets it enroll over a revoked
    /// node of that name.
    pub fn create_token(
        &self,
        labels: Labels,
        ttl: Duration,
        name: Option<String>,
        replace_revoked: bool,
    ) -> Result<(String, u64)> {
        validate_labels(&labels)?;
        if let Some(n) = &name {
            spec::validate::node_name(n).map_err(FleetError::Invalid)?;
        } else if replace_revoked {
            return Err(FleetError::Invalid(
                "replace_revoked needs a name: the token replaces that revoked node".into(),
            ));
        }
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(FleetError::Invalid(format!(
                "token ttl must be between 1s and {}s",
                MAX_TOKEN_TTL.as_secs()
            )));
        }
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw)
            .map_err(|e| FleetError::Internal(anyhow::anyhow!("random token: {e}")))?;
        let token = format!("blt_{}", hex::encode(raw));
        let now = self.now_ms();
        let expires_at_ms = now + ttl.as_millis() as u64;
        let rec = TokenRecord {
            name: name.clone(),
            labels: labels.clone(),
            created_at_ms: now,
            expires_at_ms,
            used_by: None,
            replace_revoked,
        };
        let key = keys::token(&token_hash(&token));
        let put_token = (
            Compare::Absent(key.clone()),
            Op::Put(key.clone(), to_json(&rec)),
        );
        match name {
            None => {
                if !self.store.txn(&[put_token.0], &[put_token.1])? {
                    return Err(FleetError::Internal(anyhow::anyhow!("token collision")));
                }
            }
            Some(name) => {
                let detail = format!(
                    "one-time token issued, expires in {}{}",
                    humantime_secs(ttl),
                    if replace_revoked {
                        "; may replace the revoked node"
                    } else {
                        ""
                    }
                );
                let until = expires_at_ms + PENDING_GRACE.as_millis() as u64;
                self.log_bootstrap(
                    &name,
                    &labels,
                    Stage::TokenIssued,
                    &detail,
                    until,
                    Some(put_token),
                )?;
            }
        }
        Ok((token, expires_at_ms))
    }

    /// Adds a bootstrap event to a reserved name, in the same transaction as
    /// `with` (if any): to its node when one exists, else to its reservation
    /// (created, or kept at least until `until`).
    fn log_bootstrap(
        &self,
        name: &str,
        labels: &Labels,
        stage: Stage,
        detail: &str,
        until: u64,
        with: Option<(Compare, Op)>,
    ) -> Result<()> {
        let _op = self.operator_lock();
        let now = self.now_ms();
        for _ in 0..OPERATOR_TRIES {
            let mut compares: Vec<Compare> = with.iter().map(|w| w.0.clone()).collect();
            let mut ops: Vec<Op> = with.iter().map(|w| w.1.clone()).collect();
            let nkey = keys::node(name);
            if let Some(entry) = self.store.get(&nkey)? {
                let mut record: NodeRecord = from_json(&nkey, &entry.value)?;
                push_event(&mut record.timeline, now, stage, detail);
                compares.push(Compare::Version(nkey.clone(), entry.version));
                ops.push(Op::Put(nkey, to_json(&record)));
                if self.store.txn(&compares, &ops)? {
                    self.apply_node_record(record, entry.version + 1);
                    return Ok(());
                }
                continue;
            }
            let pkey = keys::pending(name);
            let existing = self.store.get(&pkey)?;
            let mut rec = match &existing {
                Some(e) => from_json::<PendingRecord>(&pkey, &e.value)?,
                None => PendingRecord {
                    name: name.to_owned(),
                    labels: labels.clone(),
                    timeline: Vec::new(),
                    expires_at_ms: 0,
                },
            };
            if rec.expires_at_ms <= now {
                rec.timeline.clear();
            }
            if stage == Stage::TokenIssued {
                rec.labels = labels.clone();
            }
            rec.expires_at_ms = rec.expires_at_ms.max(until);
            push_event(&mut rec.timeline, now, stage, detail);
            compares.push(match &existing {
                Some(e) => Compare::Version(pkey.clone(), e.version),
                None => Compare::Absent(pkey.clone()),
            });
            ops.push(Op::Put(pkey, to_json(&rec)));
            if self.store.txn(&compares, &ops)? {
                self.lock().pending.insert(name.to_owned(), rec);
                return Ok(());
            }
        }
        Err(conflict_elsewhere(&format!(
            "the bootstrap record of {name}"
        )))
    }

    /// Whether a refusal of this token is to be logged now (rate limit).
    fn refusal_due(&self, hash: &str, now: u64) -> bool {
        let every = REFUSAL_LOG_EVERY.as_millis() as u64;
        let mut inner = self.lock();
        if inner.refusals.len() >= REFUSALS_REMEMBERED {
            inner.refusals.retain(|_, t| now.saturating_sub(*t) < every);
            if inner.refusals.len() >= REFUSALS_REMEMBERED {
                inner.refusals.clear();
            }
        }
        match inner.refusals.get(hash) {
            Some(t) if now.saturating_sub(*t) < every => false,
            _ => {
                inner.refusals.insert(hash.to_owned(), now);
                true
            }
        }
    }

    /// Records a refused enrollment of a real (spent or expired) token:
    /// against the name it reserves, or only in the log for an unnamed one.
    fn note_refusal(&self, hash: &str, rec: &TokenRecord, requested: &str, why: &str) {
        let now = self.now_ms();
        if !self.refusal_due(hash, now) {
            return;
        }
        let token = &hash[..12];
        match &rec.name {
            None => {
                tracing::warn!(%token, requested = ?requested, why, "enrollment refused");
            }
            Some(name) => {
                tracing::warn!(%token, node = %name, why, "enrollment refused");
                let until = now + PENDING_GRACE.as_millis() as u64;
                let detail = format!("enrollment refused: {why}");
                if let Err(e) =
                    self.log_bootstrap(name, &rec.labels, Stage::EnrollFailed, &detail, until, None)
                {
                    tracing::warn!(error = %e, node = %name, "could not record the failed enrollment");
                }
            }
        }
    }

    /// Spends a token and signs the node's CSR. Exactly one of any number of
    /// concurrent enrollments with one token succeeds (compare on the token's
    /// version in the same transaction that marks it used).
    pub fn enroll(
        &self,
        ca: &Ca,
        token: &str,
        requested_name: &str,
        csr_der: &[u8],
    ) -> Result<pb::EnrollResponse> {
        let denied =
            || FleetError::Denied("enrollment token is invalid, expired or already used".into());
        if !token.starts_with("blt_") || token.len() != 68 {
            return Err(denied());
        }
        let hash = token_hash(token);
        let key = keys::token(&hash);
        let entry = self.store.get(&key)?.ok_or_else(denied)?;
        let mut rec: TokenRecord = from_json(&key, &entry.value)?;
        let now = self.now_ms();
        if rec.used_by.is_some() || rec.expires_at_ms <= now {
            let why = if rec.used_by.is_some() {
                "token already used"
            } else {
                "token expired"
            };
            self.note_refusal(&hash, &rec, requested_name, why);
            return Err(denied());
        }
        let name = rec
            .name
            .clone()
            .unwrap_or_else(|| requested_name.to_owned());
        spec::validate::node_name(&name).map_err(FleetError::Invalid)?;

        let _op = self.operator_lock();
        let pkey = keys::pending(&name);
        let pending = match self.store.get(&pkey)? {
            Some(e) => Some((from_json::<PendingRecord>(&pkey, &e.value)?, e.version)),
            None => None,
        };
        if rec.name.is_none()
            && let Some((p, _)) = &pending
            && (p.expires_at_ms == 0 || p.expires_at_ms > now)
        {
            return Err(FleetError::Conflict(format!(
                "name {name} is reserved by a token created with --name {name}; \
                 enroll with that token, or choose another name"
            )));
        }
        let nkey = keys::node(&name);
        let (node_compare, old, old_version) = match self.store.get(&nkey)? {
            None => (Compare::Absent(nkey.clone()), None, 0),
            Some(e) => {
                let old: NodeRecord = from_json(&nkey, &e.value)?;
                if !old.revoked {
                    return Err(FleetError::Conflict(format!(
                        "node {name} is already enrolled; revoke it first (ballast node revoke {name})"
                    )));
                }
                if !(rec.name.is_some() && rec.replace_revoked) {
                    return Err(FleetError::Conflict(format!(
                        "node {name} was revoked; its name is enrolled again only with a token \
                         an operator creates for it (ballast token create --name {name} --replace)"
                    )));
                }
                (
                    Compare::Version(nkey.clone(), e.version),
                    Some(old),
                    e.version,
                )
            }
        };
        let issued = ca
            .sign_node_csr(csr_der, &name, NODE_CERT_VALIDITY)
            .map_err(|e| FleetError::Invalid(format!("certificate signing request: {e:#}")))?;
        rec.used_by = Some(name.clone());
        let mut timeline = old.as_ref().map(|o| o.timeline.clone()).unwrap_or_default();
        let pending_compare = match pending {
            Some((p, version)) => {
                // An unnamed token only gets here past an expired reservation.
                if rec.name.is_some() {
                    timeline.extend(p.timeline);
                }
                Compare::Version(pkey.clone(), version)
            }
            None => Compare::Absent(pkey.clone()),
        };
        timeline.sort_by_key(|e| e.at_ms);
        let mut record = NodeRecord {
            name: name.clone(),
            labels: rec.labels.clone(),
            cert_serial: issued.serial.clone(),
            enrolled_at_ms: now,
            revoked: false,
            timeline,
            last_seen_ms: 0,
        };
        let detail = match &old {
            Some(o) => format!(
                "certificate serial {}, replacing revoked serial {}",
                issued.serial, o.cert_serial
            ),
            None => format!("certificate serial {}", issued.serial),
        };
        push_event(&mut record.timeline, now, Stage::Enrolled, detail);
        let ok = self.store.txn(
            &[
                Compare::Version(key.clone(), entry.version),
                node_compare,
                pending_compare,
            ],
            &[
                Op::Put(key, to_json(&rec)),
                Op::Put(nkey, to_json(&record)),
                Op::Delete(keys::status(&name)),
                Op::Delete(keys::report(&name)),
                Op::Delete(keys::facts(&name)),
                Op::Delete(keys::host(&name)),
                Op::Delete(pkey),
            ],
        )?;
        if !ok {
            return Err(denied());
        }
        let labels = record.labels.clone();
        self.lock().pending.remove(&name);
        // A new serial: a fresh node, whose old feed (any watch) ends.
        self.apply_node_record(record, old_version + 1);
        if let Some(node) = self.lock().nodes.get_mut(&name) {
            node.status.last_seen_ms = node.status.last_seen_ms.max(now);
        }
        Ok(pb::EnrollResponse {
            name,
            labels: labels.into_iter().collect(),
            certificate_pem: issued.cert_pem,
            ca_pem: ca.cert_pem().to_owned(),
        })
    }
}
