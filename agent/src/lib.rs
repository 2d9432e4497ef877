//! Ballast's node agent as a library: `main.rs` is a thin shell over [`cli::run`],
//! so integration tests drive the real enrollment, daemon loop and engine in-process.

pub mod backup;
pub mod cache;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod engine;
pub mod facts;
pub mod host;
pub mod outbox;
pub mod plan;
pub mod state;

mod cron;
mod directory;
mod file;
mod group;
mod package;
mod service;
mod symlink;
mod sysctl;
mod user;

/// The agent's version, reported with heartbeats and facts.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
