//! Revisions: validated sources stored as immutable numbered revisions, the
//! current one rendered for the nodes (once per distinct selection of node
//! groups) and pushed to the nodes it changes.

use super::records::RevisionRecord;
use super::{Current, Fleet, FleetError, Result, from_json, keys, to_json};
use crate::store::{Compare, Op, Store};
use ballast_proto::pb;
use ballast_proto::spec::{self, Labels, Spec};
use std::sync::Arc;

pub(super) fn parse_sources(sources: &[(String, String)]) -> Result<Spec> {
    let sources: Vec<spec::Source> = sources
        .iter()
        .map(|(name, text)| spec::Source {
            name: name.clone(),
            text: text.clone(),
        })
        .collect();
    spec::parse(&sources).map_err(|e| FleetError::Invalid(e.to_string()))
}

/// Desired states of one revision for many nodes: the spec is rendered once
/// per distinct selection of node groups (see [`spec::Renderer`]), so an
/// apply costs the number of distinct inputs plus, per node, its name and
/// labels and the document's hash. Every node's state goes through here.
pub(super) struct Desired<'a> {
    renderer: spec::Renderer<'a>,
    revision: u64,
}

impl<'a> Desired<'a> {
    pub(super) fn new(spec: &'a Spec, revision: u64) -> Desired<'a> {
        Desired {
            renderer: spec::Renderer::new(spec),
            revision,
        }
    }

    pub(super) fn of(&mut self, name: &str, labels: &Labels) -> pb::DesiredState {
        let document = self.renderer.document(name, labels);
        pb::DesiredState {
            revision: self.revision,
            hash: ballast_proto::sha256_tag(&document),
            document,
        }
    }
}

/// The current revision as stored (the empty spec before the first apply).
pub(super) fn load_current(store: &dyn Store) -> anyhow::Result<Current> {
    Ok(match store.get(keys::CURRENT)? {
        None => Current {
            number: 0,
            spec: Arc::new(Spec::default()),
            hash: Spec::default().content_hash(),
        },
        Some(entry) => {
            let number: u64 = from_json(keys::CURRENT, &entry.value)?;
            let key = keys::revision(number);
            let rec: RevisionRecord =
                from_json(&key, &store.get(&key)?.map(|e| e.value).unwrap_or_default())?;
            let spec = parse_sources(&rec.sources)
                .map_err(|e| anyhow::anyhow!("stored revision {number} no longer parses: {e}"))?;
            Current {
                number,
                spec: Arc::new(spec),
                hash: rec.hash,
            }
        }
    })
}

impl Fleet {
    // ---- revisions ----

    /// Validates sources and stores them as a new revision, then pushes each
    /// node whose rendered state changed. Content equal to the current
    /// revision's stores nothing (`created: false`). Without `allow_prune`,
    /// an apply that needs consent to prune (see `prune`) stores nothing
    /// and fails with [`FleetError::NeedsPrune`].
    pub fn apply(
        &self,
        sources: Vec<(String, String)>,
        author: &str,
        message: &str,
        restored_from: u64,
        allow_prune: bool,
    ) -> Result<pb::ApplyResponse> {
        if sources.is_empty() {
            return Err(FleetError::Invalid(
                "no sources given: pass YAML files with -f FILE or -f DIR".into(),
            ));
        }
        let spec = parse_sources(&sources)?;
        let hash = spec.content_hash();
        let _apply = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        // The stored current revision, which memory may not have seen yet
        // when another controller applied it.
        let stored = self.store.get(keys::CURRENT)?;
        if let Some(e) = &stored {
            self.catch_up_current(from_json(keys::CURRENT, &e.value)?)?;
        }
        let (current_number, summary) = {
            let inner = self.lock();
            if inner.current.number > 0 && hash == inner.current.hash {
                return Ok(pb::ApplyResponse {
                    revision: inner.current.number,
                    hash,
                    created: false,
                    affected_nodes: Vec::new(),
                    summary: String::new(),
                });
            }
            // Judged against the revision this one replaces, under the
            // apply lock: what the operator consents to is what happens.
            let summary = super::prune::summarize(&inner, &spec);
            if let Some(refusal) = super::precheck::templates(&inner, &spec, &summary) {
                return Err(FleetError::Invalid(refusal));
            }
            (inner.current.number, summary)
        };
        if !allow_prune && !super::prune::prune_reasons(&summary).is_empty() {
            return Err(FleetError::NeedsPrune(Box::new(summary)));
        }
        let number = current_number + 1;
        let rollout = self.start_rollout(&spec, number);
        let rec = RevisionRecord {
            number,
            author: author.to_owned(),
            created_at_ms: self.now_ms(),
            hash: hash.clone(),
            message: message.to_owned(),
            restored_from,
            sources,
        };
        let compare = match stored {
            None => Compare::Absent(keys::CURRENT.into()),
            Some(e) => Compare::Version(keys::CURRENT.into(), e.version),
        };
        let mut ops = vec![Op::Put(keys::revision(number), to_json(&rec))];
        if let Some((r, _)) = &rollout {
            ops.push(Op::Put(keys::rollout(number), to_json(r)));
        }
        ops.push(Op::Put(keys::CURRENT.into(), to_json(&number)));
        let ok = self.store.txn(
            &[
                compare,
                Compare::Absent(keys::revision(number)),
                Compare::Absent(keys::rollout(number)),
            ],
            &ops,
        )?;
        if !ok {
            return Err(FleetError::Conflict(
                "another apply stored a revision at the same time; retry".into(),
            ));
        }
        // The watch may have installed it already (see `follow`).
        let rollout = self.stored_rollout(rollout)?;
        let current = Current {
            number,
            spec: Arc::new(spec),
            hash: hash.clone(),
        };
        let affected = match self.install_current(current, rollout) {
            Some(affected) => affected,
            None => {
                let inner = self.lock();
                match &inner.last_affected {
                    (n, affected) if *n == number => affected.clone(),
                    _ => Vec::new(),
                }
            }
        };
        Ok(pb::ApplyResponse {
            revision: number,
            hash,
            created: true,
            affected_nodes: affected,
            summary: super::prune::describe_bounded(&summary),
        })
    }

    /// Per node, the resource ids an apply of these sources would add,
    /// change or remove, what would need consent to prune, and the content
    /// diffs of the files it changes (see `content`).
    pub fn diff(&self, sources: Vec<(String, String)>) -> Result<pb::DiffResponse> {
        let spec = parse_sources(&sources)?;
        let (mut resp, inputs) = {
            let inner = self.lock();
            let resp = super::prune::summarize(&inner, &spec);
            let inputs = super::content::inputs(&inner, &resp);
            (resp, inputs)
        };
        // Rendering templates per node runs without the fleet's lock.
        (resp.content, resp.content_left_out) = super::content::diffs(&inputs, &spec, &resp);
        Ok(resp)
    }

    pub fn history(&self, limit: usize) -> Result<Vec<pb::Revision>> {
        let mut out = Vec::new();
        for (key, entry) in self
            .store
            .list(keys::REVISIONS)?
            .into_iter()
            .rev()
            .take(limit.max(1))
        {
            let r: RevisionRecord = from_json(&key, &entry.value)?;
            out.push(pb::Revision {
                number: r.number,
                author: r.author,
                created_at_ms: r.created_at_ms,
                hash: r.hash,
                message: r.message,
                restored_from: r.restored_from,
            });
        }
        Ok(out)
    }

    /// A new revision with the content of revision `number`, under the same
    /// consent rule as [`Fleet::apply`]: going back usually removes what was
    /// added since, and that is exactly what an operator must see first.
    pub fn rollback(
        &self,
        number: u64,
        author: &str,
        allow_prune: bool,
    ) -> Result<pb::ApplyResponse> {
        let key = keys::revision(number);
        let entry = self.store.get(&key)?.ok_or_else(|| {
            FleetError::NotFound(format!(
                "revision {number} does not exist (see ballast history)"
            ))
        })?;
        let rec: RevisionRecord = from_json(&key, &entry.value)?;
        self.apply(
            rec.sources,
            author,
            &format!("rollback to revision {number}"),
            number,
            allow_prune,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::records::NodeRecord;
    use super::super::{Clock, Liveness};
    use super::*;
    use crate::store::{Op, RedbStore};
    use ballast_proto::spec::NodeMeta;
    use std::time::Duration;

    const SITE: &str = "roles:\n  base:\n    files: [{path: /etc/motd, content: hi}]\n  web:\n    files: [{path: /etc/web, content: \"{{ vars.port }}\", template: true}]\n    packages: [{name: nginx}]\ngroups:\n  all: {roles: [base]}\n  web: {match: {role: web}, roles: [web], vars: {port: 80}}\n  eu: {match: {zone: eu}, roles: [web], vars: {port: 80}}\n";

    /// Every node's pushed document and hash, after load and after an
    /// apply, are byte for byte what rendering that node alone gives.
    #[test]
    fn pushed_states_equal_per_node_renders() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let ops: Vec<Op> = (0..40)
            .map(|i| {
                let mut labels = Labels::new();
                labels.insert("rack".into(), format!("r{i}"));
                if i % 2 == 0 {
                    labels.insert("role".into(), "web".into());
                }
                if i % 3 == 0 {
                    labels.insert("zone".into(), "eu".into());
                }
                let rec = NodeRecord {
                    name: format!("n{i}"),
                    labels,
                    cert_serial: format!("{i:x}"),
                    enrolled_at_ms: 1,
                    revoked: false,
                    timeline: Vec::new(),
                    last_seen_ms: 0,
                };
                Op::Put(keys::node(&rec.name), to_json(&rec))
            })
            .collect();
        assert!(store.txn(&[], &ops).unwrap());
        let fleet = Fleet::open(
            store.clone(),
            Duration::from_secs(60),
            Liveness::default(),
            Clock::manual(),
        )
        .unwrap();
        let sources = vec![("s.yaml".to_owned(), SITE.to_owned())];
        let diff = fleet.diff(sources.clone()).unwrap();
        assert_eq!(diff.nodes.len(), 40);
        assert_eq!(diff.nodes[0].node, "n0");
        assert_eq!(diff.nodes[0].added.len(), 3);
        assert_eq!(diff.nodes[1].added, ["file[/etc/motd]"]);
        let resp = fleet.apply(sources.clone(), "t", "m", 0, false).unwrap();
        assert_eq!(resp.affected_nodes.len(), 40);
        let spec = parse_sources(&sources).unwrap();
        let reopened = Fleet::open(
            store,
            Duration::from_secs(60),
            Liveness::default(),
            Clock::manual(),
        )
        .unwrap();
        for f in [&fleet, &reopened] {
            let inner = f.lock();
            for node in inner.nodes.values() {
                let alone = serde_json::to_vec(&spec.render(&NodeMeta {
                    name: node.record.name.clone(),
                    labels: node.record.labels.clone(),
                }))
                .unwrap();
                assert_eq!(node.desired.document, alone, "{}", node.record.name);
                assert_eq!(node.desired.hash, ballast_proto::sha256_tag(&alone));
                assert_eq!(node.desired.revision, 1);
            }
        }
    }
}
