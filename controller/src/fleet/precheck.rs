//! Templates rendered at apply time for the nodes whose facts the controller
//! already has: a template that cannot render on such a node (a fact it
//! lacks, a var that is not a string where one is needed) is refused before
//! it is stored, naming the template's file and line, the node and what is
//! missing. Only templates the apply adds or changes for a node are
//! rendered: what did not change rendered (or failed) before.

use super::Inner;
use ballast_proto::pb;
use ballast_proto::spec::{NodeMeta, Resource, Spec, template};
use std::collections::{BTreeMap, HashMap};

/// Distinct failures listed in a refusal; past it, a count.
pub const FAILURES_SHOWN: usize = 10;

/// Renders the added or changed templates of every changed node that has
/// reported facts; the refusal's text when one fails.
pub(super) fn templates(inner: &Inner, new: &Spec, summary: &pb::DiffResponse) -> Option<String> {
    // One failure text (template, origin, error) → the nodes it fails on.
    let mut failures: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut states = HashMap::new();
    for change in &summary.nodes {
        let Some(node) = inner.nodes.get(&change.node) else {
            continue;
        };
        if node.facts.is_null() {
            continue;
        }
        let labels = &node.record.labels;
        let meta = NodeMeta {
            name: change.node.clone(),
            labels: labels.clone(),
        };
        let selection = new.selection(labels);
        let state = states
            .entry(selection.clone())
            .or_insert_with(|| new.render(&meta));
        for res in &state.resources {
            let Resource::File(f) = res else { continue };
            let (true, Some(source)) = (f.template, &f.content) else {
                continue;
            };
            let id = res.id();
            if !change.added.contains(&id) && !change.changed.contains(&id) {
                continue;
            }
            if let Err(e) = template::render(source, &node.facts, &f.vars, &meta) {
                let at = origin(new, &selection, &id);
                failures
                    .entry(format!("{id}{at}: {e}"))
                    .or_default()
                    .push(&change.node);
            }
        }
    }
    if failures.is_empty() {
        return None;
    }
    let total = failures.len();
    let mut lines: Vec<String> = failures
        .into_iter()
        .take(FAILURES_SHOWN)
        .map(|(what, nodes)| {
            let on = match nodes.as_slice() {
                [one] => format!("node {one}"),
                [first, ..] => format!("{} nodes ({first}, ...)", nodes.len()),
                [] => unreachable!("a failure has a node"),
            };
            format!("{what} (on {on}, with the facts it reported)")
        })
        .collect();
    if total > FAILURES_SHOWN {
        lines.push(format!("and {} more", total - FAILURES_SHOWN));
    }
    Some(format!(
        "a template cannot render on nodes whose facts are known; nothing stored:\n{}",
        lines.join("\n")
    ))
}

/// ` (FILE:LINE)` where the selected node groups' roles declare `id`.
fn origin(spec: &Spec, selection: &[usize], id: &str) -> String {
    spec.groups
        .values()
        .enumerate()
        .filter(|(i, _)| selection.contains(i))
        .flat_map(|(_, g)| &g.roles)
        .filter_map(|role| spec.roles.get(role))
        .find_map(|r| {
            r.resources
                .iter()
                .zip(&r.origins)
                .find(|(res, _)| res.id() == id)
        })
        .map(|(_, o)| format!(" ({o})"))
        .unwrap_or_default()
}
