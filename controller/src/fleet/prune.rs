//! What a new spec does to each node compared with the current revision, and
//! whether storing it needs the operator's consent to prune: the one check
//! behind `apply`, `rollback` and `diff`, enforced here on the controller so
//! that no client can skip it.
//!
//! Consent is needed when an apply removes resources from a node (they leave
//! the desired state, so the agent removes them), leaves a node that has
//! roles with none, or defines a role that no node group uses (the usual sign
//! of a file applied as if `apply` merged it into what is there).

use super::Inner;
use ballast_proto::pb;
use ballast_proto::spec::{self, NodeMeta, Spec};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Node names listed per group of nodes with one change set; past it, a count.
pub const NAMES_SHOWN: usize = 5;

/// Largest summary text an apply answers or a refusal carries (a refusal
/// travels in the status's headers); past it, a count of lines left out.
pub const MAX_SUMMARY_BYTES: usize = 4096;

/// Per node, what `new` adds, changes and removes compared with the current
/// revision (one diff per distinct pair of selections of node groups), the
/// nodes it leaves with no roles and the roles it defines that no group uses.
pub(super) fn summarize(inner: &Inner, new: &Spec) -> pb::DiffResponse {
    let old = &inner.current.spec;
    let mut nodes = Vec::new();
    let mut roleless_nodes = Vec::new();
    let mut by_selections = HashMap::new();
    // `nodes` is a BTreeMap: names come sorted.
    for (name, node) in &inner.nodes {
        if node.record.revoked {
            continue;
        }
        let labels = &node.record.labels;
        let (was, will) = (old.selection(labels), new.selection(labels));
        if has_roles(old, &was) && !has_roles(new, &will) {
            roleless_nodes.push(name.clone());
        }
        let d = by_selections.entry((was, will)).or_insert_with(|| {
            let meta = NodeMeta {
                name: name.clone(),
                labels: labels.clone(),
            };
            spec::diff_states(&old.render(&meta), &new.render(&meta))
        });
        if !d.is_empty() {
            nodes.push(pb::NodeChange {
                node: name.clone(),
                added: d.added.clone(),
                changed: d.changed.clone(),
                removed: d.removed.clone(),
            });
        }
    }
    let used: BTreeSet<&String> = new.groups.values().flat_map(|g| &g.roles).collect();
    pb::DiffResponse {
        current_revision: inner.current.number,
        nodes,
        unused_roles: new
            .roles
            .keys()
            .filter(|r| !used.contains(r))
            .cloned()
            .collect(),
        roleless_nodes,
        ..Default::default()
    }
}

fn has_roles(spec: &Spec, selection: &[usize]) -> bool {
    spec.groups
        .values()
        .enumerate()
        .any(|(i, g)| selection.contains(&i) && !g.roles.is_empty())
}

/// Why storing what `summary` describes needs consent; empty when it does not.
pub fn prune_reasons(summary: &pb::DiffResponse) -> Vec<String> {
    let mut reasons = Vec::new();
    let removing = summary.nodes.iter().filter(|n| !n.removed.is_empty());
    let (count, resources) = removing.fold((0, 0), |(c, r), n| (c + 1, r + n.removed.len()));
    if count > 0 {
        reasons.push(format!(
            "it removes {resources} resource(s) from {count} node(s)"
        ));
    }
    if !summary.roleless_nodes.is_empty() {
        reasons.push(format!(
            "it leaves {} node(s) with no roles: {}",
            summary.roleless_nodes.len(),
            names(&summary.roleless_nodes)
        ));
    }
    if !summary.unused_roles.is_empty() {
        reasons.push(format!(
            "no node group uses role(s) {}",
            names(&summary.unused_roles)
        ));
    }
    reasons
}

/// At most [`NAMES_SHOWN`] names, then how many more.
fn names(all: &[String]) -> String {
    let mut out = all
        .iter()
        .take(NAMES_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if all.len() > NAMES_SHOWN {
        out.push_str(&format!(" and {} more", all.len() - NAMES_SHOWN));
    }
    out
}

/// One node's added, changed and removed ids: nodes with equal ones group.
type ChangeSet<'a> = (&'a [String], &'a [String], &'a [String]);

/// The summary as an operator reads it: nodes with one change set grouped
/// (`3 nodes (a, b, c): +1 ~0 -2`), each group's removals listed by id (with
/// `every_id`, its additions and changes too), then the nodes left with no
/// roles and the unused roles. Callers that print to a terminal escape the
/// strings first.
pub fn describe(summary: &pb::DiffResponse, every_id: bool) -> String {
    let mut groups: BTreeMap<ChangeSet<'_>, Vec<String>> = BTreeMap::new();
    for n in &summary.nodes {
        groups
            .entry((&n.added, &n.changed, &n.removed))
            .or_default()
            .push(n.node.clone());
    }
    // Most nodes first, then by the first name: stable and readable.
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.1.cmp(&b.1)));
    let mut out = String::new();
    for ((added, changed, removed), nodes) in groups {
        let who = if nodes.len() == 1 {
            format!("node {}", nodes[0])
        } else {
            format!("{} nodes ({})", nodes.len(), names(&nodes))
        };
        out.push_str(&format!(
            "{who}: +{} ~{} -{}\n",
            added.len(),
            changed.len(),
            removed.len()
        ));
        let shown: [(char, &[String]); 3] = if every_id {
            [('+', added), ('~', changed), ('-', removed)]
        } else {
            [('+', &[]), ('~', &[]), ('-', removed)]
        };
        for (mark, ids) in shown {
            for id in ids {
                out.push_str(&format!("  {mark} {id}\n"));
            }
        }
    }
    if !summary.roleless_nodes.is_empty() {
        out.push_str(&format!(
            "left with no roles: {}\n",
            names(&summary.roleless_nodes)
        ));
    }
    if !summary.unused_roles.is_empty() {
        out.push_str(&format!(
            "roles no node group uses: {}\n",
            names(&summary.unused_roles)
        ));
    }
    out
}

/// [`describe`] without every id, cut at a line to [`MAX_SUMMARY_BYTES`].
pub fn describe_bounded(summary: &pb::DiffResponse) -> String {
    let full = describe(summary, false);
    if full.len() <= MAX_SUMMARY_BYTES {
        return full;
    }
    let mut out = String::new();
    let mut lines = full.lines();
    for line in lines.by_ref() {
        if out.len() + line.len() + 1 > MAX_SUMMARY_BYTES - 100 {
            break;
        }
        out.push_str(line);
        out.push('\n');
    }
    let left = lines.count() + 1;
    out.push_str(&format!(
        "... {left} more line(s); ballast diff lists every node\n"
    ));
    out
}

/// The refusal's text (the status message; `ballast diff` shows what).
pub fn refusal_message(reasons: &[String]) -> String {
    format!(
        "nothing stored: this apply needs consent because {}; the files are the whole desired state. Pass --prune (or --yes) to apply it",
        reasons.join(", and ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(node: &str, added: &[&str], removed: &[&str]) -> pb::NodeChange {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect();
        pb::NodeChange {
            node: node.into(),
            added: v(added),
            changed: Vec::new(),
            removed: v(removed),
        }
    }

    /// Nodes with the same change are one line; removals are named; a large
    /// group lists a few names and a count.
    #[test]
    fn summary_groups_nodes_with_one_change_and_names_removals() {
        let mut nodes: Vec<_> = (0..7)
            .map(|i| change(&format!("web{i}"), &[], &["package[nginx]", "user[www]"]))
            .collect();
        nodes.push(change("db1", &["file[/etc/motd]"], &[]));
        let summary = pb::DiffResponse {
            current_revision: 3,
            nodes,
            unused_roles: vec!["web".into()],
            roleless_nodes: vec!["web0".into()],
            ..Default::default()
        };
        expect_test::expect![[r#"
            7 nodes (web0, web1, web2, web3, web4 and 2 more): +0 ~0 -2
              - package[nginx]
              - user[www]
            node db1: +1 ~0 -0
            left with no roles: web0
            roles no node group uses: web
        "#]]
        .assert_eq(&describe(&summary, false));
        assert_eq!(
            prune_reasons(&summary),
            [
                "it removes 14 resource(s) from 7 node(s)",
                "it leaves 1 node(s) with no roles: web0",
                "no node group uses role(s) web"
            ]
        );
        let many = pb::DiffResponse {
            nodes: (0..2000)
                .map(|i| {
                    change(
                        &format!("n{i}"),
                        &[&format!("file[/etc/{i}]")],
                        &["user[www]"],
                    )
                })
                .collect(),
            ..Default::default()
        };
        let text = describe_bounded(&many);
        assert!(text.len() <= MAX_SUMMARY_BYTES, "{}", text.len());
        assert!(
            text.ends_with("more line(s); ballast diff lists every node\n"),
            "{text}"
        );
        let adds_only = pb::DiffResponse {
            nodes: vec![change("db1", &["file[/etc/motd]"], &[])],
            ..Default::default()
        };
        assert!(prune_reasons(&adds_only).is_empty());
    }
}
