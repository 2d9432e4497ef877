//! The reconcile engine: one contract for every resource kind, a fixed order,
//! and a report of what happened to each resource.
//!
//! Invariants: a dry run (`noop`) is observe + diff, the same code as a real
//! run, so it cannot lie; a failed resource is an outcome, never an abort;
//! resources that depend on a failed one are skipped; the engine only removes
//! what it once created (the managed record).

use crate::cache::write_atomic;
use crate::host::Host;
use ballast_proto::pb;
use ballast_proto::spec::{NodeState, Resource as Spec};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

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
}

pub struct RunOptions<'a> {
    pub noop: bool,
    pub state_dir: &'a Path,
    pub facts: &'a serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Changed,
    Failed,
    Skipped,
}

impl Outcome {
    pub fn to_pb(self) -> pb::Outcome {
        match self {
            Outcome::Unchanged => pb::Outcome::Unchanged,
            Outcome::Changed => pb::Outcome::Changed,
            Outcome::Failed => pb::Outcome::Failed,
            Outcome::Skipped => pb::Outcome::Skipped,
        }
    }

    pub fn from_pb(o: i32) -> Outcome {
        match pb::Outcome::try_from(o) {
            Ok(pb::Outcome::Changed) => Outcome::Changed,
            Ok(pb::Outcome::Failed) => Outcome::Failed,
            Ok(pb::Outcome::Skipped) => Outcome::Skipped,
            _ => Outcome::Unchanged,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ResourceReport {
    pub id: String,
    pub outcome: Outcome,
    pub changes: Vec<String>,
    pub error: Option<String>,
    pub backup: Option<String>,
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
        trigger: &str,
    ) -> pb::RunReport {
        pb::RunReport {
            revision,
            state_hash: state_hash.to_owned(),
            started_at_ms,
            duration_ms: self.duration.as_millis() as u64,
            noop,
            trigger: trigger.to_owned(),
            resources: self
                .resources
                .iter()
                .map(|r| pb::ResourceOutcome {
                    id: r.id.clone(),
                    outcome: r.outcome.to_pb() as i32,
                    changes: r.changes.clone(),
                    error: r.error.clone().unwrap_or_default(),
                    backup: r.backup.clone().unwrap_or_default(),
                })
                .collect(),
        }
    }
}

/// Runs one resource: observe, diff, and (unless noop) apply.
fn run<R: Resource>(r: &R, host: &Host, noop: bool) -> ResourceReport {
    let id = r.id();
    let actual = match r.observe(host) {
        Ok(a) => a,
        Err(e) => {
            return ResourceReport {
                id,
                outcome: Outcome::Failed,
                changes: Vec::new(),
                error: Some(format!("{e:#}")),
                backup: None,
            };
        }
    };
    let changes = r.diff(&actual);
    let text: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
    if changes.is_empty() {
        return ResourceReport {
            id,
            outcome: Outcome::Unchanged,
            changes: text,
            error: None,
            backup: None,
        };
    }
    if noop {
        return ResourceReport {
            id,
            outcome: Outcome::Changed,
            changes: text,
            error: None,
            backup: None,
        };
    }
    match r.apply(host, &actual, &changes) {
        Ok(backup) => {
            for c in &text {
                tracing::info!(id = %id, change = %c, "applied");
            }
            ResourceReport {
                id,
                outcome: Outcome::Changed,
                changes: text,
                error: None,
                backup,
            }
        }
        Err(e) => ResourceReport {
            id,
            outcome: Outcome::Failed,
            changes: text,
            error: Some(format!("{e:#}")),
            backup: None,
        },
    }
}

/// What the engine created and may therefore remove, kept in the state dir.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Managed {
    format: u32,
    /// id → (kind, key)
    resources: BTreeMap<String, (String, String)>,
}

const MANAGED_FILE: &str = "managed.json";

fn load_managed(state_dir: &Path) -> (Managed, Vec<u8>) {
    match std::fs::read(state_dir.join(MANAGED_FILE)) {
        Ok(bytes) => {
            let managed = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "ignoring an unreadable managed record; nothing will be removed this run");
                Managed::default()
            });
            (managed, bytes)
        }
        Err(_) => (Managed::default(), Vec::new()),
    }
}

/// Context the kinds need beyond the host.
pub struct Context<'a> {
    pub state_dir: &'a Path,
    pub facts: &'a serde_json::Value,
    pub node: &'a ballast_proto::spec::NodeMeta,
}

fn run_one(spec: &Spec, host: &Host, cx: &Context<'_>, noop: bool) -> ResourceReport {
    let failed = |id: String, e: anyhow::Error| ResourceReport {
        id,
        outcome: Outcome::Failed,
        changes: Vec::new(),
        error: Some(format!("{e:#}")),
        backup: None,
    };
    match spec {
        Spec::File(f) => match crate::file::FileRes::new(f, cx) {
            Ok(r) => run(&r, host, noop),
            Err(e) => failed(spec.id(), e),
        },
        Spec::Directory(d) => run(&crate::directory::DirRes { spec: d }, host, noop),
        Spec::Symlink(s) => run(&crate::symlink::SymlinkRes { spec: s }, host, noop),
        other => failed(
            other.id(),
            anyhow::anyhow!(
                "resource kind {} is not supported by this agent version",
                other.kind()
            ),
        ),
    }
}

/// Removes something the engine created that left the desired state.
fn remove_one(kind: &str, key: &str, host: &Host, cx: &Context<'_>, noop: bool) -> ResourceReport {
    let id = format!("{kind}[{key}]");
    let result = (|| -> anyhow::Result<Option<(String, Option<String>)>> {
        let Some(meta) = host.lstat(key)? else {
            return Ok(None);
        };
        use crate::host::Kind;
        match (kind, meta.kind) {
            ("file", Kind::File) => {
                if noop {
                    return Ok(Some((
                        "remove file (no longer in desired state)".into(),
                        None,
                    )));
                }
                let backup = crate::file::backup(host, cx.state_dir, key, meta.size)?;
                host.unlink(key)?;
                Ok(Some((
                    "remove file (no longer in desired state)".into(),
                    backup,
                )))
            }
            ("symlink", Kind::Symlink) => {
                if !noop {
                    host.unlink(key)?;
                }
                Ok(Some((
                    "remove symlink (no longer in desired state)".into(),
                    None,
                )))
            }
            ("directory", Kind::Dir) => {
                if !noop {
                    host.rmdir(key)?;
                }
                Ok(Some((
                    "remove empty directory (no longer in desired state)".into(),
                    None,
                )))
            }
            // Something else is there now: not ours to remove.
            _ => Ok(None),
        }
    })();
    match result {
        Ok(None) => ResourceReport {
            id,
            outcome: Outcome::Unchanged,
            changes: Vec::new(),
            error: None,
            backup: None,
        },
        Ok(Some((change, backup))) => ResourceReport {
            id,
            outcome: Outcome::Changed,
            changes: vec![change],
            error: None,
            backup,
        },
        Err(e) => ResourceReport {
            id,
            outcome: Outcome::Failed,
            changes: Vec::new(),
            error: Some(format!("{e:#}")),
            backup: None,
        },
    }
}

/// Brings the host to `state`, in the fixed kind order (see `KIND_ORDER`), and
/// removes what the engine created earlier that is no longer desired.
pub fn reconcile(state: &NodeState, host: &Host, opts: &RunOptions<'_>) -> Report {
    let started = Instant::now();
    let cx = Context {
        state_dir: opts.state_dir,
        facts: opts.facts,
        node: &state.node,
    };
    let (mut managed, stored) = load_managed(opts.state_dir);
    let mut reports = Vec::with_capacity(state.resources.len());
    let mut broken: BTreeSet<String> = BTreeSet::new();
    // Resources arrive sorted by kind order, then key (see Spec::render).
    for spec in &state.resources {
        let id = spec.id();
        let blocked = spec
            .requires()
            .iter()
            .map(|r| format!("{}[{}]", r.kind, r.name))
            .find(|dep| broken.contains(dep))
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
        let report = match blocked {
            Some(dep) => ResourceReport {
                id: id.clone(),
                outcome: Outcome::Skipped,
                changes: Vec::new(),
                error: Some(format!("skipped: {dep} failed")),
                backup: None,
            },
            None => run_one(spec, host, &cx, opts.noop),
        };
        if matches!(report.outcome, Outcome::Failed | Outcome::Skipped) {
            broken.insert(id.clone());
        }
        let present = match spec {
            Spec::File(f) => f.ensure == ballast_proto::spec::Ensure::Present,
            Spec::Directory(d) => d.ensure == ballast_proto::spec::Ensure::Present,
            Spec::Symlink(s) => s.ensure == ballast_proto::spec::Ensure::Present,
            _ => false,
        };
        if present && report.outcome != Outcome::Failed {
            managed
                .resources
                .insert(id, (spec.kind().to_owned(), spec.key().to_owned()));
        }
        reports.push(report);
    }
    // Removal of what left the desired state: deepest paths first.
    let desired: BTreeSet<String> = state.resources.iter().map(|r| r.id()).collect();
    let mut gone: Vec<(String, (String, String))> = managed
        .resources
        .iter()
        .filter(|(id, _)| !desired.contains(*id))
        .map(|(id, v)| (id.clone(), v.clone()))
        .collect();
    gone.sort_by(|a, b| b.1.1.cmp(&a.1.1));
    for (id, (kind, key)) in gone {
        let report = remove_one(&kind, &key, host, &cx, opts.noop);
        if report.outcome != Outcome::Failed {
            managed.resources.remove(&id);
        }
        if report.outcome != Outcome::Unchanged {
            reports.push(report);
        }
    }
    if !opts.noop {
        managed.format = 1;
        let bytes = serde_json::to_vec(&managed).expect("managed record serializes");
        // Written only when it changed: a no-change run does no disk writes.
        if bytes != stored
            && let Err(e) = write_atomic(&opts.state_dir.join(MANAGED_FILE), &bytes, 0o600)
        {
            tracing::error!(error = %format!("{e:#}"), "could not save the managed record");
        }
    }
    Report {
        resources: reports,
        duration: started.elapsed(),
    }
}
