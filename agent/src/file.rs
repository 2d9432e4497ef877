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
use crate::state::StateDir;
use anyhow::bail;
use ballast_proto::diff;
use ballast_proto::limits::MAX_DIFF_INPUT;
use ballast_proto::spec::{Ensure, File};
use std::fmt;

pub struct FileRes<'a> {
    spec: &'a File,
    /// The content to write, rendered when `template: true`.
    content: Option<Vec<u8>>,
    state_dir: &'a StateDir,
}

pub struct Observed {
    meta: Option<Meta>,
    /// Whether the content equals the desired one (only read when sizes match).
    same_content: bool,
    /// The content there now, when it was read: to compare (same size as
    /// the desired content) or for the diff (both within its input bound).
    old: Option<Vec<u8>>,
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
    state_dir: &StateDir,
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

    /// New content is diffed against nothing; replaced content against what
    /// was read (or, above the diff's input bound, given by its sizes).
    fn content_diff(&self, actual: &Observed, changes: &[Change]) -> Option<String> {
        let new = self.content.as_deref()?;
        let path = &self.spec.path;
        changes.iter().find_map(|c| match c {
            Change::Create { .. } | Change::Replace { .. } => Some(diff::content(path, None, new)),
            Change::Content { from, to } => Some(match &actual.old {
                Some(old) => diff::content(path, Some(old), new),
                None => diff::too_large(Some(*from), *to as u64),
            }),
            _ => None,
        })
    }

    fn id(&self) -> String {
        format!("file[{}]", self.spec.path)
    }

    fn observe(&self, host: &Host) -> anyhow::Result<Observed> {
        let want = self.content.as_ref().map(|c| c.len() as u64);
        let diffable = |size: u64| size as usize <= MAX_DIFF_INPUT;
        let read_if =
            |size: u64| want.is_some_and(|w| w == size || (diffable(w) && diffable(size)));
        let (meta, current) = match host.observe_file(&self.spec.path, read_if)? {
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
            old: current,
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
            (Kind::Symlink, false) => bail!(
                "{path} is a symlink, not a regular file; set `replace: true` on the file to replace it"
            ),
            (Kind::Dir, false) => bail!(
                "{path} is a directory, not a regular file; set `replace: true` on the file to replace it if it is empty"
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
#[path = "file_tests.rs"]
mod tests;
