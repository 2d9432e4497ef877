//! Rollouts: a revision whose spec has a rollout policy (top level, or a
//! node group's own) reaches the fleet wave by wave. The record
//! (`meta/rollouts/{n}`) is created by the apply that stores revision `n`,
//! moved on by the leader's single-owner job ([`Fleet::rollout_step`],
//! fenced) and by operators (pause, resume, abort); every controller
//! follows it and renders each node from its target revision: the new one
//! for nodes of passed and current waves (and nodes no policy paces), the
//! base one for the others ([`TargetRender`]). Each distinct policy is one
//! track with its own waves, bake and budget; a track moves on by itself,
//! and a failure beyond any track's budget pauses the whole rollout.
//!
//! Invariant: a node of wave `k` of a track gets the new revision only once
//! the record says that wave started, and a wave starts only after the one
//! before it passed its gate (every node converged, no more than
//! `max_failed` failed, healthy for `bake_ms` by the fleet's clock). The
//! record is the only state, so a restart or a new leader resumes at the
//! same gates.

use super::records::RevisionRecord;
use super::revisions::{Desired, parse_sources};
pub use super::rollout_record::{Phase, RolloutRecord, TrackState};
use super::{Fleet, FleetError, Inner, Result, from_json, keys, to_json};
use crate::metrics::RolloutEvent;
use crate::store::{Compare, Leadership, Op, Store};
use ballast_proto::pb;
use ballast_proto::spec::{Labels, Spec};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The rollout of the current revision, with the base revision's spec.
pub(super) struct Active {
    pub(super) record: RolloutRecord,
    pub(super) version: u64,
    pub(super) base: Arc<Spec>,
    /// Node name → (track, wave) in `record`, for node views.
    pub(super) placement: HashMap<String, (usize, usize)>,
}

impl Active {
    pub(super) fn new(record: RolloutRecord, version: u64, base: Arc<Spec>) -> Active {
        let mut placement = HashMap::new();
        for (t, track) in record.tracks.iter().enumerate() {
            for (w, names) in track.waves.iter().enumerate() {
                for name in names {
                    placement.insert(name.clone(), (t, w));
                }
            }
        }
        Active {
            record,
            version,
            base,
            placement,
        }
    }
}

/// Reads the rollout of revision `number` and its base revision's spec.
pub(super) fn load_active(store: &dyn Store, number: u64) -> Result<Option<Active>> {
    let key = keys::rollout(number);
    let Some(entry) = store.get(&key)? else {
        return Ok(None);
    };
    let record: RolloutRecord = from_json(&key, &entry.value)?;
    let base = load_spec(store, record.base)?;
    Ok(Some(Active::new(record, entry.version, base)))
}

fn load_spec(store: &dyn Store, number: u64) -> Result<Arc<Spec>> {
    if number == 0 {
        return Ok(Arc::new(Spec::default()));
    }
    let key = keys::revision(number);
    let entry = store
        .get(&key)?
        .ok_or_else(|| anyhow::anyhow!("rollout base revision {number} is not stored"))?;
    let rec: RevisionRecord = from_json(&key, &entry.value)?;
    Ok(Arc::new(parse_sources(&rec.sources).map_err(|e| {
        anyhow::anyhow!("stored revision {number} no longer parses: {e}")
    })?))
}

/// Renders each node from its target revision.
pub(super) struct TargetRender<'a> {
    new: Desired<'a>,
    /// The base revision's renderer and the names that moved off it, while
    /// a rollout is not done.
    base: Option<(Desired<'a>, HashSet<&'a str>)>,
}

impl<'a> TargetRender<'a> {
    pub(super) fn new(spec: &'a Spec, number: u64, rollout: Option<&'a Active>) -> Self {
        let base = rollout.and_then(|a| {
            let r = &a.record;
            let moved = match r.phase {
                Phase::Done => return None,
                Phase::Aborted => HashSet::new(),
                Phase::Running | Phase::Paused => r.moved().collect(),
            };
            Some((Desired::new(&a.base, r.base), moved))
        });
        TargetRender {
            new: Desired::new(spec, number),
            base,
        }
    }

    pub(super) fn of(&mut self, name: &str, labels: &Labels) -> pb::DesiredState {
        match &mut self.base {
            Some((base, moved)) if !moved.contains(name) => base.of(name, labels),
            _ => self.new.of(name, labels),
        }
    }
}

/// Re-renders every node from its target and pushes those that changed;
/// returns their names, sorted.
pub(super) fn retarget(inner: &mut Inner) -> Vec<String> {
    let spec = inner.current.spec.clone();
    let active = inner.rollout.take();
    let mut render = TargetRender::new(&spec, inner.current.number, active.as_ref());
    let mut affected = Vec::new();
    for node in inner.nodes.values_mut() {
        let desired = render.of(&node.record.name, &node.record.labels);
        if desired.hash != node.desired.hash {
            affected.push(node.record.name.clone());
            node.desired = Arc::new(desired);
            if !node.record.revoked {
                node.feed
                    .send_replace(super::Feed::State(node.desired.clone()));
            }
        }
    }
    drop(render);
    inner.rollout = active;
    affected.sort();
    affected
}

/// Counts of one wave's nodes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WaveCounts {
    pub converged: Vec<String>,
    pub failed: Vec<String>,
    pub pending: Vec<String>,
}

pub(super) fn counts(inner: &Inner, names: &[String]) -> WaveCounts {
    let mut c = WaveCounts::default();
    for name in names {
        let Some(node) = inner.nodes.get(name) else {
            continue; // removed from the fleet: nothing to wait for
        };
        if node.record.revoked {
            continue;
        }
        match &node.report {
            Some(r) if r.hash == node.desired.hash && r.failed_count > 0 => {
                c.failed.push(name.clone())
            }
            Some(r) if r.hash == node.desired.hash => c.converged.push(name.clone()),
            _ => c.pending.push(name.clone()),
        }
    }
    c
}

/// What one step does to a running track.
enum Gate {
    /// More failures than the budget: the rollout pauses, with this reason.
    Failed(String),
    /// Nothing to write.
    Wait,
    /// The track changed (bake started or reset, or a wave passed).
    Moved,
}

/// Checks a running track's current wave at `now` and moves it on.
fn gate(inner: &Inner, t: &mut TrackState, now: u64) -> Gate {
    let wave = t.waves.get(t.wave).cloned().unwrap_or_default();
    let c = counts(inner, &wave);
    if c.failed.len() > t.max_failed as usize {
        return Gate::Failed(format!(
            "{} wave {} failed on {} node(s), more than max_failed {}: {}",
            t.policy,
            t.wave + 1,
            c.failed.len(),
            t.max_failed,
            c.failed.join(", ")
        ));
    }
    if !c.pending.is_empty() {
        if t.healthy_since_ms == 0 {
            return Gate::Wait;
        }
        t.healthy_since_ms = 0;
    } else if t.healthy_since_ms == 0 && !c.converged.is_empty() {
        t.healthy_since_ms = now;
    } else if c.converged.is_empty() || now.saturating_sub(t.healthy_since_ms) >= t.bake_ms {
        // Passed (an empty wave has nothing to bake).
        t.wave += 1;
        t.healthy_since_ms = 0;
        t.wave_started_ms = now;
        if t.wave >= t.waves.len() {
            t.wave = t.waves.len().saturating_sub(1);
            t.done = true;
        }
    } else {
        return Gate::Wait;
    }
    Gate::Moved
}

impl Fleet {
    /// Takes a stored rollout record (at `version` or later), from this
    /// controller's write or the watch; re-targets nodes when it changed.
    pub(super) fn apply_rollout(&self, record: RolloutRecord, version: u64) -> Result<()> {
        let known = {
            let inner = self.lock();
            if record.revision != inner.current.number {
                // Older: superseded. Newer: `catch_up_current` reads it with its revision.
                return Ok(());
            }
            match &inner.rollout {
                Some(a) if a.record.revision == record.revision && version <= a.version => {
                    return Ok(());
                }
                Some(a) if a.record.revision == record.revision => Some(a.base.clone()),
                _ => None,
            }
        };
        // The base's sources are read without holding the fleet's lock.
        let base = match known {
            Some(base) => base,
            None => load_spec(self.store.as_ref(), record.base)?,
        };
        let active = Active::new(record, version, base);
        let mut inner = self.lock();
        if active.record.revision != inner.current.number
            || inner.rollout.as_ref().is_some_and(|a| {
                a.record.revision == active.record.revision && version <= a.version
            })
        {
            return Ok(());
        }
        inner.rollout = Some(active);
        retarget(&mut inner);
        Ok(())
    }

    /// The rollout of the current revision, if it has one.
    pub fn rollout_record(&self) -> Option<RolloutRecord> {
        self.lock().rollout.as_ref().map(|a| a.record.clone())
    }

    /// Writes `next` over the record stored at `version` (plus `fence`), then
    /// applies it to memory. False when the record changed meanwhile.
    fn write_rollout(
        &self,
        next: &RolloutRecord,
        version: u64,
        fence: Option<Compare>,
    ) -> Result<bool> {
        let key = keys::rollout(next.revision);
        let mut compares = vec![Compare::Version(key.clone(), version)];
        compares.extend(fence);
        if !self.store.txn(&compares, &[Op::Put(key, to_json(next))])? {
            return Ok(false);
        }
        self.apply_rollout(next.clone(), version + 1)?;
        Ok(true)
    }

    /// One step of the leader's rollout job: checks each running track's
    /// gate and pauses the rollout (a failure beyond a budget: no track
    /// moves on), waits, or moves tracks on. Every write is fenced by
    /// `lead`. Returns the record as written, if it wrote one.
    pub fn rollout_step(&self, lead: &Leadership) -> Result<Option<RolloutRecord>> {
        let now = self.now_ms();
        let mut events = Vec::new();
        let (next, version) = {
            let inner = self.lock();
            let Some(a) = &inner.rollout else {
                return Ok(None);
            };
            if a.record.phase != Phase::Running {
                return Ok(None);
            }
            let mut next = a.record.clone();
            let mut moved = false;
            let mut failed = Vec::new();
            for t in next.tracks.iter_mut().filter(|t| !t.done) {
                match gate(&inner, t, now) {
                    Gate::Failed(why) => failed.push(why),
                    Gate::Wait => {}
                    Gate::Moved => moved = true,
                }
            }
            // A wave passed moves its track on, or ends it at its last wave.
            for (was, now) in a.record.tracks.iter().zip(&next.tracks) {
                let passed = now.wave - was.wave.min(now.wave) + usize::from(now.done && !was.done);
                events.extend(std::iter::repeat_n(RolloutEvent::WavePassed, passed));
            }
            if !failed.is_empty() {
                events = vec![RolloutEvent::PausedByFailure];
                // Nothing moves on: the tracks as they were, paused.
                next = a.record.clone();
                next.phase = Phase::Paused;
                next.gate_failed = true;
                next.reason = failed.join("; ");
                for t in &mut next.tracks {
                    t.healthy_since_ms = 0;
                }
            } else if next.tracks.iter().all(|t| t.done) {
                events.push(RolloutEvent::Done);
                next.phase = Phase::Done;
                next.reason.clear();
            } else if !moved {
                return Ok(None);
            } else {
                next.reason.clear();
            }
            (next, a.version)
        };
        if !lead.is_held() {
            return Ok(None);
        }
        match self.write_rollout(&next, version, Some(lead.fence()))? {
            true => {
                for event in events {
                    self.metrics.rollout_event(event);
                }
                tracing::info!(
                    revision = next.revision,
                    waves = %next
                        .tracks
                        .iter()
                        .map(|t| format!("{}={}", t.policy, t.wave + 1))
                        .collect::<Vec<_>>()
                        .join(","),
                    phase = next.phase.as_str(),
                    "rollout moved"
                );
                Ok(Some(next))
            }
            false => Ok(None),
        }
    }

    /// Pause, resume or abort the rollout of the current revision.
    pub fn rollout_control(
        &self,
        action: pb::RolloutAction,
        author: &str,
    ) -> Result<pb::RolloutStatus> {
        for _ in 0..super::OPERATOR_TRIES {
            let (mut next, version) = {
                let inner = self.lock();
                let a = inner.rollout.as_ref().ok_or_else(|| {
                    FleetError::NotFound(format!(
                        "revision {} has no rollout (its spec has no rollout policy)",
                        inner.current.number
                    ))
                })?;
                (a.record.clone(), a.version)
            };
            let (allowed, phase, verb) = match action {
                pb::RolloutAction::Pause => (next.phase == Phase::Running, Phase::Paused, "paused"),
                pb::RolloutAction::Resume => {
                    (next.phase == Phase::Paused, Phase::Running, "resumed")
                }
                pb::RolloutAction::Abort => (
                    next.in_flight() && next.phase != Phase::Aborted,
                    Phase::Aborted,
                    "aborted",
                ),
                pb::RolloutAction::Unspecified => {
                    return Err(FleetError::Invalid(
                        "give an action: pause, resume or abort".into(),
                    ));
                }
            };
            if !allowed {
                return Err(FleetError::Conflict(format!(
                    "the rollout of revision {} is {}: it cannot be {verb}",
                    next.revision,
                    next.phase.as_str()
                )));
            }
            next.phase = phase;
            next.gate_failed = false;
            for t in &mut next.tracks {
                t.healthy_since_ms = 0;
            }
            next.reason = format!("{verb} by {author}");
            if self.write_rollout(&next, version, None)? {
                match action {
                    pb::RolloutAction::Pause => {
                        self.metrics.rollout_event(RolloutEvent::PausedByOperator)
                    }
                    pb::RolloutAction::Abort => self.metrics.rollout_event(RolloutEvent::Aborted),
                    _ => {}
                }
                return Ok(self.rollout_status().unwrap_or_default());
            }
        }
        Err(FleetError::Conflict(
            "the rollout kept changing; retry".into(),
        ))
    }

    /// The rollout an apply of `spec` as revision `number` starts, with its
    /// base spec: none without a policy (every node at once). A new apply
    /// supersedes a rollout in flight and keeps its base: nodes not yet
    /// moved never see the superseded revision.
    pub(super) fn start_rollout(
        &self,
        spec: &Spec,
        number: u64,
    ) -> Option<(RolloutRecord, Arc<Spec>)> {
        if !spec.has_rollout() {
            return None;
        }
        let inner = self.lock();
        let (base, base_spec) = match &inner.rollout {
            Some(a) if a.record.in_flight() => (a.record.base, a.base.clone()),
            _ => (inner.current.number, inner.current.spec.clone()),
        };
        let nodes: Vec<(&str, &Labels)> = inner
            .nodes
            .values()
            .filter(|n| !n.record.revoked)
            .map(|n| (n.record.name.as_str(), &n.record.labels))
            .collect();
        Some((
            RolloutRecord::new(number, base, spec, &nodes, self.now_ms()),
            base_spec,
        ))
    }

    /// The rollout an apply just stored, with its store version.
    pub(super) fn stored_rollout(
        &self,
        started: Option<(RolloutRecord, Arc<Spec>)>,
    ) -> Result<Option<Active>> {
        let Some((record, base)) = started else {
            return Ok(None);
        };
        let version = self
            .store
            .get(&keys::rollout(record.revision))?
            .map(|e| e.version)
            .unwrap_or(0);
        Ok(Some(Active::new(record, version, base)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::records::NodeRecord;
    use super::super::{Clock, Liveness};
    use super::*;
    use crate::store::RedbStore;
    use std::time::Duration;

    fn site(content: &str, policy: bool) -> Vec<(String, String)> {
        let rollout = if policy {
            "rollout: {waves: [{match: {env: dev}}]}\n"
        } else {
            ""
        };
        let text = format!(
            "roles:\n  r:\n    files: [{{path: /etc/v, content: {content}}}]\ngroups:\n  all: {{roles: [r]}}\n{rollout}"
        );
        vec![("s.yaml".to_owned(), text)]
    }

    /// A store holding two enrolled nodes, `dev-1` (env=dev) and `prod-1`
    /// (env=prod); the temp dir lives as long as the returned guard.
    fn dev_and_prod() -> (tempfile::TempDir, Arc<RedbStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let ops: Vec<Op> = [("dev-1", "dev"), ("prod-1", "prod")]
            .iter()
            .map(|(name, env)| {
                let rec = NodeRecord {
                    name: (*name).into(),
                    labels: [("env".to_owned(), (*env).to_owned())].into(),
                    cert_serial: format!("{name}-serial"),
                    enrolled_at_ms: 1,
                    revoked: false,
                    timeline: Vec::new(),
                    last_seen_ms: 0,
                };
                Op::Put(keys::node(name), to_json(&rec))
            })
            .collect();
        assert!(store.txn(&[], &ops).unwrap());
        (dir, store)
    }

    fn desired(fleet: &Fleet) -> Vec<(String, u64)> {
        let inner = fleet.lock();
        inner
            .nodes
            .values()
            .map(|n| (n.record.name.clone(), n.desired.revision))
            .collect()
    }

    /// A new apply in flight keeps the rollout's base: prod, not yet moved,
    /// never gets the superseded revision 2; a reopened fleet (a restart)
    /// renders the same targets from the stored record.
    #[test]
    fn a_new_apply_supersedes_a_rollout_and_keeps_its_base() {
        let (_dir, store) = dev_and_prod();
        let open = || {
            Fleet::open(
                store.clone(),
                Duration::from_secs(60),
                Liveness::default(),
                Clock::manual(),
            )
            .unwrap()
        };
        let fleet = open();
        fleet.apply(site("one", false), "t", "m", 0, true).unwrap();
        let two = fleet.apply(site("two", true), "t", "m", 0, true).unwrap();
        assert_eq!(two.affected_nodes, ["dev-1"]);
        assert_eq!(desired(&fleet), [("dev-1".into(), 2), ("prod-1".into(), 1)]);
        fleet.apply(site("three", true), "t", "m", 0, true).unwrap();
        assert_eq!(desired(&fleet), [("dev-1".into(), 3), ("prod-1".into(), 1)]);
        assert_eq!(
            fleet.rollout_outcomes(&[1, 2, 3]),
            [None, Some("superseded"), Some("running")],
            "revision 1 had no rollout; 2's was in flight when 3 was applied"
        );
        let r = fleet.rollout_record().unwrap();
        assert_eq!((r.revision, r.base, r.phase), (3, 1, Phase::Running));
        assert_eq!(
            r.tracks[0].waves,
            [vec!["dev-1".to_owned()], vec!["prod-1".to_owned()]]
        );
        assert_eq!(
            desired(&open()),
            [("dev-1".into(), 3), ("prod-1".into(), 1)]
        );

        fleet
            .rollout_control(pb::RolloutAction::Abort, "t")
            .unwrap();
        assert_eq!(desired(&fleet), [("dev-1".into(), 1), ("prod-1".into(), 1)]);
        // Without a policy, every node at once, as before rollouts existed.
        fleet.apply(site("four", false), "t", "m", 0, true).unwrap();
        assert_eq!(desired(&fleet), [("dev-1".into(), 4), ("prod-1".into(), 4)]);
        assert!(fleet.rollout_record().is_none());
        // How each rollout ended stays readable after later revisions.
        assert_eq!(
            fleet.rollout_outcomes(&[2, 3, 4]),
            [Some("superseded"), Some("aborted"), None]
        );
    }

    /// Each transition is counted once, by the controller that wrote it:
    /// the start at apply, waves and the end by the leader's step, pause
    /// and abort by the operator's call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rollout_transitions_are_counted_where_they_are_written() {
        let (_dir, store) = dev_and_prod();
        let lead = store
            .try_lead("leader", "t", Duration::from_secs(10))
            .unwrap()
            .expect("the only holder leads");
        let clock = Clock::manual();
        let fleet = Arc::new(
            Fleet::open(
                store.clone(),
                Duration::from_secs(60),
                Liveness::default(),
                clock.clone(),
            )
            .unwrap(),
        );
        // Memory learns a written record's exact store version from the
        // watch; until then the next step's compare fails and it retries.
        let followers = fleet.follow_store();
        // Steps until `done` holds, past any bake; a step that wrote
        // nothing is followed by a day of the manual clock.
        let step_until = |done: &dyn Fn(&RolloutRecord) -> bool| {
            for _ in 0..500 {
                if done(&fleet.rollout_record().unwrap()) {
                    return;
                }
                if fleet.rollout_step(&lead).unwrap().is_none() {
                    clock.advance(Duration::from_secs(86_400));
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            panic!("the rollout never got there: {:?}", fleet.rollout_record());
        };
        let converge = |name: &str| {
            let (revision, hash) = {
                let inner = fleet.lock();
                let d = &inner.nodes[name].desired;
                (d.revision, d.hash.clone())
            };
            let report = pb::RunReport {
                revision,
                state_hash: hash,
                trigger: pb::Trigger::Change as i32,
                ..Default::default()
            };
            fleet
                .report(name, report.try_into().expect("a valid report"))
                .unwrap();
        };
        let metrics = || fleet.metrics().render(&[]);
        fleet.apply(site("one", false), "t", "m", 0, true).unwrap();
        fleet.apply(site("two", true), "t", "m", 0, true).unwrap();
        assert!(metrics().contains("ballast_rollouts_started_total 1"));
        // Wave 1 (dev) converges, bakes (no bake time), passes.
        converge("dev-1");
        step_until(&|r| r.tracks[0].wave == 1);
        assert!(
            metrics().contains("ballast_rollout_waves_passed_total 1"),
            "{}",
            metrics()
        );
        converge("prod-1");
        step_until(&|r| r.phase == Phase::Done);
        let text = metrics();
        assert!(
            text.contains("ballast_rollout_waves_passed_total 2"),
            "{text}"
        );
        assert!(
            text.contains("ballast_rollouts_total{outcome=\"done\"} 1"),
            "{text}"
        );
        // Nothing more to do: a done rollout's step writes and counts nothing.
        assert!(fleet.rollout_step(&lead).unwrap().is_none());

        fleet.apply(site("three", true), "t", "m", 0, true).unwrap();
        fleet
            .rollout_control(pb::RolloutAction::Pause, "t")
            .unwrap();
        fleet
            .rollout_control(pb::RolloutAction::Abort, "t")
            .unwrap();
        let text = metrics();
        assert!(text.contains("ballast_rollouts_started_total 2"), "{text}");
        assert!(
            text.contains("ballast_rollout_pauses_total{by=\"operator\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ballast_rollouts_total{outcome=\"aborted\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ballast_rollout_waves_passed_total 2"),
            "{text}"
        );
        for f in followers {
            f.abort();
        }
    }
}
