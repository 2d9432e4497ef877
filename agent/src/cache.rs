//! The last valid desired state, kept on disk so the agent enforces it while the controller is away.
use anyhow::{Context, bail};
use ballast_proto::spec::NodeState;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub const CACHE_FILE: &str = "desired.json";
const FORMAT: u64 = 1;

pub struct Cached {
    pub revision: u64,
    pub hash: String,
    pub state: NodeState,
}

/// Temp file in the same directory (O_EXCL, `mode`), write, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("file name")?;
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(r)));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("write {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("fsync {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("fsync {}", dir.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Whether `name` is a temp file of [`write_atomic`]: `.NAME.HEX16.tmp`.
fn is_temp_name(name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|s| s.strip_suffix(".tmp"))
        .and_then(|s| s.rsplit_once('.'))
        .is_some_and(|(target, hex)| {
            !target.is_empty()
                && hex.len() == 16
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// Temp files of [`write_atomic`] older than this are orphans: no write
/// takes that long, so a crash or a kill left them.
pub const ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes orphaned temp files of [`write_atomic`] from the state dir.
pub fn remove_orphans(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ORPHAN_AGE);
        if name.to_str().is_some_and(is_temp_name) && old {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    tracing::info!(file = %e.path().display(), "removed an orphaned temp file")
                }
                Err(err) => {
                    tracing::warn!(file = %e.path().display(), error = %err, "could not remove an orphaned temp file")
                }
            }
        }
    }
}

pub fn store(state_dir: &Path, revision: u64, hash: &str, document: &[u8]) -> anyhow::Result<()> {
    let doc: serde_json::Value =
        serde_json::from_slice(document).context("desired state document is not JSON")?;
    let body =
        serde_json::json!({"format": FORMAT, "revision": revision, "hash": hash, "document": doc});
    write_atomic(
        &state_dir.join(CACHE_FILE),
        &serde_json::to_vec(&body)?,
        0o600,
    )
}

pub fn load(state_dir: &Path) -> anyhow::Result<Option<Cached>> {
    let path = state_dir.join(CACHE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let body: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    if body["format"].as_u64() != Some(FORMAT) {
        bail!("{}: unknown format {}", path.display(), body["format"]);
    }
    let revision = body["revision"]
        .as_u64()
        .with_context(|| format!("{}: no revision", path.display()))?;
    let hash = body["hash"]
        .as_str()
        .with_context(|| format!("{}: no hash", path.display()))?
        .to_owned();
    let state = NodeState::from_document(&serde_json::to_vec(&body["document"])?)
        .map_err(|e| anyhow::anyhow!("{}: invalid document: {e}", path.display()))?;
    let actual = state.hash();
    if actual != hash {
        bail!(
            "{}: document hash {actual} does not match the recorded {hash}",
            path.display()
        );
    }
    Ok(Some(Cached {
        revision,
        hash,
        state,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphaned_temp_files_in_the_state_dir_are_removed_once_old() {
        let dir = tempfile::tempdir().unwrap();
        let orphan = dir.path().join(".managed.json.0123456789abcdef.tmp");
        let fresh = dir.path().join(".desired.json.fedcba9876543210.tmp");
        let other = dir.path().join(".managed.json.0123456789ABCDEF.tmp");
        for f in [&orphan, &fresh, &other] {
            std::fs::write(f, "x").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - ORPHAN_AGE * 2;
        for f in [&orphan, &other] {
            std::fs::File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        write_atomic(&dir.path().join("managed.json"), b"{}", 0o600).unwrap();
        remove_orphans(dir.path());
        assert!(!orphan.exists(), "an old orphan goes");
        assert!(fresh.exists(), "a write that may be in flight stays");
        assert!(other.exists(), "not our pattern");
        assert!(dir.path().join("managed.json").exists());
    }
}
