//! The one integration test binary: the real controller and real agents over
//! loopback mutual TLS. Topics are modules.

mod bad_input;
mod bootstrap;
mod e2e;
mod fleet_hardening;
mod nodes;
mod packaging;
mod security;
