//! Content diffs: the one unified line diff of a file's content, used by the
//! agent (a run's report, a plan's dry run) and by the controller (`ballast
//! diff`, from the content it can render).
//!
//! Invariant: a diff is bounded whatever it is given: inputs above
//! [`MAX_DIFF_INPUT`] are not compared, the alignment above
//! [`MAX_DIFF_CELLS`] is not attempted, and the text is cut at a line to
//! [`MAX_DIFF_BYTES`] with a visible mark. Binary content is never shown,
//! only its size.

use crate::limits::{MAX_DIFF_BYTES, MAX_DIFF_CELLS, MAX_DIFF_INPUT};

/// Lines of context around each change.
const CONTEXT: usize = 3;

/// The diff of a file's content from `old` (`None`: the file is new) to
/// `new`, headed `diff (+A -D lines)`. Binary content (not UTF-8, or holding
/// a NUL byte) is summarised as `diff not shown (binary, N bytes)`, content
/// above [`MAX_DIFF_INPUT`] by its sizes. Empty when nothing differs.
pub fn content(path: &str, old: Option<&[u8]>, new: &[u8]) -> String {
    if old == Some(new) {
        return String::new();
    }
    let (old_len, new_len) = (old.map(|o| o.len() as u64), new.len() as u64);
    if old.is_some_and(|o| o.len() > MAX_DIFF_INPUT) || new.len() > MAX_DIFF_INPUT {
        return too_large(old_len, new_len);
    }
    let from = if old.is_some() { path } else { "/dev/null" };
    let (Some(old), Some(new)) = (old.map(text).unwrap_or(Some("")), text(new)) else {
        return format!("diff not shown (binary, {})", sizes(old_len, new_len));
    };
    unified(from, path, old, new)
}

/// What stands for the diff of content above [`MAX_DIFF_INPUT`]: the sizes.
pub fn too_large(old_len: Option<u64>, new_len: u64) -> String {
    format!(
        "diff not shown (over {MAX_DIFF_INPUT} bytes, {})",
        sizes(old_len, new_len)
    )
}

fn sizes(old_len: Option<u64>, new_len: u64) -> String {
    match old_len {
        Some(o) => format!("{o} -> {new_len} bytes"),
        None => format!("{new_len} bytes"),
    }
}

/// The text of content that is not binary.
fn text(b: &[u8]) -> Option<&str> {
    if b.contains(&0) {
        return None;
    }
    std::str::from_utf8(b).ok()
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Op {
    Same,
    Del,
    Add,
}

/// Line operations turning `a` into `b`: common ends trimmed, the middle
/// aligned by longest common subsequence when small enough, else shown as
/// all removed, then all added.
fn line_ops(a: &[&str], b: &[&str]) -> Vec<Op> {
    let pre = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..]
        .iter()
        .rev()
        .zip(b[pre..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    let mut ops = vec![Op::Same; pre];
    if ma.len().saturating_mul(mb.len()) > MAX_DIFF_CELLS {
        ops.extend(std::iter::repeat_n(Op::Del, ma.len()));
        ops.extend(std::iter::repeat_n(Op::Add, mb.len()));
    } else {
        // lcs[i][j]: the longest common subsequence of ma[i..] and mb[j..].
        let w = mb.len() + 1;
        let mut lcs = vec![0u32; (ma.len() + 1) * w];
        for i in (0..ma.len()).rev() {
            for j in (0..mb.len()).rev() {
                lcs[i * w + j] = if ma[i] == mb[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < ma.len() || j < mb.len() {
            if i < ma.len() && j < mb.len() && ma[i] == mb[j] {
                ops.push(Op::Same);
                (i, j) = (i + 1, j + 1);
            } else if i < ma.len() && (j == mb.len() || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1])
            {
                ops.push(Op::Del);
                i += 1;
            } else {
                ops.push(Op::Add);
                j += 1;
            }
        }
    }
    ops.extend(std::iter::repeat_n(Op::Same, suf));
    ops
}

/// A unified diff of the lines of `a` → `b` with a `diff (+A -D lines)`
/// head line, cut at a line to [`MAX_DIFF_BYTES`] (see [`cut`]).
pub fn unified(from: &str, to: &str, a: &str, b: &str) -> String {
    let la: Vec<&str> = a.lines().collect();
    let lb: Vec<&str> = b.lines().collect();
    let ops = line_ops(&la, &lb);
    let adds = ops.iter().filter(|o| **o == Op::Add).count();
    let dels = ops.iter().filter(|o| **o == Op::Del).count();
    let mut out = format!("diff (+{adds} -{dels} lines)\n--- {from}\n+++ {to}\n");
    // Positions in `ops` of each changed line, gathered into hunks whose
    // changes are at most 2 * CONTEXT unchanged lines apart.
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k] != Op::Same).collect();
    let mut k = 0;
    while k < changed.len() && out.len() <= MAX_DIFF_BYTES {
        let mut end = k;
        while end + 1 < changed.len() && changed[end + 1] - changed[end] <= 2 * CONTEXT + 1 {
            end += 1;
        }
        let from = changed[k].saturating_sub(CONTEXT);
        let to = (changed[end] + CONTEXT + 1).min(ops.len());
        // Line numbers at `from` in a and b.
        let sa = ops[..from].iter().filter(|o| **o != Op::Add).count();
        let sb = ops[..from].iter().filter(|o| **o != Op::Del).count();
        let na = ops[from..to].iter().filter(|o| **o != Op::Add).count();
        let nb = ops[from..to].iter().filter(|o| **o != Op::Del).count();
        out.push_str(&format!("@@ -{},{na} +{},{nb} @@\n", sa + 1, sb + 1));
        let (mut ia, mut ib) = (sa, sb);
        for op in &ops[from..to] {
            let (mark, line) = match op {
                Op::Same => {
                    ia += 1;
                    ib += 1;
                    (' ', lb[ib - 1])
                }
                Op::Del => {
                    ia += 1;
                    ('-', la[ia - 1])
                }
                Op::Add => {
                    ib += 1;
                    ('+', lb[ib - 1])
                }
            };
            out.push(mark);
            out.push_str(line);
            out.push('\n');
            if out.len() > MAX_DIFF_BYTES {
                // The rest is cut anyway: stop building it.
                break;
            }
        }
        k = end + 1;
    }
    cut(&mut out, MAX_DIFF_BYTES);
    out
}

/// The line that ends a cut diff.
pub const CUT_MARK: &str = "…[diff truncated]\n";

/// Cuts a diff to at most `max` bytes at a line end, ending it with the
/// visible [`CUT_MARK`] line within `max`.
pub fn cut(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut keep = max.saturating_sub(CUT_MARK.len());
    while !s.is_char_boundary(keep) {
        keep -= 1;
    }
    keep = s[..keep].rfind('\n').map_or(0, |i| i + 1);
    s.truncate(keep);
    if keep + CUT_MARK.len() <= max {
        s.push_str(CUT_MARK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_shows_changed_lines_with_context() {
        let a = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n";
        let b = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n10\n11\n";
        expect_test::expect![[r#"
            diff (+2 -1 lines)
            --- /etc/x
            +++ /etc/x
            @@ -2,9 +2,10 @@
             2
             3
             4
            -5
            +five
             6
             7
             8
             9
             10
            +11
        "#]]
        .assert_eq(&content("/etc/x", Some(a.as_bytes()), b.as_bytes()));
    }

    #[test]
    fn a_new_file_is_all_added_and_equal_content_has_no_diff() {
        expect_test::expect![[r#"
            diff (+2 -0 lines)
            --- /dev/null
            +++ /etc/new
            @@ -1,0 +1,2 @@
            +a
            +b
        "#]]
        .assert_eq(&content("/etc/new", None, b"a\nb\n"));
        assert_eq!(content("/etc/x", Some(b"same"), b"same"), "");
    }

    #[test]
    fn binary_content_shows_only_its_size() {
        assert_eq!(
            content("/bin/x", Some(b"text\n"), b"\x7fELF\0\x01"),
            "diff not shown (binary, 5 -> 6 bytes)"
        );
        assert_eq!(
            content("/bin/x", None, &[0xff, 0xfe, 0x41]),
            "diff not shown (binary, 3 bytes)"
        );
    }

    #[test]
    fn content_above_the_input_bound_is_not_compared() {
        let big = vec![b'x'; MAX_DIFF_INPUT + 1];
        assert_eq!(
            content("/big", Some(b"x"), &big),
            format!("diff not shown (over {MAX_DIFF_INPUT} bytes, 1 -> 262145 bytes)")
        );
    }

    /// A diff past its bound is cut at a line, with a visible mark, and
    /// stays within the bound; the head line still counts every line.
    #[test]
    fn diff_is_cut_at_a_line_with_a_visible_mark() {
        let a: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        let b: String = (0..20_000).map(|i| format!("other {i}\n")).collect();
        let d = content("/big", Some(a.as_bytes()), b.as_bytes());
        assert!(d.len() <= MAX_DIFF_BYTES, "{}", d.len());
        assert!(d.starts_with("diff (+20000 -20000 lines)"), "{}", &d[..40]);
        assert!(d.ends_with(CUT_MARK), "{d}");
        // Every line before the mark is whole.
        let body: Vec<&str> = d.lines().collect();
        let before = body[body.len() - 2];
        assert!(
            before.starts_with("-line ") || before.starts_with("+other "),
            "{before:?}"
        );
        let mut s = "é\n".repeat(100);
        cut(&mut s, 51);
        assert!(s.len() <= 51 && s.ends_with(CUT_MARK), "{s}");
    }
}
