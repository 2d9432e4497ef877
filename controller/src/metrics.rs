//! The controller's Prometheus metrics: one typed registry per controller
//! (prometheus-client), rendered in the OpenMetrics text format at
//! `/metrics` on the main port.
//!
//! Names follow Prometheus conventions: base units (`_seconds`), `_total` on
//! counters, `_info` for build information. No label takes a node's name or
//! anything a node chose: every label value comes from a closed set (methods
//! of the contract, gRPC codes, statuses, outcomes, store operations), so the
//! number of series is bounded whatever the fleet does.
//!
//! Who may scrape is `authz`'s business (`Rule::Scrape`): the admin
//! certificate, or the scrape token when one is configured.

use crate::store::{
    Compare, Entry, Leadership, Listing, Op, Store, StoreError, Watch as StoreWatch, WatchLag,
};
use ballast_proto::enums::{NodeStatus, Outcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// The path the metrics are served at.
pub const PATH: &str = "/metrics";
/// What `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabel {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 0.5 ms to about 16 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Agent run durations: 10 ms to about 40 min.
fn run_durations() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 18))
}

/// The least length of a scrape token.
pub const MIN_SCRAPE_TOKEN: usize = 32;

/// The configured scrape token, kept only as its SHA-256.
pub struct ScrapeToken {
    sha256: [u8; 32],
}

impl ScrapeToken {
    /// Reads the token from `path`: one line of at least [`MIN_SCRAPE_TOKEN`]
    /// printable characters, in a file no one but its owner can read.
    pub fn load(path: &std::path::Path) -> anyhow::Result<ScrapeToken> {
        use anyhow::Context;
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("scrape token file {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "scrape token file {}: mode {mode:04o} lets others read it; allowed: 0600 or 0400 (chmod 600)",
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read scrape token file {}", path.display()))?;
        let token = text.trim_end_matches(['\n', '\r']);
        if token.len() < MIN_SCRAPE_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            anyhow::bail!(
                "scrape token file {}: the token must be one line of at least {MIN_SCRAPE_TOKEN} printable characters without spaces (e.g. openssl rand -hex 32)",
                path.display()
            );
        }
        Ok(ScrapeToken {
            sha256: sha256(token.as_bytes()),
        })
    }

    /// Whether an `Authorization` header value is `Bearer` and this token.
    pub fn matches(&self, header: &[u8]) -> bool {
        let Some(token) = header.strip_prefix(b"Bearer ") else {
            return false;
        };
        // Hashes compared in full, so the time taken says nothing of the token.
        sha256(token)
            .iter()
            .zip(self.sha256.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Why an enrollment was refused, as a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request was malformed (name, CSR).
    Invalid,
    /// The token was unknown, spent, expired or bound to another name.
    Denied,
    /// The name is taken or changed meanwhile.
    Conflict,
    /// The controller failed.
    Internal,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Invalid => "refused_invalid",
            Refusal::Denied => "refused_denied",
            Refusal::Conflict => "refused_conflict",
            Refusal::Internal => "failed",
        }
    }
}

/// One controller's metrics.
pub struct Metrics {
    registry: Registry,
    nodes: Family<StatusLabel, Gauge>,
    enrollments: Family<ResultLabel, Counter>,
    revisions: Family<KindLabel, Counter>,
    rpc_requests: Family<RpcLabel, Counter>,
    rpc_duration: Histograms<MethodLabel>,
    watch_streams: Gauge,
    store_duration: Histograms<OpLabel>,
    store_errors: Family<OpLabel, Counter>,
    leader: Gauge,
    watch_lag_revisions: Gauge,
    watch_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    reports: Counter,
    run_duration: Histogram,
    run_resources: Family<OutcomeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let nodes = Family::<StatusLabel, Gauge>::default();
        registry.register(
            "ballast_nodes",
            "Nodes of the fleet by status, as `ballast health` counts them",
            nodes.clone(),
        );
        let enrollments = Family::<ResultLabel, Counter>::default();
        registry.register(
            "ballast_enrollments",
            "Enrollments handled by this controller, by result",
            enrollments.clone(),
        );
        let revisions = Family::<KindLabel, Counter>::default();
        registry.register(
            "ballast_revisions_created",
            "Revisions this controller stored, by kind (apply, rollback)",
            revisions.clone(),
        );
        let rpc_requests = Family::<RpcLabel, Counter>::default();
        registry.register(
            "ballast_rpc_requests",
            "gRPC requests by method and status code (a stream counts when it starts)",
            rpc_requests.clone(),
        );
        let rpc_duration: Histograms<MethodLabel> = Family::new_with_constructor(latency);
        registry.register_with_unit(
            "ballast_rpc_duration",
            "Time to answer a gRPC request (to the first response of a stream)",
            Unit::Seconds,
            rpc_duration.clone(),
        );
        let watch_streams = Gauge::default();
        registry.register(
            "ballast_watch_streams",
            "Agents' watch streams open on this controller",
            watch_streams.clone(),
        );
        let store_duration: Histograms<OpLabel> = Family::new_with_constructor(latency);
        registry.register_with_unit(
            "ballast_store_operation_duration",
            "Store operations by kind (get, list, txn, watch, lead, compact, put_leased)",
            Unit::Seconds,
            store_duration.clone(),
        );
        let store_errors = Family::<OpLabel, Counter>::default();
        registry.register(
            "ballast_store_errors",
            "Store operations that failed, by kind",
            store_errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "ballast_leader",
            "1 while this controller holds the leader key (single-owner jobs)",
            leader.clone(),
        );
        let watch_lag_revisions = Gauge::default();
        registry.register_with_unit(
            "ballast_store_watch_lag",
            "Store revisions committed that this controller's watches have not delivered yet (etcd; measured at scrape)",
            Unit::Other("revisions".into()),
            watch_lag_revisions.clone(),
        );
        let watch_lag_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register_with_unit(
            "ballast_store_watch_lag",
            "Time since this controller's watches were last confirmed to have every change (etcd; 0 when they have)",
            Unit::Seconds,
            watch_lag_seconds.clone(),
        );
        let reports = Counter::default();
        registry.register(
            "ballast_agent_reports",
            "Run reports received from agents",
            reports.clone(),
        );
        let run_duration = run_durations();
        registry.register_with_unit(
            "ballast_agent_run_duration",
            "How long agents' runs took, as they reported them",
            Unit::Seconds,
            run_duration.clone(),
        );
        let run_resources = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "ballast_agent_resources",
            "Resources in agents' run reports, by outcome",
            run_resources.clone(),
        );
        registry.register(
            "ballast_build",
            "The controller's build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics {
            registry,
            nodes,
            enrollments,
            revisions,
            rpc_requests,
            rpc_duration,
            watch_streams,
            store_duration,
            store_errors,
            leader,
            watch_lag_revisions,
            watch_lag_seconds,
            reports,
            run_duration,
            run_resources,
        }
    }

    /// The registry in the OpenMetrics text format, with the node counts
    /// (every status, zeros included, so no series vanishes) set first.
    pub fn render(&self, counts: &[(NodeStatus, u64)]) -> String {
        for status in NodeStatus::ALL {
            let n = counts
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n);
            self.nodes
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(n as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn enrolled(&self) {
        self.enrollments
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
    }

    pub fn enrollment_refused(&self, why: Refusal) {
        self.enrollments
            .get_or_create(&ResultLabel {
                result: why.as_str(),
            })
            .inc();
    }

    /// A revision was stored: `kind` is `apply` or `rollback`.
    pub fn revision_created(&self, kind: &'static str) {
        self.revisions.get_or_create(&KindLabel { kind }).inc();
    }

    /// A run report was accepted: its duration and outcomes.
    pub fn report(&self, duration_ms: u64, outcomes: impl Iterator<Item = Outcome>) {
        self.reports.inc();
        self.run_duration.observe(duration_ms as f64 / 1000.0);
        for outcome in outcomes {
            self.run_resources
                .get_or_create(&OutcomeLabel {
                    outcome: outcome.as_str(),
                })
                .inc();
        }
    }

    /// Counts an open watch stream until the guard drops.
    pub fn watch_opened(self: &Arc<Self>) -> WatchGuard {
        self.watch_streams.inc();
        WatchGuard(self.clone())
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(leading as i64);
    }

    /// The store watches' lag as just measured; `None` (redb, no watch)
    /// leaves both at 0.
    pub fn set_watch_lag(&self, lag: Option<WatchLag>) {
        let lag = lag.unwrap_or(WatchLag {
            revisions: 0,
            seconds: 0.0,
        });
        self.watch_lag_revisions
            .set(i64::try_from(lag.revisions).unwrap_or(i64::MAX));
        self.watch_lag_seconds.set(lag.seconds);
    }

    fn rpc(&self, method: String, code: String, seconds: f64) {
        self.rpc_duration
            .get_or_create(&MethodLabel {
                method: method.clone(),
            })
            .observe(seconds);
        self.rpc_requests
            .get_or_create(&RpcLabel { method, code })
            .inc();
    }

    fn store_op<T>(
        &self,
        op: &'static str,
        f: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let r = f();
        self.store_duration
            .get_or_create(&OpLabel { op })
            .observe(started.elapsed().as_secs_f64());
        if r.is_err() {
            self.store_errors.get_or_create(&OpLabel { op }).inc();
        }
        r
    }
}

/// A scrape: the store watches' lag and the node counts measured now, then
/// the registry. Blocks (the lag reads the store): call it off the async
/// threads.
pub fn scrape(fleet: &crate::fleet::Fleet) -> String {
    fleet.metrics().set_watch_lag(fleet.store().watch_lag());
    fleet.metrics().render(&fleet.status_counts())
}

/// `GET /metrics`: the registry, with the node counts of this moment.
pub fn routes(fleet: Arc<crate::fleet::Fleet>) -> axum::Router {
    axum::Router::new().route(
        PATH,
        axum::routing::get(move || {
            let fleet = fleet.clone();
            async move {
                let text = tokio::task::spawn_blocking(move || scrape(&fleet))
                    .await
                    .unwrap_or_default();
                ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], text)
            }
        }),
    )
}

/// An open watch stream, counted in `ballast_watch_streams` while it lives.
pub struct WatchGuard(Arc<Metrics>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.watch_streams.dec();
    }
}

/// A [`Store`] that times every operation into the metrics.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> MeteredStore {
        MeteredStore { inner, metrics }
    }
}

impl Store for MeteredStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.metrics.store_op("get", || self.inner.get(key))
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, Entry)>, StoreError> {
        self.metrics.store_op("list", || self.inner.list(prefix))
    }

    fn list_at(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.metrics.store_op("list", || self.inner.list_at(prefix))
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<bool, StoreError> {
        self.metrics
            .store_op("txn", || self.inner.txn(compares, ops))
    }

    fn watch(&self, prefix: &str, from_revision: u64) -> Result<StoreWatch, StoreError> {
        self.metrics
            .store_op("watch", || self.inner.watch(prefix, from_revision))
    }

    fn try_lead(
        &self,
        key: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<Leadership>, StoreError> {
        self.metrics
            .store_op("lead", || self.inner.try_lead(key, holder, ttl))
    }

    fn compact(&self, keep: u64) -> Result<u64, StoreError> {
        self.metrics
            .store_op("compact", || self.inner.compact(keep))
    }

    fn put_leased(&self, ops: &[Op], ttl: std::time::Duration) -> Result<(), StoreError> {
        self.metrics
            .store_op("put_leased", || self.inner.put_leased(ops, ttl))
    }

    fn watch_lag(&self) -> Option<WatchLag> {
        self.inner.watch_lag()
    }
}

/// The gRPC method a request path names, for the `method` label: a method
/// of the contract (`Admin/Apply`), or `other` for anything else, so a
/// client cannot mint series.
fn method_label(path: &str) -> String {
    if crate::authz::rule_for(path).is_some()
        && let Some(method) = path.strip_prefix("/ballast.v1.")
    {
        return method.to_owned();
    }
    "other".to_owned()
}

/// The gRPC status of a response whose headers carry one (a refusal or an
/// error is sent trailers-only); a response without one started fine.
fn code_label(headers: &http::HeaderMap) -> String {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32);
    format!("{code:?}")
}

/// The tower layer that counts and times every gRPC request (refusals by
/// `authz` included: it sits outside it).
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> MetricsLayer {
        MetricsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Metered<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let method = method_label(req.uri().path());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            let resp = call.await?;
            if grpc {
                let code = code_label(resp.headers());
                metrics.rpc(method, code, started.elapsed().as_secs_f64());
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_come_only_from_the_contract() {
        assert_eq!(method_label("/ballast.v1.Admin/Apply"), "Admin/Apply");
        assert_eq!(method_label("/ballast.v1.Admin/DropEverything"), "other");
        assert_eq!(method_label("/x/../ballast.v1.Admin/Apply"), "other");
    }

    #[test]
    fn every_status_is_rendered_with_conventional_names() {
        let m = Metrics::new();
        let text = m.render(&[(NodeStatus::Converged, 3)]);
        assert!(
            text.contains("ballast_nodes{status=\"converged\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("ballast_nodes{status=\"failed\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ballast_agent_run_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("ballast_build_info{version=\""), "{text}");
        assert!(
            text.contains("# UNIT ballast_store_watch_lag_revisions revisions")
                && text.contains("ballast_store_watch_lag_seconds 0"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
