//! Content diffs for `ballast diff`: per node, the unified diff of each file
//! that an apply would add or change, between the current and the proposed
//! desired state, as far as the controller can render them (literal content,
//! and templates rendered with the node's vars and the facts it last sent).
//! Nodes with the same diffs are grouped; the answer is bounded.
//!
//! It reads the same renders as the change summary (`Spec::render`, once per
//! selection of node groups) and the same diff as the agent
//! (`ballast_proto::diff`): what it shows is the desired content, not what
//! is on the node's disk (that is `ballast plan`).

use super::Inner;
use ballast_proto::limits::{MAX_DIFF_ANSWER_BYTES, truncate};
use ballast_proto::pb;
use ballast_proto::spec::{File, Labels, NodeMeta, NodeState, Resource, Spec, template};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// A template error shown instead of a diff is cut to this many bytes.
const MAX_WHY_BYTES: usize = 1024;

/// One node's file diffs: (id, diff), in id order.
type FileDiffs = Vec<(String, String)>;

/// What the diffs need of the fleet, taken under its lock so that the
/// rendering and diffing run without it: the current spec, and the labels
/// and facts of each node whose files change.
pub(super) struct Inputs {
    old: Arc<Spec>,
    nodes: HashMap<String, (Labels, serde_json::Value)>,
}

/// The files a node change adds or changes.
fn file_ids(change: &pb::NodeChange) -> BTreeSet<&String> {
    change
        .added
        .iter()
        .chain(&change.changed)
        .filter(|id| id.starts_with("file["))
        .collect()
}

/// Takes what [`diffs`] needs under the fleet's lock (see [`Inputs`]).
pub(super) fn inputs(inner: &Inner, summary: &pb::DiffResponse) -> Inputs {
    Inputs {
        old: inner.current.spec.clone(),
        nodes: summary
            .nodes
            .iter()
            .filter(|c| !file_ids(c).is_empty())
            .filter_map(|c| {
                let node = inner.nodes.get(&c.node)?;
                Some((
                    c.node.clone(),
                    (node.record.labels.clone(), node.facts.clone()),
                ))
            })
            .collect(),
    }
}

/// The content diffs of every node `summary` says changes, grouped by
/// identical diffs in the order of the nodes' names, and how many nodes'
/// diffs were left out past [`MAX_DIFF_ANSWER_BYTES`].
pub(super) fn diffs(
    inputs: &Inputs,
    new: &Spec,
    summary: &pb::DiffResponse,
) -> (Vec<pb::ContentDiffGroup>, u32) {
    let old = &inputs.old;
    // Per selection of node groups, the files of the old and the new render.
    let mut renders: [HashMap<Vec<usize>, HashMap<String, File>>; 2] = Default::default();
    let mut groups: Vec<pb::ContentDiffGroup> = Vec::new();
    let mut index: HashMap<FileDiffs, usize> = HashMap::new();
    let (mut bytes, mut left_out) = (0usize, 0u32);
    for change in &summary.nodes {
        let ids = file_ids(change);
        let Some((labels, facts)) = inputs.nodes.get(&change.node) else {
            continue;
        };
        if bytes >= MAX_DIFF_ANSWER_BYTES {
            left_out += 1;
            continue;
        }
        let meta = NodeMeta {
            name: change.node.clone(),
            labels: labels.clone(),
        };
        let mut file_in = |which: usize, spec: &Spec, id: &str| -> Option<File> {
            renders[which]
                .entry(spec.selection(&meta.labels))
                .or_insert_with(|| files_of(spec.render(&meta)))
                .get(id)
                .cloned()
        };
        let mut files: FileDiffs = Vec::new();
        for id in ids {
            let Some(want) = file_in(1, new, id) else {
                continue;
            };
            let was = file_in(0, old, id);
            if let Some(d) = file_diff(was.as_ref(), &want, facts, &meta) {
                files.push((id.clone(), d));
            }
        }
        if files.is_empty() {
            continue;
        }
        if let Some(&i) = index.get(&files) {
            bytes += change.node.len();
            groups[i].nodes.push(change.node.clone());
            continue;
        }
        let size: usize = files.iter().map(|(id, d)| id.len() + d.len()).sum();
        if bytes + size + change.node.len() > MAX_DIFF_ANSWER_BYTES {
            left_out += 1;
            continue;
        }
        bytes += size + change.node.len();
        index.insert(files.clone(), groups.len());
        groups.push(pb::ContentDiffGroup {
            nodes: vec![change.node.clone()],
            files: files
                .into_iter()
                .map(|(id, diff)| pb::FileDiff { id, diff })
                .collect(),
        });
    }
    (groups, left_out)
}

fn files_of(state: NodeState) -> HashMap<String, File> {
    state
        .resources
        .into_iter()
        .filter_map(|r| match r {
            Resource::File(f) => Some((format!("file[{}]", f.path), f)),
            _ => None,
        })
        .collect()
}

/// The diff of one file's desired content from `was` (absent: a new file)
/// to `want`; `None` when its content is not managed or does not change.
/// A template that does not render says why instead.
fn file_diff(
    was: Option<&File>,
    want: &File,
    facts: &serde_json::Value,
    node: &NodeMeta,
) -> Option<String> {
    want.content.as_ref()?;
    let new = match content(want, facts, node) {
        Ok(c) => c?,
        Err(why) => return Some(why),
    };
    let old = match was.map(|f| content(f, facts, node)) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(c))) => Some(c),
        Some(Err(why)) => return Some(format!("{why} (the current revision's template)")),
    };
    let d = ballast_proto::diff::content(&want.path, old.as_deref(), &new);
    (!d.is_empty()).then_some(d)
}

/// A file's desired content as the agent would write it, when the
/// controller can tell: templates render with the facts the node sent.
fn content(
    f: &File,
    facts: &serde_json::Value,
    node: &NodeMeta,
) -> Result<Option<Vec<u8>>, String> {
    match (&f.content, f.template) {
        (None, _) => Ok(None),
        (Some(c), false) => Ok(Some(c.clone().into_bytes())),
        (Some(t), true) => template::render(t, facts, &f.vars, node)
            .map(|s| Some(s.into_bytes()))
            .map_err(|e| {
                let mut why = if facts.is_null() {
                    format!(
                        "diff not shown: the template needs facts the node has not sent yet: {e}"
                    )
                } else {
                    format!(
                        "diff not shown: the template does not render with the node's facts: {e}"
                    )
                };
                truncate(&mut why, MAX_WHY_BYTES);
                why
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::records::NodeRecord;
    use super::super::{Clock, Fleet, Liveness, keys, to_json};
    use crate::store::{Op, RedbStore, Store};
    use ballast_proto::limits::MAX_DIFF_BYTES;
    use ballast_proto::spec::Labels;
    use std::sync::Arc;
    use std::time::Duration;

    /// A fleet of `nodes` (name, facts as JSON or none) on revision 1 of `site`.
    fn fleet(dir: &std::path::Path, nodes: &[(String, Option<String>)], site: &str) -> Arc<Fleet> {
        let store = Arc::new(RedbStore::open(&dir.join("s.redb")).unwrap());
        let mut ops = Vec::new();
        for (name, facts) in nodes {
            let rec = NodeRecord {
                name: name.clone(),
                labels: Labels::new(),
                cert_serial: "1".into(),
                enrolled_at_ms: 1,
                revoked: false,
                timeline: Vec::new(),
                last_seen_ms: 0,
            };
            ops.push(Op::Put(keys::node(name), to_json(&rec)));
            if let Some(f) = facts {
                ops.push(Op::Put(keys::facts(name), f.clone().into_bytes()));
            }
        }
        for chunk in ops.chunks(100) {
            assert!(store.txn(&[], chunk).unwrap());
        }
        let fleet = Fleet::open(
            store,
            Duration::from_secs(60),
            Liveness::default(),
            Clock::manual(),
        )
        .unwrap();
        fleet
            .apply(vec![("s.yaml".into(), site.into())], "t", "", 0, true)
            .unwrap();
        fleet
    }

    fn site(motd: &str, port: u32) -> String {
        format!(
            "roles:\n  base:\n    files:\n      - {{path: /etc/motd, content: \"{motd}\"}}\n      - {{path: /etc/app.conf, content: \"name = {{{{ facts.hostname }}}}\\nport = {{{{ vars.port }}}}\\n\", template: true}}\ngroups:\n  all: {{roles: [base], vars: {{port: '{port}'}}}}\n"
        )
    }

    /// Literal content and templates rendered with each node's facts;
    /// nodes whose diffs are the same are one group; a node without facts
    /// is told why its template has no diff.
    #[test]
    fn diff_shows_rendered_content_grouped_by_identical_diffs() {
        let dir = tempfile::tempdir().unwrap();
        let facts = Some(r#"{"hostname": "h1"}"#.to_owned());
        let nodes = [
            ("n1".to_owned(), facts.clone()),
            ("n2".to_owned(), facts),
            ("n3".to_owned(), None),
        ];
        let fleet = fleet(dir.path(), &nodes, &site("hello\\n", 80));
        let resp = fleet
            .diff(vec![("s.yaml".into(), site("hello\\nworld\\n", 81))])
            .unwrap();
        let text: String = resp
            .content
            .iter()
            .map(|g| {
                let files: String = g
                    .files
                    .iter()
                    .map(|f| format!("{}\n{}\n", f.id, f.diff))
                    .collect();
                format!("[{}]\n{files}", g.nodes.join(", "))
            })
            .collect();
        expect_test::expect![[r#"
            [n1, n2]
            file[/etc/app.conf]
            diff (+1 -1 lines)
            --- /etc/app.conf
            +++ /etc/app.conf
            @@ -1,2 +1,2 @@
             name = h1
            -port = 80
            +port = 81

            file[/etc/motd]
            diff (+1 -0 lines)
            --- /etc/motd
            +++ /etc/motd
            @@ -1,1 +1,2 @@
             hello
            +world

            [n3]
            file[/etc/app.conf]
            diff not shown: the template needs facts the node has not sent yet: render template: undefined value facts.hostname (template line 1): the node has no such fact or var; guard it with `is defined` or `default`
            file[/etc/motd]
            diff (+1 -0 lines)
            --- /etc/motd
            +++ /etc/motd
            @@ -1,1 +1,2 @@
             hello
            +world

        "#]]
        .assert_eq(&text);
        assert_eq!(resp.content_left_out, 0);
        // Nothing changes: no content diffs.
        let same = fleet
            .diff(vec![("s.yaml".into(), site("hello\\n", 80))])
            .unwrap();
        assert!(same.content.is_empty() && same.nodes.is_empty());
    }

    /// Many nodes with distinct large diffs: the answer stops at its bound
    /// and counts the nodes whose diffs it left out.
    #[test]
    fn diff_answer_is_bounded_and_counts_what_it_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<(String, Option<String>)> = (0..250)
            .map(|i| {
                (
                    format!("n{i:03}"),
                    Some(format!(r#"{{"hostname": "host{i}"}}"#)),
                )
            })
            .collect();
        let base = "roles:\n  base:\n    files: [{path: /etc/motd, content: hi}]\ngroups:\n  all: {roles: [base]}\n";
        let fleet = fleet(dir.path(), &nodes, base);
        let big = "roles:\n  base:\n    files:\n      - {path: /etc/motd, content: hi}\n      - {path: /etc/big, content: \"{% for i in range(800) %}{{ facts.hostname }} line {{ i }}\\n{% endfor %}\", template: true}\ngroups:\n  all: {roles: [base]}\n";
        let resp = fleet.diff(vec![("s.yaml".into(), big.into())]).unwrap();
        let shown: usize = resp.content.iter().map(|g| g.nodes.len()).sum();
        assert!(resp.content_left_out > 0, "{shown} shown");
        assert_eq!(shown + resp.content_left_out as usize, 250);
        let bytes: usize = resp
            .content
            .iter()
            .flat_map(|g| &g.files)
            .map(|f| f.diff.len() + f.id.len())
            .sum();
        assert!(
            bytes <= ballast_proto::limits::MAX_DIFF_ANSWER_BYTES,
            "{bytes}"
        );
        let first = &resp.content[0].files[0].diff;
        assert!(first.len() <= MAX_DIFF_BYTES && first.ends_with(ballast_proto::diff::CUT_MARK));
    }
}
