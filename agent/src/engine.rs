//! The reconcile engine: one contract for every resource kind, a fixed order,
//! and a report of what happened to each resource.
//!
//! Invariants: a dry run (`noop`) is observe + diff, the same code as a real
//! run, so it cannot lie; a failed resource is an outcome, never an abort;
//! resources that depend on a failed one are skipped; the engine only removes
//! what it once created (the managed record, kept by `state`). The two
//! batches (packages, files) are in `engine_batch.rs`.

use crate::host::Host;
use crate::state::{Managed, StateDir};
use ballast_proto::enums::Trigger;
use ballast_proto::pb;
use ballast_proto::spec::{Kind, NodeState, Resource as Spec};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

#[path = "engine_batch.rs"]
mod batch;
use batch::{run_files, run_packages};

/// The contract every kind implements (see STYLE.md).
pub trait Resource {
    /// What the host has now, absence included.
    type State;
    /// One step, as an operator reads it.
    type Change: std::fmt::Display;
    fn id(&self) -> String;
    /// Reads only.
    fn observe(&self, host: &Host) -> anyhow::Result<Self::State>;
    /// Pure: what must change to go from `actual` to desired.
    fn diff(&self, actual: &Self::State) -> Vec<Self::Change>;
    /// Makes exactly these changes. Returns the `sha256:HEX` of content it
    /// backed up before replacing or deleting it, if any.
    fn apply(
        &self,
        host: &Host,
        actual: &Self::State,
        changes: &[Self::Change],
    ) -> anyhow::Result<Option<String>>;
    /// Whether a change creates the thing: only what the agent created is
    /// removed when it later leaves the desired state.
    fn creates(_change: &Self::Change) -> bool {
        false
    }
    /// Pure: the content diff these changes make, for kinds with content
    /// (files), bounded (see `ballast_proto::diff`).
    fn content_diff(&self, _actual: &Self::State, _changes: &[Self::Change]) -> Option<String> {
        None
    }
}

pub struct RunOptions<'a> {
    pub noop: bool,
    pub state_dir: &'a StateDir,
    pub facts: &'a serde_json::Value,
}

/// One closed set with the wire's (`ballast_proto::enums`).
pub use ballast_proto::enums::Outcome;

#[derive(Debug, Clone)]
pub struct ResourceReport {
    pub id: String,
    pub outcome: Outcome,
    pub changes: Vec<String>,
    pub error: Option<String>,
    pub backup: Option<String>,
    /// The run created the thing (see [`Resource::creates`]).
    pub created: bool,
    /// The content diff of the changes (see [`Resource::content_diff`]).
    pub diff: Option<String>,
}

impl ResourceReport {
    fn new(
        id: String,
        outcome: Outcome,
        changes: Vec<String>,
        error: Option<String>,
    ) -> ResourceReport {
        ResourceReport {
            id,
            outcome,
            changes,
            error,
            backup: None,
            created: false,
            diff: None,
        }
    }

    fn failed(id: String, e: &anyhow::Error) -> ResourceReport {
        ResourceReport::new(id, Outcome::Failed, Vec::new(), Some(format!("{e:#}")))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub resources: Vec<ResourceReport>,
    pub duration: Duration,
}

impl Report {
    pub fn changed(&self) -> usize {
        self.resources
            .iter()
            .filter(|r| r.outcome == Outcome::Changed)
            .count()
    }

    pub fn failed(&self) -> usize {
        self.resources
            .iter()
            .filter(|r| r.outcome == Outcome::Failed)
            .count()
    }

    pub fn to_pb(
        &self,
        revision: u64,
        state_hash: &str,
        started_at_ms: u64,
        noop: bool,
        trigger: Trigger,
    ) -> pb::RunReport {
        pb::RunReport {
            revision,
            state_hash: state_hash.to_owned(),
            started_at_ms,
            duration_ms: self.duration.as_millis() as u64,
            noop,
            trigger: trigger.into(),
            // Only agents from before the enum send this.
            legacy_trigger: String::new(),
            resources: self
                .resources
                .iter()
                .map(|r| pb::ResourceOutcome {
                    id: r.id.clone(),
                    outcome: r.outcome.into(),
                    changes: r.changes.clone(),
                    error: r.error.clone().unwrap_or_default(),
                    backup: r.backup.clone().unwrap_or_default(),
                    diff: r.diff.clone().unwrap_or_default(),
                })
                .collect(),
        }
    }
}

/// A resource's report so far, and what a real run must still apply (the
/// observed state and the changes), if anything.
type Plan<R> = (
    ResourceReport,
    Option<(<R as Resource>::State, Vec<<R as Resource>::Change>)>,
);

/// Observes and diffs one resource: the report a dry run gives. Every kind
/// goes through here, alone ([`run`]) or batched (files, packages).
fn plan<R: Resource>(r: &R, host: &Host) -> Plan<R> {
    let id = r.id();
    let actual = match r.observe(host) {
        Ok(a) => a,
        Err(e) => return (ResourceReport::failed(id, &e), None),
    };
    let changes = r.diff(&actual);
    if changes.is_empty() {
        return (
            ResourceReport::new(id, Outcome::Unchanged, Vec::new(), None),
            None,
        );
    }
    let text: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
    let created = changes.iter().any(R::creates);
    let diff = r.content_diff(&actual, &changes);
    (
        ResourceReport {
            created,
            diff,
            ..ResourceReport::new(id, Outcome::Changed, text, None)
        },
        Some((actual, changes)),
    )
}

impl ResourceReport {
    /// The planned changes were made: log them.
    fn applied(&self) {
        for c in &self.changes {
            tracing::info!(id = %self.id, change = %c, "applied");
        }
    }

    /// Applying the planned changes failed.
    fn fail(&mut self, e: &anyhow::Error) {
        self.outcome = Outcome::Failed;
        self.error = Some(format!("{e:#}"));
        self.backup = None;
        // Nothing changed: no diff of a change.
        self.diff = None;
    }
}

/// Runs one resource: observe, diff, and (unless noop) apply.
fn run<R: Resource>(r: &R, host: &Host, noop: bool) -> ResourceReport {
    let (mut report, todo) = plan(r, host);
    let Some((actual, changes)) = todo.filter(|_| !noop) else {
        return report;
    };
    match r.apply(host, &actual, &changes) {
        Ok(backup) => {
            report.applied();
            report.backup = backup;
        }
        Err(e) => report.fail(&e),
    }
    report
}

/// Notes in the managed record what a run did: what it created (and, for
/// services, every service it ran), and forgets what it removed.
fn record(managed: &mut Managed, spec: &Spec, report: &ResourceReport) {
    let id = report.id.clone();
    if spec.is_absent() {
        managed.resources.remove(&id);
        if let Spec::Service(s) = spec {
            managed.units.remove(&s.name);
        }
        return;
    }
    if let Spec::Service(s) = spec {
        managed
            .resources
            .insert(id, (Kind::Service, s.name.clone()));
        if report.created {
            managed.units.insert(s.name.clone());
        }
    } else if report.created && report.outcome == Outcome::Changed {
        managed
            .resources
            .insert(id, (spec.kind(), spec.key().to_owned()));
    }
}

/// Context the kinds need beyond the host.
pub struct Context<'a> {
    pub state_dir: &'a StateDir,
    pub facts: &'a serde_json::Value,
    pub node: &'a ballast_proto::spec::NodeMeta,
}

fn run_one(
    spec: &Spec,
    host: &Host,
    cx: &Context<'_>,
    noop: bool,
    pending: &BTreeSet<String>,
    gone_users: &BTreeSet<String>,
    owned_units: &BTreeSet<String>,
) -> ResourceReport {
    match spec {
        Spec::File(f) => match crate::file::FileRes::new(f, cx) {
            Ok(r) => run(&r, host, noop),
            Err(e) => ResourceReport::failed(spec.id(), &e),
        },
        Spec::Directory(d) => run(&crate::directory::DirRes { spec: d }, host, noop),
        Spec::Symlink(s) => run(&crate::symlink::SymlinkRes { spec: s }, host, noop),
        Spec::Group(g) => run(
            &crate::group::GroupRes {
                spec: g,
                gone_users,
            },
            host,
            noop,
        ),
        Spec::User(u) => run(&crate::user::UserRes { spec: u }, host, noop),
        Spec::Cron(c) => run(&crate::cron::CronRes { spec: c }, host, noop),
        Spec::Sysctl(k) => run(&crate::sysctl::SysctlRes { spec: k }, host, noop),
        Spec::Service(s) => run(
            &crate::service::ServiceRes {
                spec: s,
                restart_pending: pending.contains(&s.name),
                owns_unit: owned_units.contains(&s.name),
            },
            host,
            noop,
        ),
        // The engine runs packages as one batch (see run_packages); alone,
        // a package is its own transaction.
        Spec::Package(p) => run(
            &crate::package::PackageRes {
                spec: p,
                facts: cx.facts,
            },
            host,
            noop,
        ),
    }
}

/// Whether something of another kind now sits where a departed resource
/// was: it is not ours to remove (the agent removes only what it created).
fn replaced_by_other(spec: &Spec, host: &Host) -> bool {
    use crate::host::Kind as On;
    let (path, want) = match spec {
        Spec::File(f) => (f.path.clone(), On::File),
        Spec::Directory(d) => (d.path.clone(), On::Dir),
        Spec::Symlink(l) => (l.path.clone(), On::Symlink),
        Spec::Cron(c) => (crate::cron::path_of(&c.name), On::File),
        _ => return false,
    };
    matches!(host.lstat(&path), Ok(Some(m)) if m.kind != want)
}

/// Where a resource runs before `requires` are honoured: what is to exist
/// in kind order; then what is to be removed in the reverse kind order,
/// deepest path first (a user before its primary group, a file before its
/// directory); services last, so a restart sees every change of the run.
fn phase(r: &Spec) -> (u8, usize, std::cmp::Reverse<String>) {
    use std::cmp::Reverse;
    match r {
        r if r.is_absent() => (1, r.kind().remove_rank(), Reverse(r.key().to_owned())),
        Spec::Service(_) => (2, 0, Reverse(String::new())),
        r => (0, r.order(), Reverse(String::new())),
    }
}

/// The run order: [`phase`] order (stable, so present resources keep their
/// key order), except that a resource runs after everything it depends on,
/// declared or implicit (`spec::dependencies`; a stable topological sort;
/// validation refused cycles). `needs` and the result are indices into
/// `resources` (see `spec::dependency_indices`).
fn order(resources: &[&Spec], needs: &[Vec<usize>]) -> Vec<usize> {
    let mut sorted: Vec<usize> = (0..resources.len()).collect();
    sorted.sort_by_cached_key(|&i| phase(resources[i]));
    let mut state = vec![0u8; resources.len()];
    let mut out = Vec::with_capacity(resources.len());
    // 0 = new, 1 = in progress (a cycle here is ignored: validation refuses them), 2 = placed.
    fn visit(i: usize, needs: &[Vec<usize>], state: &mut [u8], out: &mut Vec<usize>) {
        if state[i] != 0 {
            return;
        }
        state[i] = 1;
        for &d in &needs[i] {
            visit(d, needs, state, out);
        }
        state[i] = 2;
        out.push(i);
    }
    for i in sorted {
        visit(i, needs, &mut state, &mut out);
    }
    out
}

/// Brings the host to `state` in the run order (see [`order`]), and removes
/// what the engine created earlier that is no longer desired: that is the
/// same kind run with `ensure: absent`, in the same order, so a dry run
/// walks exactly the steps of a real one.
pub fn reconcile(state: &NodeState, host: &Host, opts: &RunOptions<'_>) -> Report {
    let started = Instant::now();
    let cx = Context {
        state_dir: opts.state_dir,
        facts: opts.facts,
        node: &state.node,
    };
    host.begin_run();
    // A dry run only reads the state dir: it may not even be allowed to write.
    if !opts.noop {
        opts.state_dir.remove_orphans();
    }
    let (mut managed, stored) = opts.state_dir.load_managed();
    let desired: BTreeSet<String> = state.resources.iter().map(|r| r.id()).collect();
    // What left the desired state and the agent created: removed by its kind.
    let departed: Vec<Spec> = managed
        .resources
        .iter()
        .filter(|(id, _)| !desired.contains(*id))
        .map(|(_, (kind, key))| Spec::absent(*kind, key))
        .collect();
    let departed_ids: BTreeSet<String> = departed.iter().map(|r| r.id()).collect();
    let all: Vec<&Spec> = state.resources.iter().chain(&departed).collect();
    let mut reports = Vec::with_capacity(all.len());
    let mut broken: BTreeSet<String> = BTreeSet::new();
    let mut pending = opts.state_dir.load_pending();
    // Users this run removed (or, in a dry run, would have removed by now).
    let mut gone_users: BTreeSet<String> = BTreeSet::new();
    let mut package_reports: Option<BTreeMap<String, ResourceReport>> = None;
    let mut file_reports: Option<BTreeMap<String, ResourceReport>> = None;
    let needs = ballast_proto::spec::dependency_indices(&all);
    // By index into `all`: what has run so far this run, and what of it
    // failed or was skipped.
    let mut done = vec![false; all.len()];
    let mut failed = vec![false; all.len()];
    for i in order(&all, &needs) {
        let spec = all[i];
        let id = spec.id();
        let is_departed = departed_ids.contains(&id);
        let blocked = needs[i]
            .iter()
            .find(|&&j| failed[j])
            .map(|&j| all[j].id())
            .or_else(|| {
                // A path below a directory that failed cannot be right either.
                match spec {
                    Spec::File(_) | Spec::Directory(_) | Spec::Symlink(_) => {
                        let key = spec.key();
                        broken
                            .iter()
                            .find(|b| {
                                b.strip_prefix("directory[")
                                    .and_then(|p| p.strip_suffix(']'))
                                    .is_some_and(|dir| key.starts_with(&format!("{dir}/")))
                            })
                            .cloned()
                    }
                    _ => None,
                }
            });
        // Ready: everything it depends on has run this run, and none failed.
        let ready = |i: usize| needs[i].iter().all(|&j| done[j] && !failed[j]);
        // The first package (file) starts every ready package (independent
        // file) at once: packages in one apt transaction, files staged and
        // committed together (see run_packages, run_files). One left out
        // runs alone in its turn.
        let batched = match spec {
            _ if blocked.is_some() => None,
            Spec::Package(_) => package_reports
                .get_or_insert_with(|| {
                    let ready: Vec<&ballast_proto::spec::Package> = all
                        .iter()
                        .enumerate()
                        .filter_map(|(i, r)| match r {
                            Spec::Package(p) if ready(i) => Some(p),
                            _ => None,
                        })
                        .collect();
                    run_packages(&ready, host, opts.facts, opts.noop)
                        .into_iter()
                        .map(|r| (r.id.clone(), r))
                        .collect()
                })
                .remove(&id),
            Spec::File(_) if spec.requires().is_empty() && !spec.is_absent() => file_reports
                .get_or_insert_with(|| run_files(&all, host, &cx, opts.noop, &broken, &ready))
                .remove(&id),
            _ => None,
        };
        let mut report = match (blocked, batched) {
            (Some(dep), _) => ResourceReport::new(
                id.clone(),
                Outcome::Skipped,
                Vec::new(),
                Some(format!("skipped: {dep} failed")),
            ),
            (None, Some(report)) => report,
            // Something else is there now: not ours to remove.
            (None, None) if is_departed && replaced_by_other(spec, host) => {
                ResourceReport::new(id.clone(), Outcome::Unchanged, Vec::new(), None)
            }
            (None, None) => run_one(
                spec,
                host,
                &cx,
                opts.noop,
                &pending,
                &gone_users,
                &managed.units,
            ),
        };
        if matches!(report.outcome, Outcome::Failed | Outcome::Skipped) {
            broken.insert(id.clone());
            failed[i] = true;
        }
        done[i] = true;
        // A dry run creates and removes nothing: it notes what it would
        // have done by now, so later steps judge the host as a real run would.
        if opts.noop && report.created {
            match spec {
                Spec::User(u) => host.assume_created(&u.name, false),
                Spec::Group(g) => host.assume_created(&g.name, true),
                Spec::Directory(d) => host.assume_dir(&d.path),
                _ => {}
            }
        }
        if let Spec::User(u) = spec
            && spec.is_absent()
            && report.outcome == Outcome::Changed
        {
            gone_users.insert(u.name.clone());
        }
        // A change to something that notifies services owes them a restart;
        // it is written down before going on, so a later failure cannot lose it.
        let notify = spec.notify();
        if report.outcome == Outcome::Changed && !notify.is_empty() {
            pending.extend(notify.iter().cloned());
            if !opts.noop {
                opts.state_dir.store_pending(&pending);
            }
        }
        if let Spec::Service(s) = spec
            && matches!(report.outcome, Outcome::Changed | Outcome::Unchanged)
            && pending.remove(&s.name)
            && !opts.noop
        {
            opts.state_dir.store_pending(&pending);
        }
        let done = !matches!(report.outcome, Outcome::Failed | Outcome::Skipped);
        if !opts.noop && done {
            record(&mut managed, spec, &report);
        }
        if is_departed {
            if report.outcome == Outcome::Unchanged {
                continue;
            }
            for c in &mut report.changes {
                c.push_str(" (no longer in desired state)");
            }
        }
        reports.push(report);
    }
    // A restart owed to a service the node no longer declares can never be
    // made: drop it rather than keep it forever.
    let before = pending.len();
    pending.retain(|s| desired.contains(&format!("service[{s}]")));
    if pending.len() != before && !opts.noop {
        opts.state_dir.store_pending(&pending);
    }
    if let Err(e) = host.sync_dirs() {
        tracing::error!(error = %format!("{e:#}"), "could not make this run's changes durable");
    }
    if !opts.noop {
        opts.state_dir.store_managed(&mut managed, &stored);
    }
    Report {
        resources: reports,
        duration: started.elapsed(),
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
