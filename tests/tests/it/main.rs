//! The one integration test binary: the real controller and real agents over
//! loopback mutual TLS. Topics are modules.

mod agent_faults;
mod bad_input;
mod bootstrap;
mod e2e;
mod nodes;
mod packaging;
mod security;
