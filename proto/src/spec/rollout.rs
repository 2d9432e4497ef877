//! The rollout policies of a desired state (top-level `rollout:`, and a node
//! group's own `rollout:` that overrides it for the nodes the group reaches):
//! ordered waves of nodes, a bake time and a failure budget, decoded with
//! file and line on every error; and the pure choice of which policy paces a
//! node and which wave it is in.
//!
//! Invariant: two node groups that can reach one node give the same policy
//! or none ([`check`]), so every node has exactly one policy, or none.

use super::SpecError;
use super::decode::{Cx, join};
use super::model::{Labels, Origin, Spec};
use super::yaml::{Node, Val};
use serde::{Deserialize, Serialize};

/// Longest bake time a policy may ask for.
pub const MAX_BAKE_MS: u64 = 7 * 86_400_000;
/// Most waves in one policy.
pub const MAX_WAVES: usize = 64;

/// How a new revision reaches the fleet: wave by wave, each one baking
/// healthy before the next starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RolloutPolicy {
    pub waves: Vec<Wave>,
    /// How long every node of a wave must stay converged and healthy.
    pub bake_ms: u64,
    /// How many nodes of a wave may fail before the rollout pauses.
    pub max_failed: u32,
}

/// One wave: the remaining nodes matching `selector` (all when empty), or
/// `percent` of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Wave {
    #[serde(rename = "match", default, skip_serializing_if = "Labels::is_empty")]
    pub selector: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
}

impl RolloutPolicy {
    /// The node names of each wave, in order. Nodes are taken in name order;
    /// a wave takes the remaining nodes that match its labels, or `percent`
    /// of them rounded up (at least one when any match). Nodes in no wave
    /// make one last wave. Empty waves are kept, so indices follow the policy.
    pub fn assign<'a>(
        &self,
        nodes: impl IntoIterator<Item = (&'a str, &'a Labels)>,
    ) -> Vec<Vec<String>> {
        let mut remaining: Vec<(&str, &Labels)> = nodes.into_iter().collect();
        remaining.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = Vec::new();
        for wave in &self.waves {
            let matching: Vec<&str> = remaining
                .iter()
                .filter(|(_, l)| wave.selector.iter().all(|(k, v)| l.get(k) == Some(v)))
                .map(|(n, _)| *n)
                .collect();
            let take = match wave.percent {
                None => matching.len(),
                Some(p) => (matching.len() * p as usize).div_ceil(100),
            };
            // A set: a wave of a large fleet takes thousands of names.
            let chosen: std::collections::HashSet<&str> =
                matching[..take].iter().copied().collect();
            remaining.retain(|(n, _)| !chosen.contains(n));
            out.push(matching[..take].iter().map(|n| (*n).to_owned()).collect());
        }
        if !remaining.is_empty() {
            out.push(remaining.iter().map(|(n, _)| (*n).to_owned()).collect());
        }
        out
    }
}

/// The nodes one policy paces, in waves. Nodes whose policies are equal
/// (same waves, bake and budget) share one track, whoever gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    /// Where the policy is given: `rollout` (top level) and/or
    /// `groups.NAME.rollout`, joined (at most [`MAX_TRACK_SOURCES`] named).
    pub name: String,
    pub policy: RolloutPolicy,
    /// Node names per wave, as [`RolloutPolicy::assign`] makes them.
    pub waves: Vec<Vec<String>>,
}

/// Sources named in a track's name before `and N more`.
pub const MAX_TRACK_SOURCES: usize = 3;

impl Spec {
    /// The policy that paces a node with `labels`, and the YAML path that
    /// gives it: a node group's `rollout:` when a group that reaches the node
    /// has one (they all give the same, see [`check`]), else the top-level
    /// `rollout:`; none: the node gets a change at once.
    pub fn rollout_for(&self, labels: &Labels) -> Option<(String, &RolloutPolicy)> {
        let by_group = self.groups.iter().find_map(|(name, g)| {
            let reaches = g.selector.iter().all(|(k, v)| labels.get(k) == Some(v));
            match (&g.rollout, reaches) {
                (Some(p), true) => Some((format!("groups.{name}.rollout"), p)),
                _ => None,
            }
        });
        by_group.or_else(|| self.rollout.as_ref().map(|p| ("rollout".to_owned(), p)))
    }

    /// Whether any change of this spec rolls out in waves.
    pub fn has_rollout(&self) -> bool {
        self.rollout.is_some() || self.groups.values().any(|g| g.rollout.is_some())
    }

    /// The tracks a change of this spec rolls out on, over `nodes`: one per
    /// distinct policy that paces some node (the top-level policy's first,
    /// then in the order of their first source's name), with its waves; and
    /// the nodes no policy paces, which get the change at once.
    pub fn rollout_tracks<'a>(
        &self,
        nodes: impl IntoIterator<Item = (&'a str, &'a Labels)>,
    ) -> (Vec<Track>, Vec<String>) {
        type Paced<'a> = (&'a RolloutPolicy, Vec<String>, Vec<(&'a str, &'a Labels)>);
        let mut paced: Vec<Paced<'_>> = Vec::new();
        let mut at_once = Vec::new();
        for (name, labels) in nodes {
            let Some((source, policy)) = self.rollout_for(labels) else {
                at_once.push(name.to_owned());
                continue;
            };
            let i = match paced.iter().position(|(p, _, _)| *p == policy) {
                Some(i) => i,
                None => {
                    paced.push((policy, Vec::new(), Vec::new()));
                    paced.len() - 1
                }
            };
            if !paced[i].1.contains(&source) {
                paced[i].1.push(source);
            }
            paced[i].2.push((name, labels));
        }
        let mut tracks: Vec<Track> = paced
            .into_iter()
            .map(|(policy, mut sources, members)| {
                // `rollout` sorts before `groups.…` only by this key.
                sources.sort_by_key(|s| (s != "rollout", s.clone()));
                let mut name = sources
                    .iter()
                    .take(MAX_TRACK_SOURCES)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                if sources.len() > MAX_TRACK_SOURCES {
                    name.push_str(&format!(" and {} more", sources.len() - MAX_TRACK_SOURCES));
                }
                Track {
                    name,
                    waves: policy.assign(members),
                    policy: policy.clone(),
                }
            })
            .collect();
        tracks.sort_by(|a, b| {
            let key = |t: &Track| (!t.name.starts_with("rollout"), t.name.clone());
            key(a).cmp(&key(b))
        });
        at_once.sort();
        (tracks, at_once)
    }
}

/// Two node groups that can reach one node (their `match` labels do not
/// exclude each other) and give different rollout policies: an error at
/// the later one's `rollout:`, naming both groups and where each gives its
/// policy. Equal policies are one policy.
pub(super) fn check(spec: &Spec) -> Vec<SpecError> {
    let with: Vec<(&String, &super::model::NodeGroup, &RolloutPolicy)> = spec
        .groups
        .iter()
        .filter_map(|(n, g)| g.rollout.as_ref().map(|p| (n, g, p)))
        .collect();
    let mut errors = Vec::new();
    for (i, (an, a, ap)) in with.iter().enumerate() {
        for (bn, b, bp) in &with[i + 1..] {
            if ap == bp || !super::render::compatible(&a.selector, &b.selector) {
                continue;
            }
            let (first, second): ((&str, &Origin), (&str, &Origin)) =
                if (&a.rollout_origin.file, a.rollout_origin.line)
                    <= (&b.rollout_origin.file, b.rollout_origin.line)
                {
                    ((an, &a.rollout_origin), (bn, &b.rollout_origin))
                } else {
                    ((bn, &b.rollout_origin), (an, &a.rollout_origin))
                };
            errors.push(SpecError {
                file: second.1.file.clone(),
                line: second.1.line,
                field: format!("groups.{}.rollout", second.0),
                message: format!(
                    "node groups {} ({}) and {} ({}) give different rollout policies and can reach the same node (their match labels do not exclude each other); a node follows one policy: give both the same policy, or match labels that exclude each other",
                    first.0, first.1, second.0, second.1
                ),
            });
        }
    }
    errors
}

/// `30s`, `2m`, `1h`, `500ms` (or a bare number of seconds) in milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().ok()?;
    let per = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(per)
}

/// Decodes `rollout: {waves: [...], bake: 2m, max_failed: 0}`.
pub(super) fn decode_rollout(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<RolloutPolicy> {
    let f = cx.fields(node, path, &["waves", "bake", "max_failed"])?;
    let mut policy = RolloutPolicy::default();
    let before = cx.errors.len();
    if let Some(b) = f.get("bake") {
        let field = join(path, "bake");
        match cx.string(b, &field).map(|s| (parse_duration_ms(&s), s)) {
            Some((Some(ms), _)) if ms <= MAX_BAKE_MS => policy.bake_ms = ms,
            Some((_, s)) => cx.err(
                b.line,
                &field,
                format!("bake `{s}` is not a duration of at most 7 days: write a number with ms, s, m or h (e.g. 2m)"),
            ),
            None => {}
        }
    }
    if let Some(m) = f.get("max_failed") {
        policy.max_failed = cx.u32(m, &join(path, "max_failed")).unwrap_or(0);
    }
    let Some(waves) = f.get("waves") else {
        cx.err(
            node.line,
            path,
            "a rollout needs `waves`: a list of {match: {LABEL: VALUE}} and/or {percent: N}",
        );
        return None;
    };
    let field = join(path, "waves");
    let items = cx.list(waves, &field);
    if items.is_empty() || items.len() > MAX_WAVES {
        cx.err(
            waves.line,
            &field,
            format!("give from 1 to {MAX_WAVES} waves"),
        );
    }
    for (i, item) in items.iter().enumerate() {
        let wpath = format!("{field}[{i}]");
        let Some(w) = cx.fields(item, &wpath, &["match", "percent"]) else {
            continue;
        };
        let mut wave = Wave::default();
        if let Some(m) = w.get("match") {
            wave.selector = cx.string_map(m, &join(&wpath, "match"));
        }
        if let Some(p) = w.get("percent") {
            let pfield = join(&wpath, "percent");
            match cx.u32(p, &pfield) {
                Some(n) if (1..=100).contains(&n) => wave.percent = Some(n),
                Some(n) => cx.err(
                    p.line,
                    &pfield,
                    format!("percent {n} is out of range: give 1 to 100"),
                ),
                None => {}
            }
        }
        if w.is_empty() || matches!(item.val, Val::Null) {
            cx.err(
                item.line,
                &wpath,
                "a wave needs `match` labels and/or a `percent`",
            );
        }
        policy.waves.push(wave);
    }
    (cx.errors.len() == before).then_some(policy)
}

#[cfg(test)]
mod tests {
    use super::super::parse::errs;
    use super::*;
    use expect_test::expect;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn policy(waves: Vec<Wave>) -> RolloutPolicy {
        RolloutPolicy {
            waves,
            ..Default::default()
        }
    }

    fn wave(sel: &[(&str, &str)], percent: Option<u32>) -> Wave {
        Wave {
            selector: labels(sel),
            percent,
        }
    }

    #[test]
    fn waves_take_matches_then_percent_of_the_rest_and_leftovers_go_last() {
        let mut nodes: Vec<(String, Labels)> = Vec::new();
        for i in 0..10 {
            nodes.push((format!("p{i}"), labels(&[("env", "prod")])));
        }
        nodes.push(("d1".into(), labels(&[("env", "dev")])));
        nodes.push(("q1".into(), labels(&[("env", "qa")])));
        nodes.push(("x1".into(), labels(&[])));
        let p = policy(vec![
            wave(&[("env", "dev")], None),
            wave(&[("env", "qa")], None),
            wave(&[("env", "prod")], Some(25)),
            wave(&[("env", "prod")], None),
        ]);
        let got = p.assign(nodes.iter().map(|(n, l)| (n.as_str(), l)));
        assert_eq!(got[0], ["d1"]);
        assert_eq!(got[1], ["q1"]);
        // 25% of 10, rounded up.
        assert_eq!(got[2], ["p0", "p1", "p2"]);
        assert_eq!(got[3].len(), 7);
        assert_eq!(got[4], ["x1"], "a node in no wave goes last");
        assert_eq!(got.len(), 5);
    }

    #[test]
    fn percent_alone_takes_at_least_one_and_empty_waves_keep_their_place() {
        let l = labels(&[]);
        let p = policy(vec![
            wave(&[("env", "dev")], None),
            wave(&[], Some(1)),
            wave(&[], Some(100)),
        ]);
        let got = p.assign([("a", &l), ("b", &l), ("c", &l)]);
        assert_eq!(
            got,
            vec![vec![], vec!["a".to_owned()], vec!["b".into(), "c".into()]]
        );
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_ms("2m"), Some(120_000));
        assert_eq!(parse_duration_ms("30"), Some(30_000));
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("1d"), None);
        assert_eq!(parse_duration_ms("m"), None);
    }

    #[test]
    fn rollout_policies_decode_and_bad_ones_name_file_line_and_field() {
        let base = "roles:\n  r: {}\ngroups:\n  all: {roles: [r]}\n";
        let good = format!(
            "{base}rollout:\n  waves: [{{match: {{env: dev}}}}, {{percent: 5, match: {{env: prod}}}}]\n  bake: 2m\n  max_failed: 1\n"
        );
        assert_eq!(errs(&good), "ok");
        let spec = super::super::parse(&[super::super::Source {
            name: "s".into(),
            text: good,
        }])
        .unwrap();
        let p = spec.rollout.unwrap();
        assert_eq!((p.bake_ms, p.max_failed, p.waves.len()), (120_000, 1, 2));
        assert_eq!(p.waves[1].percent, Some(5));
        expect![[r#"
            site.yaml:7: rollout.bake: bake `2 weeks` is not a duration of at most 7 days: write a number with ms, s, m or h (e.g. 2m)
            site.yaml:6: rollout.waves[0].percent: percent 0 is out of range: give 1 to 100
            site.yaml:6: rollout.waves[1]: a wave needs `match` labels and/or a `percent`"#]]
        .assert_eq(&errs(&format!("{base}rollout:\n  waves: [{{percent: 0}}, {{}}]\n  bake: 2 weeks\n")));
        expect!["site.yaml:6: rollout: a rollout needs `waves`: a list of {match: {LABEL: VALUE}} and/or {percent: N}"]
            .assert_eq(&errs(&format!("{base}rollout:\n  bake: 1m\n")));
    }

    fn parse_all(files: &[(&str, &str)]) -> Result<Spec, String> {
        let sources: Vec<super::super::Source> = files
            .iter()
            .map(|(n, t)| super::super::Source {
                name: (*n).into(),
                text: (*t).into(),
            })
            .collect();
        super::super::parse(&sources).map_err(|e| e.to_string())
    }

    /// A group's `rollout:` is decoded like the top-level one, with its own
    /// field path, and overrides the top-level policy for its nodes only.
    #[test]
    fn a_node_groups_rollout_overrides_the_top_level_one_for_its_nodes() {
        let spec = parse_all(&[(
            "site.yaml",
            "roles:\n  r: {}\ngroups:\n  all: {roles: [r]}\n  db:\n    match: {role: db}\n    roles: [r]\n    rollout: {waves: [{percent: 50}, {percent: 100}], bake: 10m, max_failed: 1}\nrollout:\n  waves: [{match: {env: dev}}, {match: {env: prod}}]\n  bake: 1m\n",
        )])
        .unwrap();
        let db = labels(&[("role", "db"), ("env", "dev")]);
        let web = labels(&[("role", "web"), ("env", "dev")]);
        let (src, p) = spec.rollout_for(&db).unwrap();
        assert_eq!(
            (src.as_str(), p.bake_ms, p.max_failed),
            ("groups.db.rollout", 600_000, 1)
        );
        let (src, p) = spec.rollout_for(&web).unwrap();
        assert_eq!((src.as_str(), p.bake_ms), ("rollout", 60_000));

        let prod = labels(&[("role", "web"), ("env", "prod")]);
        let db2 = labels(&[("role", "db"), ("env", "prod")]);
        let (tracks, at_once) = spec.rollout_tracks([
            ("web-2", &prod),
            ("db-1", &db),
            ("web-1", &web),
            ("db-2", &db2),
        ]);
        let got: Vec<(&str, &Vec<Vec<String>>)> =
            tracks.iter().map(|t| (t.name.as_str(), &t.waves)).collect();
        assert_eq!(
            got,
            [
                (
                    "rollout",
                    &vec![vec!["web-1".to_owned()], vec!["web-2".into()]]
                ),
                (
                    "groups.db.rollout",
                    &vec![vec!["db-1".to_owned()], vec!["db-2".into()]]
                ),
            ],
            "waves are computed per policy, over the nodes it paces"
        );
        assert!(at_once.is_empty());
    }

    /// Without a top-level policy, nodes no group's policy reaches get a
    /// change at once; groups that give equal policies share one track.
    #[test]
    fn equal_policies_share_waves_and_unpaced_nodes_go_at_once() {
        let spec = parse_all(&[(
            "site.yaml",
            "roles:\n  r: {}\ngroups:\n  web: {match: {role: web}, roles: [r], rollout: {waves: [{match: {env: dev}}]}}\n  db: {match: {role: db}, roles: [r], rollout: {waves: [{match: {env: dev}}]}}\n  all: {roles: [r]}\n",
        )])
        .unwrap();
        let (w, d, x) = (
            labels(&[("role", "web"), ("env", "dev")]),
            labels(&[("role", "db")]),
            labels(&[("role", "cache")]),
        );
        let (tracks, at_once) = spec.rollout_tracks([("w", &w), ("d", &d), ("x", &x)]);
        assert_eq!(tracks.len(), 1);
        assert_eq!(tracks[0].name, "groups.db.rollout, groups.web.rollout");
        assert_eq!(
            tracks[0].waves,
            [vec!["w".to_owned()], vec!["d".to_owned()]]
        );
        assert_eq!(at_once, ["x"]);
        assert!(spec.has_rollout());
    }

    /// Two groups that can reach one node with different policies are
    /// refused at the later `rollout:`, naming both groups, files and
    /// lines; groups whose labels exclude each other, or equal policies,
    /// are fine.
    #[test]
    fn conflicting_group_policies_name_both_groups_files_and_lines() {
        let web = "roles:\n  r: {}\ngroups:\n  web:\n    match: {role: web}\n    roles: [r]\n    rollout: {waves: [{match: {env: dev}}], bake: 1m}\n";
        let eu = "groups:\n  eu:\n    match: {dc: eu}\n    roles: [r]\n    rollout: {waves: [{percent: 10}], bake: 5m}\n";
        expect!["b.yaml:5: groups.eu.rollout: node groups web (a.yaml:7) and eu (b.yaml:5) give different rollout policies and can reach the same node (their match labels do not exclude each other); a node follows one policy: give both the same policy, or match labels that exclude each other"]
            .assert_eq(&parse_all(&[("a.yaml", web), ("b.yaml", eu)]).unwrap_err());
        let db = eu.replace("eu", "db").replace("dc: db", "role: db");
        assert!(parse_all(&[("a.yaml", web), ("b.yaml", &db)]).is_ok());
        let same = eu.replace(
            "[{percent: 10}], bake: 5m",
            "[{match: {env: dev}}], bake: 1m",
        );
        assert!(parse_all(&[("a.yaml", web), ("b.yaml", &same)]).is_ok());
    }

    #[test]
    fn a_bad_group_rollout_names_file_line_and_field() {
        expect![[r#"
            site.yaml:5: groups.g.rollout.bake: bake `soon` is not a duration of at most 7 days: write a number with ms, s, m or h (e.g. 2m)
            site.yaml:6: groups.g.rollout.waves[0].percent: percent 101 is out of range: give 1 to 100
            site.yaml:7: groups.h.rollout.wave: unknown field `wave`, did you mean `waves`? allowed: waves, bake, max_failed
            site.yaml:7: groups.h.rollout: a rollout needs `waves`: a list of {match: {LABEL: VALUE}} and/or {percent: N}"#]]
        .assert_eq(&errs(
            "roles:\n  r: {}\ngroups:\n  g:\n    rollout: {bake: soon,\n      waves: [{percent: 101}]}\n  h: {rollout: {wave: []}}\n",
        ));
    }
}
