//! The one integration test binary: the real controller and real agents over
//! loopback mutual TLS. Topics are modules.

mod agent_faults;
mod agent_link;
mod apply_safety;
mod bad_input;
mod bootstrap;
mod cli;
mod code_map;
mod connections;
mod content_diffs;
mod contract;
mod controller_faults;
mod controllers_shared;
mod dashboard;
mod e2e;
mod fleet_hardening;
mod liveness_shared;
mod metrics;
mod nemesis;
mod nodes;
mod noop;
mod packaging;
mod plan;
mod rollout_etcd;
mod rollout_nodes;
mod rollouts;
mod security;
mod store;
mod store_etcd;
mod wait;
mod wire_enums;
