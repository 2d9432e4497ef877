//! The rollout policy of a desired state (top-level `rollout:`): ordered
//! waves of nodes, a bake time and a failure budget, decoded with file and
//! line on every error; and the pure choice of which node goes in which wave.

use super::decode::{Cx, join};
use super::model::Labels;
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
            let chosen: Vec<String> = matching[..take].iter().map(|n| (*n).to_owned()).collect();
            remaining.retain(|(n, _)| !chosen.iter().any(|c| c == n));
            out.push(chosen);
        }
        if !remaining.is_empty() {
            out.push(remaining.iter().map(|(n, _)| (*n).to_owned()).collect());
        }
        out
    }
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
}
