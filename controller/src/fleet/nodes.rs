//! Enrolled nodes: what they report (status, reports, facts: written only by
//! the node's own calls), what operators decide (revoke, label: written only
//! by admin calls), and the fleet views over both.

use super::records::{NodeRecord, Stage, push_event, summarize};
use super::{
    Fleet, FleetError, OPERATOR_TRIES, Result, decode_report, from_json, keys, to_json, view,
};
use crate::store::{Compare, Op};
use ballast_proto::enums::NodeStatus as Status;
use ballast_proto::limits::{
    CheckedFacts, CheckedHost, CheckedReport, MAX_PAGE_BYTES, MIN_HOST_FIGURES_INTERVAL,
};
use ballast_proto::pb;
use ballast_proto::spec::{self, Labels};
use std::ops::Bound;

impl Fleet {
    /// Records a run's outcome and moves the node's timeline when its stage
    /// changes. Writes only the node's own keys (`status/`, `reports/`).
    pub fn report(&self, name: &str, report: CheckedReport) -> Result<()> {
        let report = report.into_inner();
        let summary = summarize(&report);
        let not_enrolled = || FleetError::NotFound(format!("node {name} is not enrolled"));
        let status_lock = self
            .lock()
            .nodes
            .get(name)
            .ok_or_else(not_enrolled)?
            .status_lock
            .clone();
        let _own = status_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (mut status, serial) = {
            let inner = self.lock();
            let node = inner.nodes.get(name).ok_or_else(not_enrolled)?;
            (node.status.clone(), node.record.cert_serial.clone())
        };
        let now = self.now_ms();
        if !status.reported {
            status.reported = true;
            push_event(
                &mut status.timeline,
                now,
                Stage::FirstReport,
                format!("revision {}", report.revision),
            );
        }
        if !report.noop {
            let (stage, detail) = if summary.failed_count > 0 {
                let more = summary.failed_count - summary.failed.len();
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                (
                    Stage::Failing,
                    format!(
                        "revision {}: failing at {}{more}",
                        report.revision,
                        summary.failed.join(", ")
                    ),
                )
            } else if summary.drifted {
                (
                    Stage::Drifted,
                    format!("revision {}: repaired drift", report.revision),
                )
            } else {
                (Stage::Converged, format!("revision {}", report.revision))
            };
            // Only stage changes enter the timeline, not every run.
            let mut probe = Vec::new();
            push_event(&mut probe, now, stage, detail);
            let new = probe.pop().expect("one event");
            let last = status.timeline.last();
            if last.map(|e| (&e.stage, &e.detail)) != Some((&new.stage, &new.detail)) {
                push_event(&mut status.timeline, now, new.stage, new.detail);
            }
        }
        status.last_seen_ms = now;
        status.cert_serial = serial.clone();
        self.store.txn(
            &[],
            &[
                Op::Put(keys::report(name), prost::Message::encode_to_vec(&report)),
                Op::Put(keys::status(name), to_json(&status)),
            ],
        )?;
        let mut inner = self.lock();
        if let Some(node) = inner.nodes.get_mut(name)
            && node.record.cert_serial == serial
        {
            status.last_seen_ms = status.last_seen_ms.max(node.status.last_seen_ms);
            node.status = status;
            if !report.noop {
                node.report = Some(summary);
            }
        }
        Ok(())
    }

    /// Reads the node's own records (`status/`, `reports/`) again from the
    /// store when its stream comes to this controller. The controller that
    /// held it before may have died with runs its liveness summaries never
    /// carried: without this, this controller would count the node from an
    /// older report (holding a rollout's gate shut, showing an old
    /// revision) until the node's next run, and its next report would
    /// write the older timeline back. Under the node's status lock, so no
    /// report of this controller's lands in between.
    pub fn reload_reported(&self, name: &str) -> Result<()> {
        let Some((status_lock, serial)) = self
            .lock()
            .nodes
            .get(name)
            .map(|n| (n.status_lock.clone(), n.record.cert_serial.clone()))
        else {
            return Ok(());
        };
        let _own = status_lock.lock().unwrap_or_else(|p| p.into_inner());
        let report = match self.store.get(&keys::report(name))? {
            Some(e) => Some(decode_report(&keys::report(name), &e.value)?),
            None => None,
        };
        let status = match self.store.get(&keys::status(name))? {
            Some(e) => Some(from_json::<super::records::NodeStatus>(
                &keys::status(name),
                &e.value,
            )?),
            None => None,
        };
        let mut inner = self.lock();
        let Some(node) = inner.nodes.get_mut(name) else {
            return Ok(());
        };
        if node.record.cert_serial != serial {
            return Ok(());
        }
        if let Some(r) = report.filter(|r| !r.noop) {
            node.report = Some(summarize(&r));
        }
        if let Some(mut s) = status.filter(|s| s.cert_serial == serial) {
            s.last_seen_ms = s.last_seen_ms.max(node.status.last_seen_ms);
            node.status = s;
        }
        Ok(())
    }

    pub fn put_facts(&self, name: &str, facts: CheckedFacts) -> Result<()> {
        if !self.lock().nodes.contains_key(name) {
            return Err(FleetError::NotFound(format!("node {name} is not enrolled")));
        }
        self.store
            .txn(&[], &[Op::Put(keys::facts(name), facts.json.into_bytes())])?;
        if let Some(node) = self.lock().nodes.get_mut(name) {
            node.facts = facts.value;
            node.status.last_seen_ms = self.now_ms();
        }
        Ok(())
    }

    /// Stores a node's host figures (`host/{name}`) unless this controller
    /// stored some for it less than `MIN_HOST_FIGURES_INTERVAL` ago: those
    /// are dropped (`Ok(false)`). The agent holds itself to a longer
    /// interval, so only a misbehaving one is dropped; whatever it sends,
    /// its store writes stay bounded.
    pub fn put_host(&self, name: &str, host: CheckedHost) -> Result<bool> {
        let now = self.now_ms();
        let serial = {
            let mut inner = self.lock();
            let node = inner
                .nodes
                .get_mut(name)
                .ok_or_else(|| FleetError::NotFound(format!("node {name} is not enrolled")))?;
            node.status.last_seen_ms = now;
            let min = MIN_HOST_FIGURES_INTERVAL.as_millis() as u64;
            if node.host_stored_ms != 0 && now < node.host_stored_ms.saturating_add(min) {
                return Ok(false);
            }
            // Taken before the write, so concurrent calls write once.
            node.host_stored_ms = now;
            node.record.cert_serial.clone()
        };
        let record = pb::HostRecord {
            figures: Some(host.into_inner()),
            received_ms: now,
        };
        let written = self.store.txn(
            &[],
            &[Op::Put(
                keys::host(name),
                prost::Message::encode_to_vec(&record),
            )],
        );
        if let Err(e) = written {
            if let Some(node) = self.lock().nodes.get_mut(name)
                && node.record.cert_serial == serial
                && node.host_stored_ms == now
            {
                node.host_stored_ms = 0;
            }
            return Err(e.into());
        }
        Ok(true)
    }

    /// Changes a node's operator record. Nodes never write it, so this
    /// succeeds at once whatever they do; a compare failure can only come
    /// from another controller and is retried.
    fn update_node(&self, name: &str, change: impl Fn(&mut NodeRecord)) -> Result<NodeRecord> {
        let _op = self.operator_lock();
        let key = keys::node(name);
        for _ in 0..OPERATOR_TRIES {
            let entry = self.store.get(&key)?.ok_or_else(|| {
                FleetError::NotFound(format!("node {name} does not exist (see ballast nodes)"))
            })?;
            let mut record: NodeRecord = from_json(&key, &entry.value)?;
            change(&mut record);
            if self.store.txn(
                &[Compare::Version(key.clone(), entry.version)],
                &[Op::Put(key.clone(), to_json(&record))],
            )? {
                self.apply_node_record(record.clone(), entry.version + 1);
                return Ok(record);
            }
        }
        Err(FleetError::Conflict(format!(
            "node {name} was changed by another controller at the same time; retry"
        )))
    }

    /// The node's next call fails, and its open watch ends, without a restart.
    pub fn revoke(&self, name: &str) -> Result<()> {
        self.update_node(name, |r| {
            r.revoked = true;
            push_event(
                &mut r.timeline,
                self.now_ms(),
                Stage::Revoked,
                "certificate revoked by an operator",
            );
        })?;
        Ok(())
    }

    /// Sets labels (an empty value removes one) and pushes the re-rendered state.
    pub fn label(&self, name: &str, labels: &Labels) -> Result<()> {
        for (k, v) in labels {
            spec::validate::label_key(k).map_err(FleetError::Invalid)?;
            if !v.is_empty() {
                spec::validate::label_value(v).map_err(FleetError::Invalid)?;
            }
        }
        self.update_node(name, |r| {
            for (k, v) in labels {
                if v.is_empty() {
                    r.labels.remove(k);
                } else {
                    r.labels.insert(k.clone(), v.clone());
                }
            }
            let text: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            push_event(
                &mut r.timeline,
                self.now_ms(),
                Stage::Labels,
                text.join(","),
            );
        })?;
        Ok(())
    }

    /// One page of the nodes (and live reservations) matching every
    /// `key=value` filter, in name order. A page holds at most `page_size`
    /// nodes (see `view::page_size`) and ends early before its nodes pass
    /// `MAX_PAGE_BYTES`, so it always fits in one message.
    /// How many nodes have each status, counted as `list_nodes` shows them
    /// (enrolled nodes, then unexpired reservations of names not enrolled):
    /// what `ballast health` sums, for the metrics.
    pub fn status_counts(&self) -> Vec<(Status, u64)> {
        self.overview(0).0
    }

    /// The fleet page in one pass: counts by status (as `status_counts`),
    /// the first `problems` nodes that need attention (failed first, then by
    /// name), and the current revision.
    pub fn overview(&self, problems: usize) -> (Vec<(Status, u64)>, Vec<pb::NodeSummary>, u64) {
        let now = self.now_ms();
        let ages = self.ages();
        let inner = self.lock();
        let mut counts: std::collections::BTreeMap<Status, u64> = Default::default();
        let mut bad: Vec<pb::NodeSummary> = Vec::new();
        let mut failed = 0;
        for n in inner.nodes.values() {
            let view = inner.view_of(n);
            let status = view::status(&view, now, ages);
            *counts.entry(status).or_default() += 1;
            if status.needs_attention() && bad.len() < problems {
                // Failed nodes go before the others, each group in name order.
                if status == Status::Failed {
                    bad.insert(failed, view::summary(&view, now, ages));
                    failed += 1;
                } else {
                    bad.push(view::summary(&view, now, ages));
                }
            } else if status == Status::Failed && failed < problems {
                bad.truncate(problems - 1);
                bad.insert(failed, view::summary(&view, now, ages));
                failed += 1;
            }
        }
        for (name, p) in &inner.pending {
            if p.expires_at_ms > now && !inner.nodes.contains_key(name) {
                let summary = view::pending_summary(p);
                let status = Status::try_from(summary.status)
                    .expect("pending summaries carry a known status");
                *counts.entry(status).or_default() += 1;
                if status.needs_attention() && bad.len() < problems {
                    bad.push(summary);
                }
            }
        }
        (counts.into_iter().collect(), bad, inner.current.number)
    }

    pub fn list_nodes(
        &self,
        filters: &[String],
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListNodesResponse> {
        use prost::Message;
        let filters = view::parse_filters(filters).map_err(FleetError::Invalid)?;
        let after = view::parse_page_token(page_token).map_err(FleetError::Invalid)?;
        let size = view::page_size(page_size);
        let range = || match after {
            Some(a) => (Bound::Excluded(a), Bound::Unbounded),
            None => (Bound::Unbounded, Bound::Unbounded),
        };
        let now = self.now_ms();
        let ages = self.ages();
        let null = serde_json::Value::Null;
        let inner = self.lock();
        let mut nodes = inner.nodes.range::<str, _>(range()).peekable();
        let mut pending = inner
            .pending
            .range::<str, _>(range())
            .filter(|(name, p)| p.expires_at_ms > now && !inner.nodes.contains_key(*name))
            .peekable();
        let mut page = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        loop {
            let take_node = match (nodes.peek(), pending.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((a, _)), Some((b, _))) => a < b,
            };
            let summary = if take_node {
                let (name, n) = nodes.next().expect("peeked");
                if !filters
                    .iter()
                    .all(|(k, v)| view::matches_filter(name, &n.record.labels, &n.facts, k, v))
                {
                    continue;
                }
                view::summary(&inner.view_of(n), now, ages)
            } else {
                let (name, p) = pending.next().expect("peeked");
                if !filters
                    .iter()
                    .all(|(k, v)| view::matches_filter(name, &p.labels, &null, k, v))
                {
                    continue;
                }
                view::pending_summary(p)
            };
            let len = summary.encoded_len() + 8;
            if page.len() == size || (!page.is_empty() && bytes + len > MAX_PAGE_BYTES) {
                more = true;
                break;
            }
            bytes += len;
            page.push(summary);
        }
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => view::page_token(&last.name),
            _ => String::new(),
        };
        Ok(pb::ListNodesResponse {
            nodes: page,
            current_revision: inner.current.number,
            next_page_token,
        })
    }

    pub fn get_node(&self, name: &str) -> Result<pb::NodeDetail> {
        let now = self.now_ms();
        let (summary, facts, timeline, enrolled) = {
            let inner = self.lock();
            match (inner.nodes.get(name), inner.pending.get(name)) {
                (Some(node), _) => (
                    view::summary(&inner.view_of(node), now, self.ages()),
                    node.facts.to_string(),
                    view::merge_timelines(&node.record.timeline, &node.status.timeline),
                    true,
                ),
                (None, Some(p)) if p.expires_at_ms > now => (
                    view::pending_summary(p),
                    "{}".to_owned(),
                    p.timeline.clone(),
                    false,
                ),
                _ => {
                    return Err(FleetError::NotFound(format!(
                        "node {name} does not exist (see ballast nodes)"
                    )));
                }
            }
        };
        let last_report = match enrolled {
            false => None,
            true => match self.store.get(&keys::report(name))? {
                Some(e) => Some(decode_report(&keys::report(name), &e.value)?),
                None => None,
            },
        };
        let host = match enrolled {
            false => None,
            true => self.store.get(&keys::host(name))?.and_then(|e| {
                prost::Message::decode(e.value.as_slice())
                    .inspect_err(|err| tracing::warn!(node = name, error = %err, "stored host figures do not decode; not shown"))
                    .ok()
            }),
        };
        Ok(pb::NodeDetail {
            host,
            summary: Some(summary),
            facts_json: facts,
            last_report,
            timeline: timeline
                .into_iter()
                .map(|e| pb::TimelineEvent {
                    at_ms: e.at_ms,
                    stage: e.stage.as_str().to_owned(),
                    detail: e.detail,
                })
                .collect(),
        })
    }
}
