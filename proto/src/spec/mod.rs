//! The one validated model of desired state: YAML sources are parsed, validated
//! and merged into a [`Spec`]; a spec is rendered per node into a [`NodeState`],
//! the document the controller sends and the agent enforces.
//!
//! Invariant: a value of any type here is valid. Parsing ([`parse`]) and
//! decoding a wire document ([`NodeState::from_document`]) are the only ways in,
//! and both run the same validators.

mod cron;
mod decode;
mod depend;
mod model;
mod parse;
mod render;
mod rollout;
mod schema;
#[cfg(feature = "files")]
mod sources;
pub mod template;
pub mod validate;
mod yaml;

pub use depend::{Dependency, Why, dependencies, dependency_indices};
pub use model::*;
pub use parse::{Source, parse};
pub use render::{Renderer, StateDiff, diff_states};
pub use rollout::{
    MAX_BAKE_MS, MAX_TRACK_SOURCES, MAX_WAVES, RolloutPolicy, Track, Wave, parse_duration_ms,
};
#[cfg(feature = "files")]
pub use sources::read_sources;

use std::fmt;

/// One problem in the desired state, located as precisely as we know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Source file name as given (`examples/web.yaml`); empty for wire documents.
    pub file: String,
    /// 1-based line; 0 when unknown.
    pub line: usize,
    /// Dotted field path, e.g. `roles.web.files[0].mode`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.file.is_empty(), self.line) {
            (true, _) => write!(f, "{}: {}", self.field, self.message),
            (false, 0) => write!(f, "{}: {}: {}", self.file, self.field, self.message),
            (false, line) => write!(
                f,
                "{}:{}: {}: {}",
                self.file, line, self.field, self.message
            ),
        }
    }
}

/// All problems found in one parse or validation; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}
