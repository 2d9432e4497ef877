//! The last valid desired state, kept on disk so the agent enforces it while the controller is away.
use crate::state::{StateDir, StateFile};
use anyhow::{Context, bail};
use ballast_proto::spec::NodeState;

const FORMAT: u64 = 1;

pub struct Cached {
    pub revision: u64,
    pub hash: String,
    pub state: NodeState,
}

/// Keeps a checked document (see [`StateDir::write`]: atomic, 0600).
pub fn store(state: &StateDir, revision: u64, hash: &str, document: &[u8]) -> anyhow::Result<()> {
    let doc: serde_json::Value =
        serde_json::from_slice(document).context("desired state document is not JSON")?;
    let body =
        serde_json::json!({"format": FORMAT, "revision": revision, "hash": hash, "document": doc});
    state.write(StateFile::Desired, &serde_json::to_vec(&body)?)
}

/// The kept document, checked again (format, validity, hash); `None` if there is none.
pub fn load(state: &StateDir) -> anyhow::Result<Option<Cached>> {
    let path = state.file(StateFile::Desired);
    let Some(bytes) = state.read(StateFile::Desired)? else {
        return Ok(None);
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
