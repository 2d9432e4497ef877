//! Backups of content the agent replaced or removed, kept in the state dir as
//! `backups/P/STAMP-HEX`: P names the managed path (32 hex digits of the
//! SHA-256 of the path; `backups/P/path` holds the path itself), STAMP
//! (nanoseconds, 20 digits) orders them, HEX is the content's SHA-256 (the
//! `sha256:HEX` tag a report carries).
//!
//! Invariant: bounded. At most [`MAX_PER_PATH`] backups per path, and
//! [`MAX_TOTAL_BYTES`] and [`MAX_TOTAL_COUNT`] in all; the oldest go first.
//! Content above [`MAX_BACKUP_SIZE`] is not backed up. Saving the same
//! content of a path again only makes that backup the newest.

use crate::host::Host;
use crate::state::{StateDir, create_private_dir, write_atomic};
use anyhow::Context;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Contents larger than this are not backed up.
pub const MAX_BACKUP_SIZE: u64 = 16 * 1024 * 1024;
/// Backups kept per managed path.
pub const MAX_PER_PATH: usize = 5;
/// Bytes kept in all backups together.
pub const MAX_TOTAL_BYTES: u64 = 128 * 1024 * 1024;
/// Backups kept in all.
pub const MAX_TOTAL_COUNT: usize = 10_000;

const PATH_FILE: &str = "path";

#[derive(Debug, Clone)]
struct Entry {
    stamp: u128,
    /// The path's directory under `backups/` ("" for a backup of the old,
    /// flat layout `backups/HEX`).
    dir: String,
    name: String,
    size: u64,
}

/// What `backups/` holds, oldest first; loaded once per run (kept in
/// [`Host`]) and kept current by [`save`].
#[derive(Debug)]
pub struct Index {
    root: PathBuf,
    entries: Vec<Entry>,
    total: u64,
    last_stamp: u128,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl Index {
    fn load(root: &Path) -> Index {
        let mut entries = Vec::new();
        let list = |dir: &Path| -> Vec<(String, std::fs::Metadata)> {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.metadata().ok()?)))
                .collect()
        };
        for (name, meta) in list(root) {
            if meta.is_dir() && is_hex(&name, 32) {
                for (file, m) in list(&root.join(&name)) {
                    let stamp = file
                        .split_once('-')
                        .filter(|(s, h)| s.len() == 20 && is_hex(h, 64))
                        .and_then(|(s, _)| s.parse::<u128>().ok());
                    if let Some(stamp) = stamp {
                        entries.push(Entry {
                            stamp,
                            dir: name.clone(),
                            name: file,
                            size: m.len(),
                        });
                    } else if file.starts_with('.') && file.ends_with(".tmp") {
                        // A backup that a crash interrupted.
                        let _ = std::fs::remove_file(root.join(&name).join(&file));
                    }
                }
            } else if meta.is_file() && is_hex(&name, 64) {
                let stamp = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                entries.push(Entry {
                    stamp,
                    dir: String::new(),
                    name,
                    size: meta.len(),
                });
            }
        }
        entries.sort_by_key(|e| e.stamp);
        let total = entries.iter().map(|e| e.size).sum();
        let last_stamp = entries.last().map(|e| e.stamp).unwrap_or(0);
        Index {
            root: root.to_owned(),
            entries,
            total,
            last_stamp,
        }
    }

    fn next_stamp(&mut self) -> u128 {
        self.last_stamp = now_nanos().max(self.last_stamp + 1);
        self.last_stamp
    }

    fn file(&self, e: &Entry) -> PathBuf {
        self.root.join(&e.dir).join(&e.name)
    }

    fn insert(&mut self, e: Entry) {
        let at = self.entries.partition_point(|x| x.stamp <= e.stamp);
        self.total += e.size;
        self.entries.insert(at, e);
    }

    fn remove(&mut self, i: usize) {
        let e = self.entries.remove(i);
        self.total -= e.size;
        if let Err(err) = std::fs::remove_file(self.file(&e))
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %self.file(&e).display(), error = %err, "could not remove an old backup");
        }
        if !e.dir.is_empty() && !self.entries.iter().any(|x| x.dir == e.dir) {
            let dir = self.root.join(&e.dir);
            let _ = std::fs::remove_file(dir.join(PATH_FILE));
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// Drops the oldest backups of `dir` beyond [`MAX_PER_PATH`], then the
    /// oldest of all beyond the totals (the newest backup always stays).
    fn prune(&mut self, dir: &str) {
        self.prune_to(dir, MAX_PER_PATH, MAX_TOTAL_BYTES, MAX_TOTAL_COUNT);
    }

    fn prune_to(&mut self, dir: &str, per_path: usize, bytes: u64, count: usize) {
        while self.entries.iter().filter(|e| e.dir == dir).count() > per_path {
            let oldest = self
                .entries
                .iter()
                .position(|e| e.dir == dir)
                .expect("counted above");
            self.remove(oldest);
        }
        while self.entries.len() > 1 && (self.total > bytes || self.entries.len() > count) {
            self.remove(0);
        }
    }
}

fn lock(host: &Host) -> std::sync::MutexGuard<'_, Option<Index>> {
    host.backups.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps `content`, the content of `path` about to be replaced or removed,
/// and prunes older backups to stay within the limits. Returns its tag.
pub fn save(host: &Host, state: &StateDir, path: &str, content: &[u8]) -> anyhow::Result<String> {
    let tag = ballast_proto::sha256_tag(content);
    let hex = tag.trim_start_matches("sha256:").to_owned();
    let dir = hex::encode(sha2::Sha256::digest(path.as_bytes()))[..32].to_owned();
    let root = state.backups();
    let stamp = {
        let mut guard = lock(host);
        let index = guard.get_or_insert_with(|| Index::load(&root));
        let stamp = index.next_stamp();
        let same = index
            .entries
            .iter()
            .position(|e| e.dir == dir && e.name.ends_with(&hex));
        if let Some(i) = same {
            // Already kept: make it the newest rather than keeping it twice.
            let mut e = index.entries.remove(i);
            index.total -= e.size;
            let renamed = format!("{stamp:020}-{hex}");
            let moved = std::fs::rename(index.file(&e), root.join(&dir).join(&renamed));
            if moved.is_ok() {
                e.stamp = stamp;
                e.name = renamed;
            }
            index.insert(e);
            return Ok(tag);
        }
        stamp
    };
    let path_dir = root.join(&dir);
    create_private_dir(&path_dir)?;
    if !path_dir.join(PATH_FILE).exists() {
        write_atomic(&path_dir.join(PATH_FILE), path.as_bytes(), 0o600)
            .with_context(|| format!("back up {path}"))?;
    }
    let name = format!("{stamp:020}-{hex}");
    write_atomic(&path_dir.join(&name), content, 0o600)
        .with_context(|| format!("back up {path}"))?;
    let mut guard = lock(host);
    let index = guard.get_or_insert_with(|| Index::load(&root));
    index.insert(Entry {
        stamp,
        dir: dir.clone(),
        name,
        size: content.len() as u64,
    });
    index.prune(&dir);
    Ok(tag)
}

/// On a full disk: drops the oldest backups until `bytes` (and 1 MiB more)
/// are freed or none is left, so that putting back desired content comes
/// before keeping old content. Returns the bytes freed.
pub fn make_room(host: &Host, state: &StateDir, bytes: u64) -> u64 {
    let mut guard = lock(host);
    let index = guard.get_or_insert_with(|| Index::load(&state.backups()));
    let before = index.total;
    while !index.entries.is_empty() && before - index.total < bytes + (1 << 20) {
        index.remove(0);
    }
    before - index.total
}

/// Where the backup with `tag` (`sha256:HEX`) of `path` is, if it is kept.
pub fn find(state: &StateDir, path: &str, tag: &str) -> Option<PathBuf> {
    let hex = tag.strip_prefix("sha256:")?;
    let dir = state
        .backups()
        .join(&hex::encode(sha2::Sha256::digest(path.as_bytes()))[..32]);
    std::fs::read_dir(&dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(&format!("-{hex}")))
        .map(|n| dir.join(n))
}

/// Every backup kept: (file, size).
pub fn list(state: &StateDir) -> Vec<(PathBuf, u64)> {
    let index = Index::load(&state.backups());
    index
        .entries
        .iter()
        .map(|e| (index.file(e), e.size))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_backups_go_first_to_stay_within_the_totals() {
        let state = tempfile::tempdir().unwrap();
        let root = StateDir::new(state.path()).backups();
        // Ten paths with one 100-byte backup each, oldest first.
        for i in 0..10u128 {
            let dir = root.join(format!("{i:032x}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join(format!("{:020}-{}", 1000 + i, "ab".repeat(32))),
                [0u8; 100],
            )
            .unwrap();
        }
        let mut index = Index::load(&root);
        assert_eq!((index.entries.len(), index.total), (10, 1000));
        index.prune_to(&format!("{:032x}", 9), 5, 450, 10_000);
        assert_eq!((index.entries.len(), index.total), (4, 400));
        index.prune_to(&format!("{:032x}", 9), 5, 10_000, 2);
        let kept: Vec<u128> = Index::load(&root).entries.iter().map(|e| e.stamp).collect();
        assert_eq!(kept, vec![1008, 1009], "the newest stay, on disk too");
        assert_eq!(
            std::fs::read_dir(&root).unwrap().count(),
            2,
            "emptied path dirs go"
        );
    }
}
