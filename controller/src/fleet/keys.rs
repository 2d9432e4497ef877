//! Every store key the fleet uses, in one place. Each key has one writer:
//!
//! | key | value | written by |
//! |---|---|---|
//! | `meta/current` | number of the current revision (JSON) | apply |
//! | `revisions/{n:020}` | `RevisionRecord` | apply |
//! | `meta/rollouts/{n:020}` | `rollout::RolloutRecord` of revision `n` (under `meta/` so its watch is ordered with `meta/current`) | apply (creates), the leader's rollout job (fenced), rollout pause/resume/abort |
//! | `tokens/{sha256 hex}` | `TokenRecord` | create_token, enroll |
//! | `pending/{name}` | `PendingRecord`: a name reserved by a token, not enrolled | create_token, enroll (failures of that token) |
//! | `nodes/{name}` | `NodeRecord`: what operators decide (labels, revoked, certificate serial, enrollment) | enroll, revoke, label |
//! | `status/{name}` | `NodeStatus`: what the node says (last seen, its timeline) | report |
//! | `reports/{name}` | the last `RunReport` (protobuf) | report |
//! | `facts/{name}` | the node's facts (JSON text) | put_facts |
//! | `host/{name}` | the node's host figures, a `HostRecord` (protobuf, a few hundred bytes) | put_host, at most once per `limits::MIN_HOST_FIGURES_INTERVAL` per node |
//! | `leader` | the holder of the single-owner jobs, on an etcd lease (`leader.rs`) | `Store::try_lead` |
//! | `controllers/{id}/{n:04}` | `liveness::Chunk`: node → (last seen, applied revision, failed count, drifted) for up to `liveness::CHUNK_NODES` nodes whose stream controller `{id}` holds; on its liveness lease (etcd only) | that controller's liveness task, every `liveness_period` |
//! | `plans/{id}` | `plan_route::PlanRecord`: a plan's sources, filters and timeout, for the controllers holding other nodes' plan streams; on the asker's liveness lease (etcd only) | the controller the plan was asked of (`Fleet::start_plan`; deleted when the plan ends) |
//! | `plan-answers/{id}/{node}` | a node's answer to plan `{id}` (JSON, at most `plan_route::MAX_ANSWER_BYTES`), on the writer's liveness lease (etcd only) | the controller holding the node's plan stream (`plan_route::write_answers`; deleted when the record goes) |
//! | `identity/ca` | the CA certificate and key, the admin certificate and key (etcd only) | `ca::Ca::load_or_share`, once, at the first controller's start |
//!
//! Enrollment deletes a name's `status/`, `reports/`, `facts/` and `host/` when it
//! (re-)creates `nodes/{name}`. The layout maps one to one onto etcd keys.

pub const META: &str = "meta/";
pub const CURRENT: &str = "meta/current";
pub const REVISIONS: &str = "revisions/";
pub const PENDING: &str = "pending/";
pub const NODES: &str = "nodes/";
pub const TOKENS: &str = "tokens/";
pub const LEADER: &str = "leader";

pub fn revision(n: u64) -> String {
    format!("{REVISIONS}{n:020}")
}

pub const ROLLOUTS: &str = "meta/rollouts/";

pub fn rollout(n: u64) -> String {
    format!("{ROLLOUTS}{n:020}")
}

pub fn token(hash: &str) -> String {
    format!("{TOKENS}{hash}")
}

pub fn pending(name: &str) -> String {
    format!("{PENDING}{name}")
}

pub fn node(name: &str) -> String {
    format!("{NODES}{name}")
}

pub fn status(name: &str) -> String {
    format!("status/{name}")
}

pub fn report(name: &str) -> String {
    format!("reports/{name}")
}

pub fn facts(name: &str) -> String {
    format!("facts/{name}")
}

pub fn host(name: &str) -> String {
    format!("host/{name}")
}

pub const CONTROLLERS: &str = "controllers/";

/// Chunk `n` of controller `id`'s liveness summary.
pub fn controller_chunk(id: &str, n: usize) -> String {
    format!("{CONTROLLERS}{id}/{n:04}")
}

pub const PLANS: &str = "plans/";

/// A plan's record, for the controllers that hold other nodes' streams.
pub fn plan(id: &str) -> String {
    format!("{PLANS}{id}")
}

/// Where the answers to plan `id` are stored (not under `plans/`, so
/// that only the asker watches them).
pub fn plan_answers(id: &str) -> String {
    format!("plan-answers/{id}/")
}

pub fn plan_answer(id: &str, node: &str) -> String {
    format!("plan-answers/{id}/{node}")
}
