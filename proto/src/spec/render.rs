//! Rendering a spec for one node (or for many, once per distinct selection
//! of node groups: [`Renderer`]), the static checks that make rendering
//! infallible, the canonical document, and state diffs.
//!
//! Over 600 lines with its tests; the code is about 685 lines because the
//! fleet renderer shares the single-node path (splitting would separate
//! the two halves of one document format) and `check` grew the reference
//! and template-vars checks (issue 10). `check` is the part to move out
//! (to a `check.rs`) when this file grows again.

use super::{NodeMeta, NodeState, Origin, Resource, Spec, SpecError, SpecErrors, Vars, validate};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What two resources collide on: the path for filesystem kinds (a file and
/// a directory cannot share one), else the kind and name.
fn slot(r: &Resource) -> String {
    match r {
        Resource::File(_) | Resource::Directory(_) | Resource::Symlink(_) => {
            format!("path:{}", r.key())
        }
        _ => r.id(),
    }
}

/// One declaration of a resource as a node group gives it.
struct Decl<'a> {
    eff: Resource,
    role: &'a str,
    origin: &'a Origin,
    group: &'a str,
}

/// A node group's declarations by slot.
type GroupDecls<'a> = (
    &'a String,
    &'a super::NodeGroup,
    BTreeMap<String, Vec<Decl<'a>>>,
);

/// The message for two clashing declarations: which two, why they clash,
/// and through which node group(s) both reach one node.
fn conflict(a: &Decl<'_>, b: &Decl<'_>) -> String {
    let reach = if a.group == b.group {
        format!("nodes of node group {}", a.group)
    } else {
        format!("nodes matching node groups {} and {}", a.group, b.group)
    };
    if a.origin == b.origin {
        // One declaration, rendered with two groups' vars.
        return format!(
            "{} of role {} ({}) renders differently with the vars of node groups {} and {}, and both reach {reach}",
            b.eff.id(),
            b.role,
            b.origin,
            a.group,
            b.group
        );
    }
    if a.eff.id() == b.eff.id() {
        let by = if a.role == b.role {
            format!("role {} ({} and {})", a.role, a.origin, b.origin)
        } else {
            format!(
                "role {} ({}) and role {} ({})",
                a.role, a.origin, b.role, b.origin
            )
        };
        return format!(
            "{} is declared differently by {by}, and both reach {reach}",
            b.eff.id()
        );
    }
    let both = if a.role == b.role {
        format!(
            "{} ({}) and {} ({}), both of role {},",
            a.eff.id(),
            a.origin,
            b.eff.id(),
            b.origin,
            a.role
        )
    } else {
        format!(
            "{} (role {}, {}) and {} (role {}, {})",
            a.eff.id(),
            a.role,
            a.origin,
            b.eff.id(),
            b.role,
            b.origin
        )
    };
    format!(
        "{both} are two resources at one path (a path holds one thing), and both reach {reach}{}",
        replace_hint(&a.eff, &b.eff)
    )
}

/// For a file clashing with a symlink or directory declared absent at its
/// path: how to say what was meant (the file replaces what is there).
fn replace_hint(a: &Resource, b: &Resource) -> &'static str {
    let other = match (a, b) {
        (Resource::File(f), o) | (o, Resource::File(f)) if f.ensure == super::Ensure::Present => o,
        _ => return "",
    };
    match other {
        Resource::Symlink(_) if other.is_absent() => {
            "; to put the file where a symlink is, declare only the file, with `replace: true`"
        }
        Resource::Directory(_) if other.is_absent() => {
            "; to put the file where an empty directory is, declare only the file, with `replace: true`"
        }
        _ => "",
    }
}

/// A resource as a node of this group gets it: templates carry the group's vars.
fn effective(r: &Resource, vars: &Vars) -> Resource {
    match r {
        Resource::File(f) if f.template => {
            let mut f = f.clone();
            f.vars = vars.clone();
            Resource::File(f)
        }
        other => other.clone(),
    }
}

/// Two selectors can both match one node unless they disagree on a key.
pub(super) fn compatible(a: &super::Labels, b: &super::Labels) -> bool {
    a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w == v))
}

fn matches(selector: &super::Labels, labels: &super::Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Static checks over the whole spec, run by `parse`: role references,
/// conflicts between resources that can reach one node, `requires`.
pub(super) fn check(spec: &Spec) -> Vec<SpecError> {
    let mut errors = Vec::new();
    let err = |origin: &Origin, field: String, message: String| SpecError {
        file: origin.file.clone(),
        line: origin.line,
        field,
        message,
    };
    for (gname, g) in &spec.groups {
        for (i, role) in g.roles.iter().enumerate() {
            if !spec.roles.contains_key(role) {
                let line = g.role_lines.get(i).copied().unwrap_or(g.origin.line);
                let defined: Vec<&str> = spec.roles.keys().map(String::as_str).collect();
                errors.push(SpecError {
                    file: g.origin.file.clone(),
                    line,
                    field: format!("groups.{gname}.roles[{i}]"),
                    message: format!(
                        "role {role} is not defined; defined roles: {}",
                        if defined.is_empty() {
                            "none".into()
                        } else {
                            defined.join(", ")
                        }
                    ),
                });
            }
        }
    }
    if !errors.is_empty() {
        return errors;
    }
    // Conflicts: two declarations that reach one node and differ on one
    // slot; first within each node group, then across every pair of node
    // groups that can select one node. Each clash is named once, by exactly
    // its two declarations.
    let mut reported = BTreeSet::new();
    let decls: Vec<GroupDecls<'_>> = spec
        .groups
        .iter()
        .map(|(gname, g)| {
            let mut by_slot: BTreeMap<String, Vec<Decl>> = BTreeMap::new();
            for role in &g.roles {
                let r = &spec.roles[role];
                for (res, origin) in r.resources.iter().zip(&r.origins) {
                    by_slot.entry(slot(res)).or_default().push(Decl {
                        eff: effective(res, &g.vars),
                        role,
                        origin,
                        group: gname,
                    });
                }
            }
            (gname, g, by_slot)
        })
        .collect();
    let mut pairs: Vec<(usize, usize)> = (0..decls.len()).map(|i| (i, i)).collect();
    for i in 0..decls.len() {
        for j in i + 1..decls.len() {
            if compatible(&decls[i].1.selector, &decls[j].1.selector) {
                pairs.push((i, j));
            }
        }
    }
    for (i, j) in pairs {
        let (_, _, a_slots) = &decls[i];
        let (gname_b, gb, b_slots) = &decls[j];
        for (slot, a_list) in a_slots {
            let Some(b_list) = b_slots.get(slot) else {
                continue;
            };
            let clash = a_list.iter().enumerate().find_map(|(ai, a)| {
                let from = if i == j { ai + 1 } else { 0 };
                b_list[from.min(b_list.len())..]
                    .iter()
                    .find(|b| b.eff != a.eff)
                    .map(|b| (a, b))
            });
            if let Some((a, b)) = clash {
                let key = {
                    let mut k = [
                        (a.origin.to_string(), a.eff.id(), a.group.to_string()),
                        (b.origin.to_string(), b.eff.id(), b.group.to_string()),
                    ];
                    k.sort();
                    (
                        k[0].0.clone() + &k[0].1,
                        k[1].0.clone() + &k[1].1,
                        slot.clone(),
                        String::new(),
                    )
                };
                if reported.insert(key) {
                    errors.push(err(&gb.origin, format!("groups.{gname_b}"), conflict(a, b)));
                }
            }
        }
    }
    // `requires` and `notify`: the target must be declared for the same
    // node group (for a role no group uses, by the role itself); no cycles.
    let used: BTreeSet<&String> = spec.groups.values().flat_map(|g| &g.roles).collect();
    let scopes: Vec<Scope<'_>> = spec
        .groups
        .iter()
        .map(|(gname, g)| Scope {
            field: format!("groups.{gname}"),
            nobody: format!("no role of node group {gname} declares"),
            roles: &g.roles,
            origin: &g.origin,
            group: Some((gname, g)),
        })
        .chain(
            spec.roles
                .iter()
                .filter(|(name, _)| !used.contains(name))
                .map(|(name, r)| Scope {
                    field: format!("roles.{name}"),
                    nobody: format!("role {name} does not declare (no node group uses it)"),
                    roles: std::slice::from_ref(name),
                    origin: &r.origin,
                    group: None,
                }),
        )
        .collect();
    for scope in &scopes {
        let gname = &scope.field;
        let mut ids: BTreeMap<String, &Resource> = BTreeMap::new();
        let mut origin_of: BTreeMap<String, &Origin> = BTreeMap::new();
        for role in scope.roles {
            let r = &spec.roles[role];
            for (res, origin) in r.resources.iter().zip(&r.origins) {
                ids.entry(res.id()).or_insert(res);
                origin_of.entry(res.id()).or_insert(origin);
            }
        }
        for (id, res) in &ids {
            for req in res.requires() {
                let target = format!("{}[{}]", req.kind, req.name);
                if !ids.contains_key(&target) {
                    let key = (id.clone(), target.clone(), gname.clone(), String::new());
                    if reported.insert(key) {
                        errors.push(err(
                            origin_of[id],
                            scope.field.clone(),
                            format!(
                                "{id} requires {}:{}, which {}",
                                req.kind, req.name, scope.nobody
                            ),
                        ));
                    }
                }
            }
        }
        for (id, res) in &ids {
            for service in res.notify() {
                if !ids.contains_key(&format!("service[{service}]")) {
                    let key = (
                        id.clone(),
                        format!("notify:{service}"),
                        gname.clone(),
                        String::new(),
                    );
                    if reported.insert(key) {
                        errors.push(err(
                            origin_of[id],
                            scope.field.clone(),
                            format!(
                                "{id} notifies service {service}, which {}; declare it under services or drop it from notify",
                                scope.nobody
                            ),
                        ));
                    }
                }
            }
        }
        // Templates: every `vars.X` they read unguarded is a var of this group.
        if let Some((gname, g)) = scope.group {
            for role in &g.roles {
                let r = &spec.roles[role];
                for (res, origin) in r.resources.iter().zip(&r.origins) {
                    let Resource::File(f) = res else { continue };
                    let (true, Some(source)) = (f.template, &f.content) else {
                        continue;
                    };
                    for name in super::template::vars_used(source) {
                        if g.vars.contains_key(&name) {
                            continue;
                        }
                        let key = (
                            res.id(),
                            format!("vars.{name}"),
                            gname.clone(),
                            origin.to_string(),
                        );
                        if reported.insert(key) {
                            let defined: Vec<&str> = g.vars.keys().map(String::as_str).collect();
                            errors.push(err(
                            origin,
                            format!("groups.{gname}.vars"),
                            format!(
                                "the template of {} (role {role}) uses vars.{name}, which node group {gname} ({}) does not define; defined vars: {}; add it under vars or guard it with `is defined` or `default`",
                                res.id(),
                                g.origin,
                                if defined.is_empty() { "none".into() } else { defined.join(", ") }
                            ),
                        ));
                        }
                    }
                }
            }
        }
        if let Some(cycle) = find_cycle(&ids) {
            errors.push(err(
                scope.origin,
                scope.field.clone(),
                format!("requires form a cycle: {}", cycle.join(" -> ")),
            ));
        }
    }
    errors
}

/// Where references must resolve: a node group's roles, or one role that no
/// node group uses (checked alone, so a typo there is caught before use).
struct Scope<'a> {
    /// `groups.NAME` or `roles.NAME`, the field errors name.
    field: String,
    /// How a missing target is said: "no role of node group web declares".
    nobody: String,
    roles: &'a [String],
    origin: &'a Origin,
    group: Option<(&'a String, &'a super::NodeGroup)>,
}

/// A cycle through `requires` and the implicit dependencies
/// ([`super::dependencies`]) among `ids`, if any, as the ids along it.
fn find_cycle(ids: &BTreeMap<String, &Resource>) -> Option<Vec<String>> {
    let all: Vec<&Resource> = ids.values().copied().collect();
    let edges: BTreeMap<String, Vec<String>> = all
        .iter()
        .zip(super::dependencies(&all))
        .map(|(r, ds)| (r.id(), ds.into_iter().map(|d| d.on).collect()))
        .collect();
    fn visit(
        id: &str,
        edges: &BTreeMap<String, Vec<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(id) {
            Some(2) => return None,
            Some(1) => {
                let start = path.iter().position(|p| p == id).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(id.to_owned());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(id.to_owned(), 1);
        path.push(id.to_owned());
        for t in edges.get(id).into_iter().flatten() {
            if edges.contains_key(t)
                && let Some(c) = visit(t, edges, state, path)
            {
                return Some(c);
            }
        }
        path.pop();
        state.insert(id.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for id in edges.keys() {
        if let Some(c) = visit(id, &edges, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

impl Spec {
    /// The node's effective desired state: the resources of every role of
    /// every node group whose selector matches the node's labels. Infallible:
    /// `parse` already refused every conflict that could reach a node.
    pub fn render(&self, node: &NodeMeta) -> NodeState {
        NodeState {
            node: node.clone(),
            resources: self.resources(&self.selection(&node.labels)),
        }
    }

    /// The positions (in name order) of the node groups whose selectors
    /// match `labels`: all of a node's resources follow from it.
    pub fn selection(&self, labels: &super::Labels) -> Vec<usize> {
        self.groups
            .values()
            .enumerate()
            .filter(|(_, g)| matches(&g.selector, labels))
            .map(|(i, _)| i)
            .collect()
    }

    /// The resources of the selected node groups' roles, each group's vars
    /// on its templates, in kind order then key.
    fn resources(&self, selection: &[usize]) -> Vec<Resource> {
        let mut seen = BTreeSet::new();
        let mut resources = Vec::new();
        let mut selected = selection.iter().peekable();
        for (i, g) in self.groups.values().enumerate() {
            if selected.next_if_eq(&&i).is_none() {
                continue;
            }
            for role in &g.roles {
                let Some(r) = self.roles.get(role) else {
                    continue;
                };
                for res in &r.resources {
                    if seen.insert(res.id()) {
                        resources.push(effective(res, &g.vars));
                    }
                }
            }
        }
        resources.sort_by(|a, b| (a.order(), a.key()).cmp(&(b.order(), b.key())));
        resources
    }

    /// `sha256:HEX` of the spec's canonical JSON without origins: equal
    /// meaning gives an equal hash.
    pub fn content_hash(&self) -> String {
        let mut bare = self.clone();
        for r in bare.roles.values_mut() {
            r.origin = Origin::default();
        }
        for g in bare.groups.values_mut() {
            g.origin = Origin::default();
        }
        crate::sha256_tag(&serde_json::to_vec(&bare).expect("spec serializes"))
    }
}

impl NodeState {
    /// Canonical JSON (maps sorted, no whitespace): what is sent and hashed.
    pub fn to_document(&self) -> Vec<u8> {
        document(
            &self.node.name,
            &self.node.labels,
            &resources_json(&self.resources),
        )
    }

    /// `sha256:HEX` of [`NodeState::to_document`].
    pub fn hash(&self) -> String {
        crate::sha256_tag(&self.to_document())
    }

    /// Decodes and validates a wire document: the only way into a `NodeState` from bytes.
    pub fn from_document(bytes: &[u8]) -> Result<NodeState, SpecErrors> {
        let one = |field: String, message: String| SpecError {
            file: String::new(),
            line: 0,
            field,
            message,
        };
        let state: NodeState = serde_json::from_slice(bytes).map_err(|e| {
            SpecErrors(vec![one(
                "document".into(),
                format!("not a valid desired state document: {e}"),
            )])
        })?;
        let mut errors = Vec::new();
        if let Err(e) = validate::node_name(&state.node.name) {
            errors.push(one("node.name".into(), e));
        }
        for (k, v) in &state.node.labels {
            if let Err(e) = validate::label_key(k).and_then(|_| validate::label_value(v)) {
                errors.push(one(format!("node.labels.{k}"), e));
            }
        }
        let mut ids = BTreeSet::new();
        for (i, r) in state.resources.iter().enumerate() {
            for (field, message) in validate::resource(r) {
                errors.push(one(format!("resources[{i}].{field}"), message));
            }
            if !ids.insert(slot(r)) {
                errors.push(one(
                    format!("resources[{i}]"),
                    format!("{} appears twice", r.id()),
                ));
            }
        }
        // In kind order, then key, as `render` sends them: the agent does not
        // trust the controller's sort.
        for (i, pair) in state.resources.windows(2).enumerate() {
            let (a, b) = (&pair[0], &pair[1]);
            if (a.order(), a.key()) > (b.order(), b.key()) {
                errors.push(one(
                    format!("resources[{}]", i + 1),
                    format!(
                        "{} comes after {}: resources must be in kind order ({}), then by key",
                        b.id(),
                        a.id(),
                        super::Kind::ORDER.map(|k| k.as_str()).join(", ")
                    ),
                ));
            }
        }
        // What `requires` and `notify` name must be in the document too.
        let all: BTreeSet<String> = state.resources.iter().map(Resource::id).collect();
        for (i, r) in state.resources.iter().enumerate() {
            for req in r.requires() {
                if !all.contains(&format!("{}[{}]", req.kind, req.name)) {
                    errors.push(one(
                        format!("resources[{i}].requires"),
                        format!(
                            "{} requires {}:{}, which this document does not declare",
                            r.id(),
                            req.kind,
                            req.name
                        ),
                    ));
                }
            }
            for service in r.notify() {
                if !all.contains(&format!("service[{service}]")) {
                    errors.push(one(
                        format!("resources[{i}].notify"),
                        format!(
                            "{} notifies service {service}, which this document does not declare",
                            r.id()
                        ),
                    ));
                }
            }
        }
        let by_id: BTreeMap<String, &Resource> =
            state.resources.iter().map(|r| (r.id(), r)).collect();
        if let Some(cycle) = find_cycle(&by_id) {
            errors.push(one(
                "resources".into(),
                format!("requires form a cycle: {}", cycle.join(" -> ")),
            ));
        }
        if errors.is_empty() {
            Ok(state)
        } else {
            Err(SpecErrors(errors))
        }
    }
}

/// The canonical JSON of a resource list: the part of a document that all
/// nodes with one selection of node groups share.
fn resources_json(resources: &[Resource]) -> Vec<u8> {
    serde_json::to_vec(resources).expect("resources serialize")
}

/// A node's name and labels as [`NodeMeta`] serializes them, borrowed.
#[derive(serde::Serialize)]
struct MetaRef<'a> {
    name: &'a str,
    labels: &'a super::Labels,
}

/// A document from its two parts, byte for byte what serializing the
/// `NodeState` gives: `{"node":NODE,"resources":RESOURCES}` (tests hold the
/// two equal). The node's part is small; the resources' is shared.
fn document(name: &str, labels: &super::Labels, resources_json: &[u8]) -> Vec<u8> {
    let mut doc = Vec::with_capacity(resources_json.len() + 128);
    doc.extend_from_slice(br#"{"node":"#);
    serde_json::to_writer(&mut doc, &MetaRef { name, labels }).expect("node meta serializes");
    doc.extend_from_slice(br#","resources":"#);
    doc.extend_from_slice(resources_json);
    doc.push(b'}');
    doc
}

/// Renders one spec for many nodes at the cost of its distinct inputs:
/// the resources (and their JSON) once per distinct selection of node
/// groups, then per node only its name and labels and the document's hash.
pub struct Renderer<'a> {
    spec: &'a Spec,
    by_selection: HashMap<Vec<usize>, Vec<u8>>,
}

impl<'a> Renderer<'a> {
    pub fn new(spec: &'a Spec) -> Renderer<'a> {
        Renderer {
            spec,
            by_selection: HashMap::new(),
        }
    }

    /// The document of the node with this name and these labels, byte for
    /// byte `spec.render(node).to_document()`.
    pub fn document(&mut self, name: &str, labels: &super::Labels) -> Vec<u8> {
        let selection = self.spec.selection(labels);
        let spec = self.spec;
        let body = self
            .by_selection
            .entry(selection)
            .or_insert_with_key(|sel| resources_json(&spec.resources(sel)));
        document(name, labels, body)
    }

    /// Distinct selections rendered so far.
    pub fn distinct(&self) -> usize {
        self.by_selection.len()
    }
}

/// Resource ids added, changed or removed between two node states.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateDiff {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl StateDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

pub fn diff_states(old: &NodeState, new: &NodeState) -> StateDiff {
    let old: BTreeMap<String, &Resource> = old.resources.iter().map(|r| (r.id(), r)).collect();
    let new: BTreeMap<String, &Resource> = new.resources.iter().map(|r| (r.id(), r)).collect();
    StateDiff {
        added: new
            .keys()
            .filter(|k| !old.contains_key(*k))
            .cloned()
            .collect(),
        changed: new
            .iter()
            .filter(|(k, r)| old.get(*k).is_some_and(|o| o != *r))
            .map(|(k, _)| k.clone())
            .collect(),
        removed: old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Source, parse};
    use super::*;

    fn spec(yaml: &str) -> Spec {
        parse(&[Source {
            name: "s.yaml".into(),
            text: yaml.into(),
        }])
        .unwrap()
    }

    const SITE: &str = "roles:\n  base:\n    services: [{name: cron, ensure: running}]\n    files: [{path: /etc/motd, content: hi}]\n  web:\n    files: [{path: /etc/web, content: \"{{ vars.port }}\", template: true}]\n    packages: [{name: nginx}]\n    users: [{name: www}]\ngroups:\n  all: {roles: [base]}\n  web: {match: {role: web}, roles: [web], vars: {port: 80}}\n";

    fn node(labels: &[(&str, &str)]) -> NodeMeta {
        NodeMeta {
            name: "n1".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn render_picks_roles_by_labels_in_kind_order() {
        let s = spec(SITE);
        let ids: Vec<String> = s
            .render(&node(&[("role", "web")]))
            .resources
            .iter()
            .map(|r| r.id())
            .collect();
        assert_eq!(
            ids,
            [
                "user[www]",
                "package[nginx]",
                "file[/etc/motd]",
                "file[/etc/web]",
                "service[cron]"
            ]
        );
        let ids: Vec<String> = s
            .render(&node(&[("role", "db")]))
            .resources
            .iter()
            .map(|r| r.id())
            .collect();
        assert_eq!(ids, ["file[/etc/motd]", "service[cron]"]);
        let Resource::File(f) = &s.render(&node(&[("role", "web")])).resources[3] else {
            panic!()
        };
        assert_eq!(f.vars["port"], serde_json::json!(80));
    }

    #[test]
    fn documents_round_trip_and_hash_stably() {
        let s = spec(SITE);
        let state = s.render(&node(&[("role", "web")]));
        let doc = state.to_document();
        let back = NodeState::from_document(&doc).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.hash(), state.hash());
        assert_eq!(spec(SITE).content_hash(), s.content_hash());
    }

    #[test]
    fn from_document_refuses_invalid_resources() {
        let doc = br#"{"node":{"name":"n1","labels":{}},"resources":[{"kind":"file","path":"/etc/../shadow"},{"kind":"user","name":"Root"}]}"#;
        let err = NodeState::from_document(doc).unwrap_err().to_string();
        assert!(
            err.contains("resources[0].path") && err.contains("resources[1].name"),
            "{err}"
        );
        assert!(NodeState::from_document(b"{").is_err());
    }

    #[test]
    fn from_document_refuses_notify_and_requires_of_undeclared_resources() {
        let doc = br#"{"node":{"name":"n1","labels":{}},"resources":[{"kind":"file","path":"/etc/a","notify":["nginx"],"requires":[{"kind":"package","name":"nginx"}]}]}"#;
        expect_test::expect![[r#"
            resources[0].requires: file[/etc/a] requires package:nginx, which this document does not declare
            resources[0].notify: file[/etc/a] notifies service nginx, which this document does not declare"#]]
        .assert_eq(&NodeState::from_document(doc).unwrap_err().to_string());
        let ok = br#"{"node":{"name":"n1","labels":{}},"resources":[{"kind":"package","name":"nginx","ensure":"present"},{"kind":"file","path":"/etc/a","notify":["nginx"],"requires":[{"kind":"package","name":"nginx"}]},{"kind":"service","name":"nginx"}]}"#;
        assert!(NodeState::from_document(ok).is_ok());
    }

    /// The agent validates what it receives fully, not trusting the
    /// controller's sort or its cycle check.
    #[test]
    fn from_document_refuses_kind_order_violations_and_requires_cycles() {
        let doc = br#"{"node":{"name":"n1","labels":{}},"resources":[
            {"kind":"file","path":"/etc/a","requires":[{"kind":"file","name":"/etc/b"}]},
            {"kind":"file","path":"/etc/b","requires":[{"kind":"file","name":"/etc/a"}]},
            {"kind":"user","name":"u"}]}"#;
        expect_test::expect![[r#"
            resources[2]: user[u] comes after file[/etc/b]: resources must be in kind order (group, user, package, directory, file, symlink, cron, sysctl, service), then by key
            resources: requires form a cycle: file[/etc/a] -> file[/etc/b] -> file[/etc/a]"#]]
        .assert_eq(&NodeState::from_document(doc).unwrap_err().to_string());
        let ok = br#"{"node":{"name":"n1","labels":{}},"resources":[{"kind":"user","name":"u"},{"kind":"file","path":"/etc/a"},{"kind":"file","path":"/etc/b","requires":[{"kind":"file","name":"/etc/a"}]}]}"#;
        assert!(NodeState::from_document(ok).is_ok());
    }

    fn errs(yaml: &str) -> String {
        parse(&[Source {
            name: "s.yaml".into(),
            text: yaml.into(),
        }])
        .map(|_| "ok".into())
        .unwrap_or_else(|e| e.to_string())
    }

    /// A clash inside one role of one node group names that role and that
    /// group only (issue 8: it named "role web and role web (with different
    /// vars)" and a second, uninvolved group).
    #[test]
    fn conflicts_name_exactly_the_two_declarations_and_why() {
        let web = "  web:\n    symlinks: [{path: /etc/nginx/sites-enabled/default, ensure: absent}]\n    files: [{path: /etc/nginx/sites-enabled/default, content: x}]\n";
        let out = errs(&format!(
            "roles:\n  base:\n    files: [{{path: /etc/motd, content: hi}}]\n{web}groups:\n  all: {{roles: [base]}}\n  web: {{match: {{role: web}}, roles: [web]}}\n"
        ));
        expect_test::expect!["s.yaml:9: groups.web: file[/etc/nginx/sites-enabled/default] (s.yaml:6) and symlink[/etc/nginx/sites-enabled/default] (s.yaml:5), both of role web, are two resources at one path (a path holds one thing), and both reach nodes of node group web; to put the file where a symlink is, declare only the file, with `replace: true`"].assert_eq(&out);
        let out = errs(
            "roles:\n  r:\n    directories: [{path: /etc/x, ensure: absent}]\n    files: [{path: /etc/x, content: x}]\ngroups:\n  all: {roles: [r]}\n",
        );
        expect_test::expect!["s.yaml:6: groups.all: file[/etc/x] (s.yaml:4) and directory[/etc/x] (s.yaml:3), both of role r, are two resources at one path (a path holds one thing), and both reach nodes of node group all; to put the file where an empty directory is, declare only the file, with `replace: true`"].assert_eq(&out);
        // One template in a role given by two groups with different vars.
        let out = errs(
            "roles:\n  t:\n    files: [{path: /etc/t, content: \"{{ vars.x }}\", template: true}]\ngroups:\n  a: {roles: [t], vars: {x: 1}}\n  b: {roles: [t], vars: {x: 2}}\n",
        );
        expect_test::expect!["s.yaml:6: groups.b: file[/etc/t] of role t (s.yaml:3) renders differently with the vars of node groups a and b, and both reach nodes matching node groups a and b"].assert_eq(&out);
    }

    /// What each agent receives is byte for byte what rendering it alone,
    /// and serializing the whole state, gives: varied labels (some no
    /// group selects on, some selecting several groups), one render per
    /// distinct selection of node groups.
    #[test]
    fn fleet_documents_equal_per_node_renders_byte_for_byte() {
        let s = spec(&format!(
            "{SITE}  db: {{match: {{role: db}}, roles: [base]}}\n  eu: {{match: {{zone: eu}}, roles: [web], vars: {{port: 80}}}}\n"
        ));
        let mut renderer = Renderer::new(&s);
        let roles = ["web", "db", "cache", ""];
        let zones = ["eu", "us", ""];
        let mut n = 0;
        for (i, role) in roles.iter().enumerate() {
            for (j, zone) in zones.iter().enumerate() {
                for k in 0..3 {
                    let mut labels = vec![("rack", format!("r{k}"))];
                    labels.extend((!role.is_empty()).then(|| ("role", role.to_string())));
                    labels.extend((!zone.is_empty()).then(|| ("zone", zone.to_string())));
                    let meta = NodeMeta {
                        name: format!("node-{i}-{j}-{k}"),
                        labels: labels.into_iter().map(|(k, v)| (k.into(), v)).collect(),
                    };
                    let alone = serde_json::to_vec(&s.render(&meta)).unwrap();
                    let doc = renderer.document(&meta.name, &meta.labels);
                    assert_eq!(
                        String::from_utf8(doc.clone()).unwrap(),
                        String::from_utf8(alone.clone()).unwrap()
                    );
                    assert_eq!(crate::sha256_tag(&doc), crate::sha256_tag(&alone));
                    assert_eq!(NodeState::from_document(&doc).unwrap(), s.render(&meta));
                    n += 1;
                }
            }
        }
        assert_eq!(n, 36);
        // Selections: {all}, {all,web}, {all,db}, {all,eu}, {all,web,eu}, {all,db,eu}.
        assert_eq!(renderer.distinct(), 6);
    }

    #[test]
    fn diff_lists_added_changed_removed() {
        let s = spec(SITE);
        let a = s.render(&node(&[]));
        let b =
            spec(&SITE.replace("content: hi", "content: bye")).render(&node(&[("role", "web")]));
        let d = diff_states(&a, &b);
        assert_eq!(d.added, ["file[/etc/web]", "package[nginx]", "user[www]"]);
        assert_eq!(d.changed, ["file[/etc/motd]"]);
        assert!(d.removed.is_empty());
        assert_eq!(diff_states(&b, &a).removed.len(), 3);
    }

    /// A template's `vars.X` must be a var of every node group that gives
    /// the role to a node: the error names the template's file and line,
    /// the variable and the group. A guarded name may be missing.
    #[test]
    fn template_vars_must_be_defined_by_every_group_that_uses_the_role() {
        let yaml = "roles:\n  web:\n    files:\n      - {path: /etc/web.conf, content: \"listen {{ vars.port }}\", template: true}\ngroups:\n  web: {match: {role: web}, roles: [web], vars: {port: 80}}\n  eu: {match: {role: eu}, roles: [web], vars: {zone: eu}}\n";
        expect_test::expect!["s.yaml:4: groups.eu.vars: the template of file[/etc/web.conf] (role web) uses vars.port, which node group eu (s.yaml:7) does not define; defined vars: zone; add it under vars or guard it with `is defined` or `default`"]
            .assert_eq(&errs(yaml));
        let guarded = yaml.replace(
            "{{ vars.port }}",
            "{{ vars.port | default(80) }}{% if vars.tls is defined %}{{ vars.tls }}{% endif %}",
        );
        assert_eq!(errs(&guarded), "ok");
        let all = yaml.replace("vars: {zone: eu}", "vars: {port: 81}");
        assert_eq!(errs(&all), "ok");
    }

    /// The issue's `notify: [ngnix]` in a file applied with one role and no
    /// node groups: a role that no group uses is checked alone.
    #[test]
    fn references_in_a_role_no_group_uses_are_checked_alone() {
        expect_test::expect![[r#"
            s.yaml:4: roles.nt: service[nginx] requires package:nginx, which role nt does not declare (no node group uses it)
            s.yaml:3: roles.nt: file[/etc/nginx/nginx.conf] notifies service ngnix, which role nt does not declare (no node group uses it); declare it under services or drop it from notify"#]]
        .assert_eq(&errs(
            "roles:\n  nt:\n    files: [{path: /etc/nginx/nginx.conf, content: x, notify: [ngnix]}]\n    services: [{name: nginx, requires: [\"package:nginx\"]}]\n",
        ));
    }
}
