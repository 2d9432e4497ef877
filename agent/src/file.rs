//! `file` resources: content (literal or a minijinja template), owner, group,
//! mode, present or absent. Writes are atomic; replaced or deleted content is
//! backed up by SHA-256 under the state dir.

use crate::engine::{Context, Resource};
use crate::host::{Host, Kind, Meta, PENDING_ID, Staged};
use anyhow::{Context as _, bail};
use ballast_proto::spec::{Ensure, File};
use std::fmt;
use std::path::Path;

/// Contents larger than this are not backed up (the change says so).
pub const BACKUP_CAP: u64 = 16 * 1024 * 1024;

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create { bytes: usize },
    Content { from: u64, to: usize },
    Mode { from: u32, to: u32 },
    Owner { from: u32, to: u32 },
    Group { from: u32, to: u32 },
    Remove,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Create { bytes } => write!(f, "create file ({bytes} bytes)"),
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

/// Copies the current content of `path` to `state_dir/backups/HEX` (once per
/// content); returns its `sha256:HEX`, or `None` above the size cap.
pub fn backup(
    host: &Host,
    state_dir: &Path,
    path: &str,
    size: u64,
) -> anyhow::Result<Option<String>> {
    if size > BACKUP_CAP {
        return Ok(None);
    }
    let old = host.read_file(path)?;
    let tag = ballast_proto::sha256_tag(&old);
    let dir = state_dir.join("backups");
    let dest = dir.join(tag.trim_start_matches("sha256:"));
    if !dest.exists() {
        crate::client::create_private_dir(&dir)?;
        crate::cache::write_atomic(&dest, &old, 0o600)
            .with_context(|| format!("back up {path}"))?;
    }
    Ok(Some(tag))
}

impl Resource for FileRes<'_> {
    type State = Observed;
    type Change = Change;

    fn creates(change: &Change) -> bool {
        matches!(change, Change::Create { .. })
    }

    fn id(&self) -> String {
        format!("file[{}]", self.spec.path)
    }

    fn observe(&self, host: &Host) -> anyhow::Result<Observed> {
        let meta = host.lstat(&self.spec.path)?;
        if meta.is_none() && self.spec.ensure == Ensure::Present {
            host.require_parent(&self.spec.path)?;
        }
        if let Some(m) = &meta
            && m.kind != Kind::File
        {
            bail!(
                "{} is {}, not a regular file; refusing to replace or remove it",
                self.spec.path,
                m.kind
            );
        }
        let same_content = match (&meta, &self.content) {
            (Some(m), Some(want)) if m.size == want.len() as u64 => {
                host.read_file(&self.spec.path)? == *want
            }
            _ => false,
        };
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
        })
    }

    fn diff(&self, actual: &Observed) -> Vec<Change> {
        let want_len = self.content.as_ref().map(Vec::len).unwrap_or(0);
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
        let mut backup_tag = None;
        for c in changes {
            match c {
                Change::Remove => {
                    let m = actual.meta.expect("remove only when present");
                    backup_tag = backup(host, self.state_dir, path, m.size)?;
                    host.unlink(path)?;
                }
                Change::Create { .. } | Change::Content { .. } => {
                    if let (Change::Content { from, .. }, Some(_)) = (c, &actual.meta) {
                        backup_tag = backup(host, self.state_dir, path, *from)?;
                    }
                    let mode = self
                        .spec
                        .mode
                        .or(actual.meta.map(|m| m.mode))
                        .unwrap_or(0o644);
                    let uid = actual.uid.or(actual.meta.map(|m| m.uid));
                    let gid = actual.gid.or(actual.meta.map(|m| m.gid));
                    // The new file carries owner, group and mode: nothing else to do.
                    let staged = host.stage_file(
                        path,
                        self.content.as_deref().unwrap_or_default(),
                        mode,
                        uid,
                        gid,
                    )?;
                    return Ok((backup_tag, Some(staged)));
                }
                Change::Mode { to, .. } => host.set_meta(path, Some(*to), None, None)?,
                Change::Owner { to, .. } => host.set_meta(path, None, Some(*to), None)?,
                Change::Group { to, .. } => host.set_meta(path, None, None, Some(*to))?,
            }
        }
        Ok((backup_tag, None))
    }
}
