//! `file` resources: content (literal or a minijinja template), owner, group,
//! mode, present or absent. Writes are atomic; replaced or deleted content is
//! backed up by SHA-256 under the state dir (see [`crate::backup`]).
//!
//! Invariant: an existing file is never chowned or chmodded in place. Its
//! metadata and content are observed through one descriptor, and any change
//! (content, owner, group or mode) writes a new file that only the agent
//! could open, with owner then mode set, and renames it over the old one: a
//! hard link to the old file, or a descriptor someone holds on it, never
//! gains the new owner or mode.
//!
//! Only a regular file is changed or removed at `path`. A file with
//! `replace: true` takes the place of a symlink or an empty directory there
//! in one step (see [`crate::host::Staged::replacing`]); a non-empty
//! directory or a device is refused whatever it says. The replaced symlink's
//! target is in the change text, so the report keeps it.

use crate::engine::{Context, Resource};
use crate::host::{Host, Kind, Meta, PENDING_ID, Staged};
use anyhow::bail;
use ballast_proto::spec::{Ensure, File};
use std::fmt;
use std::path::Path;

pub struct FileRes<'a> {
    spec: &'a File,
    /// The content to write, rendered when `template: true`.
    content: Option<Vec<u8>>,
    state_dir: &'a Path,
}

pub struct Observed {
    meta: Option<Meta>,
    /// Whether the content equals the desired one (only read when sizes match).
    same_content: bool,
    /// The desired owner and group as ids on this host.
    uid: Option<u32>,
    gid: Option<u32>,
    /// What a `replace: true` file takes the place of (then `meta` is its).
    replaces: Option<Replaced>,
}

/// What a file with `replace: true` found at its path and replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replaced {
    Symlink { target: String },
    EmptyDir,
}

impl fmt::Display for Replaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Replaced::Symlink { target } => write!(f, "symlink -> {target}"),
            Replaced::EmptyDir => write!(f, "empty directory"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create {
        bytes: usize,
    },
    /// A new file in place of a symlink or an empty directory.
    Replace {
        what: Replaced,
        bytes: usize,
    },
    Content {
        from: u64,
        to: usize,
    },
    Mode {
        from: u32,
        to: u32,
    },
    Owner {
        from: u32,
        to: u32,
    },
    Group {
        from: u32,
        to: u32,
    },
    Remove,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Create { bytes } => write!(f, "create file ({bytes} bytes)"),
            Change::Replace { what, bytes } => {
                write!(f, "replace {what} with a file ({bytes} bytes)")
            }
            Change::Content { from, to } => write!(f, "replace content ({from} -> {to} bytes)"),
            Change::Mode { from, to } => write!(f, "mode {from:04o} -> {to:04o}"),
            Change::Owner {
                from,
                to: PENDING_ID,
            } => write!(f, "owner uid {from} -> a user this run creates"),
            Change::Group {
                from,
                to: PENDING_ID,
            } => write!(f, "group gid {from} -> a group this run creates"),
            Change::Owner { from, to } => write!(f, "owner uid {from} -> {to}"),
            Change::Group { from, to } => write!(f, "group gid {from} -> {to}"),
            Change::Remove => write!(f, "remove file"),
        }
    }
}

/// Renders a template with the node's facts, the group's vars and the node,
/// within the bounds of [`ballast_proto::spec::template`].
fn render(
    template: &str,
    cx: &Context<'_>,
    vars: &ballast_proto::spec::Vars,
) -> anyhow::Result<String> {
    ballast_proto::spec::template::render(template, cx.facts, vars, cx.node)
        .map_err(anyhow::Error::msg)
}

impl<'a> FileRes<'a> {
    pub fn new(spec: &'a File, cx: &'a Context<'a>) -> anyhow::Result<FileRes<'a>> {
        let content = match (&spec.content, spec.template) {
            (Some(t), true) => Some(render(t, cx, &spec.vars)?.into_bytes()),
            (Some(c), false) => Some(c.clone().into_bytes()),
            (None, _) => None,
        };
        Ok(FileRes {
            spec,
            content,
            state_dir: cx.state_dir,
        })
    }
}

/// Resolves owner and group names to ids on this host.
pub fn ids(
    host: &Host,
    owner: Option<&str>,
    group: Option<&str>,
) -> anyhow::Result<(Option<u32>, Option<u32>)> {
    let uid = owner.map(|o| host.lookup_id(o, false)).transpose()?;
    let gid = group.map(|g| host.lookup_id(g, true)).transpose()?;
    Ok((uid, gid))
}

/// Backs up the current content of `path` (see [`crate::backup`]); returns
/// its `sha256:HEX`, or `None` above the size cap. Best effort on a full
/// disk: the backup is skipped (and logged), so that a full disk never stops
/// the agent from putting back known-good content or removing a file.
pub fn backup(
    host: &Host,
    state_dir: &Path,
    path: &str,
    size: u64,
) -> anyhow::Result<Option<String>> {
    if size > crate::backup::MAX_BACKUP_SIZE {
        return Ok(None);
    }
    let old = host.read_file(path)?;
    match crate::backup::save(host, state_dir, path, &old) {
        Ok(tag) => Ok(Some(tag)),
        Err(e) if is_out_of_space(&e) => {
            tracing::warn!(path, error = %format!("{e:#}"), "no space for a backup; replacing without one");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Whether an error comes from a full disk or an exhausted quota.
fn is_out_of_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .or_else(|| c.downcast_ref::<nix::errno::Errno>().map(|e| *e as i32))
            .is_some_and(|n| {
                n == nix::errno::Errno::ENOSPC as i32 || n == nix::errno::Errno::EDQUOT as i32
            })
    })
}

impl Resource for FileRes<'_> {
    type State = Observed;
    type Change = Change;

    fn creates(change: &Change) -> bool {
        matches!(change, Change::Create { .. } | Change::Replace { .. })
    }

    fn id(&self) -> String {
        format!("file[{}]", self.spec.path)
    }

    fn observe(&self, host: &Host) -> anyhow::Result<Observed> {
        let want = self.content.as_ref().map(|c| c.len() as u64);
        let (meta, current) = match host.observe_file(&self.spec.path, want)? {
            Some((m, c)) => (Some(m), c),
            None => (None, None),
        };
        if meta.is_none() && self.spec.ensure == Ensure::Present {
            host.require_parent(&self.spec.path)?;
        }
        let replaces = match &meta {
            Some(m) if m.kind != Kind::File => Some(self.replaceable(host, m)?),
            _ => None,
        };
        let same_content = matches!((&current, &self.content), (Some(c), Some(w)) if c == w);
        let (uid, gid) = if self.spec.ensure == Ensure::Present {
            ids(host, self.spec.owner.as_deref(), self.spec.group.as_deref())?
        } else {
            (None, None)
        };
        Ok(Observed {
            meta,
            same_content,
            uid,
            gid,
            replaces,
        })
    }

    fn diff(&self, actual: &Observed) -> Vec<Change> {
        let want_len = self.content.as_ref().map(Vec::len).unwrap_or(0);
        if let Some(what) = &actual.replaces {
            return vec![Change::Replace {
                what: what.clone(),
                bytes: want_len,
            }];
        }
        match (self.spec.ensure, &actual.meta) {
            (Ensure::Absent, None) => vec![],
            (Ensure::Absent, Some(_)) => vec![Change::Remove],
            (Ensure::Present, None) => vec![Change::Create { bytes: want_len }],
            (Ensure::Present, Some(m)) => {
                let mut out = Vec::new();
                if self.content.is_some() && !actual.same_content {
                    out.push(Change::Content {
                        from: m.size,
                        to: want_len,
                    });
                }
                if let Some(mode) = self.spec.mode
                    && m.mode != mode
                {
                    out.push(Change::Mode {
                        from: m.mode,
                        to: mode,
                    });
                }
                if let Some(uid) = actual.uid
                    && m.uid != uid
                {
                    out.push(Change::Owner {
                        from: m.uid,
                        to: uid,
                    });
                }
                if let Some(gid) = actual.gid
                    && m.gid != gid
                {
                    out.push(Change::Group {
                        from: m.gid,
                        to: gid,
                    });
                }
                out
            }
        }
    }

    fn apply(
        &self,
        host: &Host,
        actual: &Observed,
        changes: &[Change],
    ) -> anyhow::Result<Option<String>> {
        let (backup, staged) = self.apply_staged(host, actual, changes)?;
        if let Some(staged) = staged {
            host.commit_durable(staged)?;
        }
        Ok(backup)
    }
}

impl FileRes<'_> {
    /// What is at the path instead of a regular file, if this file may
    /// replace it; otherwise the refusal, naming the option where it helps.
    fn replaceable(&self, host: &Host, m: &Meta) -> anyhow::Result<Replaced> {
        let path = &self.spec.path;
        if self.spec.ensure == Ensure::Absent {
            bail!(
                "{path} is {}, not a regular file; refusing to remove it",
                m.kind
            );
        }
        match (m.kind, self.spec.replace) {
            (Kind::Symlink, false) => {
                bail!("{path} is a symlink; set `replace: true` on the file to replace it")
            }
            (Kind::Dir, false) => bail!(
                "{path} is a directory; set `replace: true` on the file to replace it (only an empty directory is replaced)"
            ),
            (Kind::Symlink, true) => Ok(Replaced::Symlink {
                target: host.readlink(path)?,
            }),
            (Kind::Dir, true) if host.dir_is_empty(path, m)? => Ok(Replaced::EmptyDir),
            (Kind::Dir, true) => bail!(
                "{path} is a directory that is not empty; `replace: true` replaces only an empty directory, so nothing in it is lost"
            ),
            (kind, _) => bail!(
                "{path} is {kind}; refusing to replace it (`replace: true` replaces only a symlink or an empty directory)"
            ),
        }
    }

    /// Makes the changes, except that new content is only staged (written
    /// beside the file with its owner and mode, not yet durable nor renamed):
    /// the caller commits it, alone or with many others at once.
    pub fn apply_staged(
        &self,
        host: &Host,
        actual: &Observed,
        changes: &[Change],
    ) -> anyhow::Result<(Option<String>, Option<Staged>)> {
        let path = &self.spec.path;
        if changes.contains(&Change::Remove) {
            let m = actual.meta.expect("remove only when present");
            let tag = backup(host, self.state_dir, path, m.size)?;
            host.unlink(path)?;
            return Ok((tag, None));
        }
        if changes.is_empty() {
            return Ok((None, None));
        }
        // Content, owner, group or mode: a new file replaces the old one whole.
        // A replaced symlink or directory leaves nothing to keep: the new
        // file is made as if nothing were there.
        let old = actual.meta.filter(|_| actual.replaces.is_none());
        let uid = actual.uid.or(old.map(|m| m.uid));
        let gid = actual.gid.or(old.map(|m| m.gid));
        // An unmanaged mode is kept, except that set-id bits do not survive
        // a change of owner or group (as chown clears them).
        let kept = old.map(|m| {
            if (Some(m.uid), Some(m.gid)) == (uid, gid) {
                m.mode
            } else {
                m.mode & !0o6000
            }
        });
        let mode = self.spec.mode.or(kept).unwrap_or(0o644);
        let stage = || match (&self.content, &old) {
            (Some(content), _) => host.stage_file(path, content, mode, uid, gid),
            (None, Some(seen)) => host.stage_copy(path, seen, mode, uid, gid),
            (None, None) => host.stage_file(path, b"", mode, uid, gid),
        };
        let staged = match stage() {
            Ok(s) => s,
            // A full disk: the agent's own backups give way to the repair.
            Err(e) if is_out_of_space(&e) => {
                let need =
                    self.content.as_ref().map_or(0, |c| c.len() as u64) + old.map_or(0, |m| m.size);
                let freed = crate::backup::make_room(host, self.state_dir, need);
                if freed == 0 {
                    return Err(e);
                }
                tracing::warn!(
                    path,
                    freed,
                    "disk full: dropped the oldest backups to write the file"
                );
                stage()?
            }
            Err(e) => return Err(e),
        };
        let staged = match (&actual.replaces, actual.meta) {
            (Some(_), Some(seen)) => staged.replacing(seen),
            _ => staged,
        };
        // The new content is written first: on a nearly full disk the
        // backup of the old content is what is given up, not the repair.
        let mut tag = None;
        if let Some(Change::Content { from, .. }) =
            changes.iter().find(|c| matches!(c, Change::Content { .. }))
        {
            tag = match backup(host, self.state_dir, path, *from) {
                Ok(t) => t,
                Err(e) => {
                    host.discard_staged(staged);
                    return Err(e);
                }
            };
        }
        Ok((tag, Some(staged)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Outcome, Report, RunOptions, reconcile};
    use ballast_proto::spec::{NodeMeta, NodeState, Source, parse};

    fn meta(kind: Kind, mode: u32, uid: u32, size: u64) -> Meta {
        Meta {
            kind,
            mode,
            uid,
            gid: uid,
            size,
            dev: 1,
            ino: 2,
            nlink: 1,
        }
    }

    fn file(ensure: Ensure, content: Option<&str>, replace: bool) -> File {
        File {
            path: "/etc/app.conf".into(),
            content: content.map(str::to_owned),
            template: false,
            vars: Default::default(),
            owner: None,
            group: None,
            mode: Some(0o640),
            ensure,
            replace,
            notify: vec![],
            requires: vec![],
        }
    }

    /// Every desired file against a few observed states, and the changes it
    /// gives (owner and group as resolved ids: 1000 is the desired owner).
    #[test]
    fn diff_table() {
        let specs = [
            ("content", file(Ensure::Present, Some("new\n"), false)),
            ("no content", file(Ensure::Present, None, false)),
            ("replace", file(Ensure::Present, Some("new\n"), true)),
            ("absent", file(Ensure::Absent, None, false)),
        ];
        let seen = |m: Option<Meta>, same: bool, replaces: Option<Replaced>| Observed {
            meta: m,
            same_content: same,
            uid: Some(1000),
            gid: Some(1000),
            replaces,
        };
        let observed = [
            ("nothing", seen(None, false, None)),
            (
                "right",
                seen(Some(meta(Kind::File, 0o640, 1000, 4)), true, None),
            ),
            (
                "old content",
                seen(Some(meta(Kind::File, 0o640, 1000, 9)), false, None),
            ),
            (
                "mode 0644, root",
                seen(Some(meta(Kind::File, 0o644, 0, 4)), true, None),
            ),
            (
                "symlink",
                seen(
                    Some(meta(Kind::Symlink, 0o777, 0, 10)),
                    false,
                    Some(Replaced::Symlink {
                        target: "../sites-available/default".into(),
                    }),
                ),
            ),
            (
                "empty dir",
                seen(
                    Some(meta(Kind::Dir, 0o755, 0, 4096)),
                    false,
                    Some(Replaced::EmptyDir),
                ),
            ),
        ];
        let mut out = String::new();
        for (sname, spec) in &specs {
            let r = FileRes {
                spec,
                content: spec.content.clone().map(String::into_bytes),
                state_dir: Path::new("/nonexistent"),
            };
            for (oname, a) in &observed {
                // observe refuses these unless the file says `replace: true`.
                if a.replaces.is_some() && !spec.replace {
                    continue;
                }
                let changes: Vec<String> = r.diff(a).iter().map(|c| c.to_string()).collect();
                out.push_str(&format!("{sname} / {oname} => [{}]\n", changes.join("; ")));
            }
        }
        expect_test::expect![[r#"
            content / nothing => [create file (4 bytes)]
            content / right => []
            content / old content => [replace content (9 -> 4 bytes)]
            content / mode 0644, root => [mode 0644 -> 0640; owner uid 0 -> 1000; group gid 0 -> 1000]
            no content / nothing => [create file (0 bytes)]
            no content / right => []
            no content / old content => []
            no content / mode 0644, root => [mode 0644 -> 0640; owner uid 0 -> 1000; group gid 0 -> 1000]
            replace / nothing => [create file (4 bytes)]
            replace / right => []
            replace / old content => [replace content (9 -> 4 bytes)]
            replace / mode 0644, root => [mode 0644 -> 0640; owner uid 0 -> 1000; group gid 0 -> 1000]
            replace / symlink => [replace symlink -> ../sites-available/default with a file (4 bytes)]
            replace / empty dir => [replace empty directory with a file (4 bytes)]
            absent / nothing => []
            absent / right => [remove file]
            absent / old content => [remove file]
            absent / mode 0644, root => [remove file]
        "#]].assert_eq(&out);
    }

    struct Sandbox {
        root: tempfile::TempDir,
        state: tempfile::TempDir,
        host: Host,
    }

    impl Sandbox {
        fn new() -> Sandbox {
            let root = tempfile::tempdir().unwrap();
            let state = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(root.path().join("etc/nginx/sites-enabled")).unwrap();
            let host = Host::new(Some(root.path().to_owned()));
            Sandbox { root, state, host }
        }

        fn at(&self, p: &str) -> std::path::PathBuf {
            self.root.path().join(p.trim_start_matches('/'))
        }

        fn run(&self, files: &str, noop: bool) -> Report {
            let spec = parse(&[Source {
                name: "t.yaml".into(),
                text: format!("roles:\n  r:\n    files:\n{files}groups:\n  all: {{roles: [r]}}\n"),
            }])
            .unwrap_or_else(|e| panic!("{e}"));
            let state: NodeState = spec.render(&NodeMeta {
                name: "n1".into(),
                labels: Default::default(),
            });
            reconcile(
                &state,
                &self.host,
                &RunOptions {
                    noop,
                    state_dir: self.state.path(),
                    facts: &serde_json::json!({}),
                },
            )
        }
    }

    /// One line per resource: outcome, id, changes, error.
    fn summary(r: &Report) -> String {
        r.resources
            .iter()
            .map(|x| {
                format!(
                    "{:?} {} [{}]{}\n",
                    x.outcome,
                    x.id,
                    x.changes.join("; "),
                    x.error
                        .as_deref()
                        .map(|e| format!(" !{e}"))
                        .unwrap_or_default()
                )
            })
            .collect()
    }

    const DEFAULT: &str = "/etc/nginx/sites-enabled/default";

    /// Debian's `sites-enabled/default` is a symlink: without `replace` the
    /// file is refused with a message that names the option, and the link
    /// stays.
    #[test]
    fn a_symlink_is_refused_without_replace_and_the_refusal_names_the_option() {
        let s = Sandbox::new();
        std::os::unix::fs::symlink("../sites-available/default", s.at(DEFAULT)).unwrap();
        let report = s.run(
            &format!("      - {{path: {DEFAULT}, content: \"site\\n\"}}\n"),
            false,
        );
        expect_test::expect![[r#"
            Failed file[/etc/nginx/sites-enabled/default] [] !/etc/nginx/sites-enabled/default is a symlink; set `replace: true` on the file to replace it
        "#]].assert_eq(&summary(&report));
        assert!(s.at(DEFAULT).symlink_metadata().unwrap().is_symlink());
    }

    /// With `replace: true` the symlink gives way to the file; the dry run
    /// says exactly what the real run does, and a second run is quiet.
    #[test]
    fn replace_puts_the_file_where_a_symlink_was_and_a_dry_run_says_the_same() {
        let s = Sandbox::new();
        std::os::unix::fs::symlink("../sites-available/default", s.at(DEFAULT)).unwrap();
        let files = format!(
            "      - {{path: {DEFAULT}, content: \"site\\n\", mode: \"0644\", replace: true}}\n"
        );
        let noop = summary(&s.run(&files, true));
        assert!(s.at(DEFAULT).symlink_metadata().unwrap().is_symlink());
        let real = summary(&s.run(&files, false));
        assert_eq!(noop, real);
        expect_test::expect![[r#"
            Changed file[/etc/nginx/sites-enabled/default] [replace symlink -> ../sites-available/default with a file (5 bytes)]
        "#]].assert_eq(&real);
        let m = s.at(DEFAULT).symlink_metadata().unwrap();
        assert!(m.is_file());
        assert_eq!(std::fs::read_to_string(s.at(DEFAULT)).unwrap(), "site\n");
        let again = s.run(&files, false);
        assert!(
            again
                .resources
                .iter()
                .all(|r| r.outcome == Outcome::Unchanged),
            "{}",
            summary(&again)
        );
    }

    /// An empty directory is replaced; one with anything in it is refused
    /// even with `replace: true`, and what is in it stays.
    #[test]
    fn replace_takes_an_empty_directory_and_refuses_a_non_empty_one() {
        let s = Sandbox::new();
        std::fs::create_dir(s.at("/etc/empty")).unwrap();
        std::fs::create_dir(s.at("/etc/full")).unwrap();
        std::fs::write(s.at("/etc/full/keep"), "keep").unwrap();
        let files = "      - {path: /etc/empty, content: x, replace: true}\n      - {path: /etc/full, content: x, replace: true}\n";
        let noop = summary(&s.run(files, true));
        let real = summary(&s.run(files, false));
        assert_eq!(noop, real);
        expect_test::expect![[r#"
            Changed file[/etc/empty] [replace empty directory with a file (1 bytes)]
            Failed file[/etc/full] [] !/etc/full is a directory that is not empty; `replace: true` replaces only an empty directory, so nothing in it is lost
        "#]].assert_eq(&real);
        assert_eq!(std::fs::read_to_string(s.at("/etc/empty")).unwrap(), "x");
        assert_eq!(
            std::fs::read_to_string(s.at("/etc/full/keep")).unwrap(),
            "keep"
        );
        // Without replace, a directory is refused and the message says how.
        let without = summary(&s.run("      - {path: /etc/full, content: x}\n", false));
        expect_test::expect![[r#"
            Failed file[/etc/full] [] !/etc/full is a directory; set `replace: true` on the file to replace it (only an empty directory is replaced)
            Changed file[/etc/empty] [remove file (no longer in desired state)]
        "#]].assert_eq(&without);
        // The replaced directory left no temp name behind.
        let left: Vec<String> = std::fs::read_dir(s.at("/etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".ballast-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// A FIFO is never opened nor replaced, whatever the file says.
    #[test]
    fn a_fifo_is_refused_even_with_replace() {
        let s = Sandbox::new();
        nix::unistd::mkfifo(
            &s.at("/etc/pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let report = s.run(
            "      - {path: /etc/pipe, content: x, replace: true}\n",
            false,
        );
        expect_test::expect![[r#"
            Failed file[/etc/pipe] [] !/etc/pipe is a device, socket or FIFO; refusing to replace it (`replace: true` replaces only a symlink or an empty directory)
        "#]].assert_eq(&summary(&report));
    }
}
