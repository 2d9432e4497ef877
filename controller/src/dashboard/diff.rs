//! The diff between two revisions' sources for the revisions page: per
//! source file (by name) added, removed or changed, with unified hunks of
//! three lines of context. Bounded in work and in output; the lines are
//! text for the templates, which escape them.

use serde::Serialize;

/// Lines of context around each change.
const CONTEXT: usize = 3;
/// Most line pairs aligned by longest common subsequence in one file; a
/// larger middle shows as all removed, then all added.
pub const MAX_ALIGN_CELLS: usize = 1_000_000;
/// Most diff lines shown over all files; the rest are counted.
pub const MAX_LINES: usize = 5_000;
/// Longest line shown; longer ones are cut with a visible mark.
pub const MAX_LINE_BYTES: usize = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Ctx,
    Del,
    Add,
    Hunk,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    pub kind: Kind,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileDiff {
    pub name: String,
    /// added, removed or changed.
    pub change: &'static str,
    pub adds: usize,
    pub dels: usize,
    pub lines: Vec<Line>,
    /// Diff lines of this file left out by [`MAX_LINES`].
    pub left_out: usize,
}

/// Per line of `a` and `b`: `Ctx` (in both), `Del` (only in `a`), `Add`
/// (only in `b`), in order. Common ends are matched first; the middle is
/// aligned by a longest common subsequence when it has at most
/// [`MAX_ALIGN_CELLS`] line pairs.
fn align(a: &[&str], b: &[&str]) -> Vec<Kind> {
    let head = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let tail = a[head..]
        .iter()
        .rev()
        .zip(b[head..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
    let mut out = vec![Kind::Ctx; head];
    if ma.len().saturating_mul(mb.len()) > MAX_ALIGN_CELLS {
        out.extend(std::iter::repeat_n(Kind::Del, ma.len()));
        out.extend(std::iter::repeat_n(Kind::Add, mb.len()));
    } else {
        // best[i * cols + j]: common lines of ma[i..] and mb[j..].
        let cols = mb.len() + 1;
        let mut best = vec![0u32; (ma.len() + 1) * cols];
        for i in (0..ma.len()).rev() {
            for j in (0..mb.len()).rev() {
                best[i * cols + j] = if ma[i] == mb[j] {
                    best[(i + 1) * cols + j + 1] + 1
                } else {
                    best[(i + 1) * cols + j].max(best[i * cols + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        loop {
            match (i < ma.len(), j < mb.len()) {
                (false, false) => break,
                (true, true) if ma[i] == mb[j] => {
                    out.push(Kind::Ctx);
                    i += 1;
                    j += 1;
                }
                (true, false) => {
                    out.push(Kind::Del);
                    i += 1;
                }
                (false, true) => {
                    out.push(Kind::Add);
                    j += 1;
                }
                (true, true) if best[(i + 1) * cols + j] >= best[i * cols + j + 1] => {
                    out.push(Kind::Del);
                    i += 1;
                }
                (true, true) => {
                    out.push(Kind::Add);
                    j += 1;
                }
            }
        }
    }
    out.extend(std::iter::repeat_n(Kind::Ctx, tail));
    out
}

fn cut(line: &str) -> String {
    let mut s = line.to_owned();
    ballast_proto::limits::truncate(&mut s, MAX_LINE_BYTES);
    s
}

/// The hunks of `a` → `b`, as lines.
fn hunks(a: &str, b: &str) -> (Vec<Line>, usize, usize) {
    let la: Vec<&str> = a.lines().collect();
    let lb: Vec<&str> = b.lines().collect();
    let kinds = align(&la, &lb);
    let adds = kinds.iter().filter(|k| **k == Kind::Add).count();
    let dels = kinds.iter().filter(|k| **k == Kind::Del).count();
    let changed: Vec<usize> = (0..kinds.len())
        .filter(|&k| kinds[k] != Kind::Ctx)
        .collect();
    let mut lines = Vec::new();
    let mut k = 0;
    while k < changed.len() {
        // One hunk: changes at most 2 * CONTEXT unchanged lines apart.
        let mut end = k;
        while end + 1 < changed.len() && changed[end + 1] - changed[end] <= 2 * CONTEXT + 1 {
            end += 1;
        }
        let from = changed[k].saturating_sub(CONTEXT);
        let to = (changed[end] + CONTEXT + 1).min(kinds.len());
        let mut ia = kinds[..from].iter().filter(|k| **k != Kind::Add).count();
        let mut ib = kinds[..from].iter().filter(|k| **k != Kind::Del).count();
        let na = kinds[from..to].iter().filter(|k| **k != Kind::Add).count();
        let nb = kinds[from..to].iter().filter(|k| **k != Kind::Del).count();
        lines.push(Line {
            kind: Kind::Hunk,
            text: format!("@@ -{},{na} +{},{nb} @@", ia + 1, ib + 1),
        });
        for kind in &kinds[from..to] {
            let text = match kind {
                Kind::Ctx => {
                    ia += 1;
                    ib += 1;
                    lb[ib - 1]
                }
                Kind::Del => {
                    ia += 1;
                    la[ia - 1]
                }
                Kind::Add | Kind::Hunk => {
                    ib += 1;
                    lb[ib - 1]
                }
            };
            lines.push(Line {
                kind: *kind,
                text: cut(text),
            });
        }
        k = end + 1;
    }
    (lines, adds, dels)
}

/// The files that differ between sources `a` (older) and `b`, by name, with
/// at most [`MAX_LINES`] diff lines in all.
pub fn sources(a: &[(String, String)], b: &[(String, String)]) -> Vec<FileDiff> {
    let find = |set: &[(String, String)], name: &str| {
        set.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone())
    };
    let mut names: Vec<&String> = a.iter().chain(b).map(|(n, _)| n).collect();
    names.sort();
    names.dedup();
    let mut budget = MAX_LINES;
    let mut out = Vec::new();
    for name in names {
        let (old, new) = (find(a, name), find(b, name));
        if old == new {
            continue;
        }
        let change = match (&old, &new) {
            (None, _) => "added",
            (_, None) => "removed",
            _ => "changed",
        };
        let (mut lines, adds, dels) =
            hunks(old.as_deref().unwrap_or(""), new.as_deref().unwrap_or(""));
        let left_out = lines.len().saturating_sub(budget);
        lines.truncate(budget);
        budget -= lines.len();
        out.push(FileDiff {
            name: name.clone(),
            change,
            adds,
            dels,
            lines,
            left_out,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(files: &[FileDiff]) -> String {
        let mut s = String::new();
        for f in files {
            s.push_str(&format!(
                "{} {} +{} -{}\n",
                f.change, f.name, f.adds, f.dels
            ));
            for l in &f.lines {
                let mark = match l.kind {
                    Kind::Ctx => ' ',
                    Kind::Del => '-',
                    Kind::Add => '+',
                    Kind::Hunk => '#',
                };
                s.push_str(&format!("{mark}{}\n", l.text));
            }
            if f.left_out > 0 {
                s.push_str(&format!("({} left out)\n", f.left_out));
            }
        }
        s
    }

    fn src(files: &[(&str, &str)]) -> Vec<(String, String)> {
        files
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn revision_diff_is_unified_per_source_file() {
        let a = src(&[
            ("site.yaml", "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n"),
            ("old.yaml", "x: 1\n"),
            ("same.yaml", "s\n"),
        ]);
        let b = src(&[
            ("site.yaml", "a\nb\nc\nd\nE\nf\ng\nh\ni\nj\nk\n"),
            ("new.yaml", "y: 2\n"),
            ("same.yaml", "s\n"),
        ]);
        expect_test::expect![[r#"
            added new.yaml +1 -0
            #@@ -1,0 +1,1 @@
            +y: 2
            removed old.yaml +0 -1
            #@@ -1,1 +1,0 @@
            -x: 1
            changed site.yaml +2 -1
            #@@ -2,9 +2,10 @@
             b
             c
             d
            -e
            +E
             f
             g
             h
             i
             j
            +k
        "#]]
        .assert_eq(&show(&sources(&a, &b)));
    }

    #[test]
    fn revision_diff_is_bounded_in_lines_and_work() {
        // A middle too large to align is shown as removed, then added.
        let old: String = (0..1100).map(|i| format!("old {i}\n")).collect();
        let new: String = (0..1100).map(|i| format!("new {i}\n")).collect();
        let files = sources(&src(&[("big.yaml", &old)]), &src(&[("big.yaml", &new)]));
        assert_eq!((files[0].adds, files[0].dels), (1100, 1100));
        // 1 hunk line + 2200 changed lines, within the budget.
        assert_eq!(files[0].lines.len(), 2201);
        let old: String = (0..6000).map(|i| format!("{i}\n")).collect();
        let files = sources(&[], &src(&[("a.yaml", &old), ("b.yaml", "x\n")]));
        let shown: usize = files.iter().map(|f| f.lines.len()).sum();
        assert_eq!(shown, MAX_LINES);
        assert_eq!(files[0].left_out, 6001 - MAX_LINES);
        assert_eq!((files[1].lines.len(), files[1].left_out), (0, 2));
        let long = "y".repeat(10_000);
        let files = sources(&[], &src(&[("l.yaml", &long)]));
        assert!(files[0].lines[1].text.len() < MAX_LINE_BYTES + 40);
        assert!(files[0].lines[1].text.contains("truncated"));
    }
}
