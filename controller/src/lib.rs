//! Ballast's controller and operator CLI as a library: `main.rs` is a thin shell
//! over [`cli::run`], so integration tests start the real server in-process.

pub mod api;
pub mod authz;
pub mod bootstrap;
pub mod ca;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod fleet;
pub mod leader;
pub mod listener;
pub mod metrics;
pub mod server;
pub mod store;

/// The controller's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
