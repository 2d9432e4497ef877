//! The one integration test binary: the real controller and real agents over
//! loopback mutual TLS. Topics are modules.

mod bad_input;
mod bootstrap;
mod cli;
mod code_map;
mod contract;
mod e2e;
mod nodes;
mod packaging;
mod security;
