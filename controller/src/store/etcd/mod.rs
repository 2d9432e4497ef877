//! The etcd backend of [`Store`]: several controllers share one etcd cluster,
//! each fleet under its own key prefix.
//!
//! The trait is synchronous and its callers run on blocking threads or at
//! startup, possibly inside an async task; so this backend owns a small tokio
//! runtime of its own, runs each request there and waits for it on a plain
//! channel, which works from any thread. Requests go to one member until it
//! cannot be reached, then to the next. Watches are tasks on that runtime
//! that reconnect with jittered backoff and resume from the revision after
//! the last one they delivered.
//!
//! Just over 600 lines only with its tests (the code is under 590).

mod lease;
mod watch;

pub use lease::MIN_LEADER_TTL;

use super::{Compare, Entry, Leadership, Listing, Op, Store, StoreError, Watch, WatchLag};
use etcd_client::{
    Certificate, Client, CompareOp, ConnectOptions, GetOptions, Identity, KvClient, LeaseClient,
    TlsOptions, Txn, TxnOp, WatchClient,
};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use watch::WatchTask;

/// Keys per page when listing a prefix; halved while a page is too large.
pub const LIST_PAGE_KEYS: i64 = 512;
/// The largest response this client accepts (one page, one watch message).
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// How long a request may take before it fails (and the caller hears of it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Watch reconnects back off between these, with full jitter.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Events a watcher may hold undelivered before the etcd stream waits.
const WATCH_BUFFER: usize = 64;
/// How long [`Store::watch_lag`] waits for lagging watches to confirm.
pub const WATCH_LAG_WAIT: Duration = Duration::from_secs(1);

/// Client certificates to etcd (`--etcd-ca`, `--etcd-cert`, `--etcd-key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA that signed the etcd members' certificates.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Where the store lives in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// `HOST:PORT` of each member.
    pub endpoints: Vec<String>,
    /// Put before every key, so that several fleets share one cluster.
    pub prefix: String,
    pub tls: Option<EtcdTls>,
}

/// The default `--store-prefix`.
pub const DEFAULT_PREFIX: &str = "/ballast/";

impl EtcdOptions {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...]`.
    pub fn from_url(url: &str) -> Result<EtcdOptions, String> {
        let Some(rest) = url.strip_prefix("etcd://") else {
            return Err(format!(
                "store {url:?}: expected etcd://HOST:PORT[,HOST:PORT...] (or no --store for the local redb file)"
            ));
        };
        let mut endpoints = Vec::new();
        for e in rest.split(',').map(str::trim) {
            let ok = e
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok || e.contains('/') {
                return Err(format!(
                    "store {url:?}: endpoint {e:?} is not HOST:PORT (such as 127.0.0.1:2379)"
                ));
            }
            endpoints.push(e.to_owned());
        }
        Ok(EtcdOptions {
            endpoints,
            prefix: DEFAULT_PREFIX.to_owned(),
            tls: None,
        })
    }
}

/// One client per member, and the one requests go to: it stays until a
/// request cannot reach it, then the next member takes over (a balancer
/// would keep sending a share of requests to a dead member).
struct Members {
    clients: Vec<(Client, KvClient, WatchClient, LeaseClient)>,
    current: AtomicUsize,
}

impl Members {
    fn lease(&self) -> (usize, LeaseClient) {
        let i = self.current.load(Ordering::SeqCst) % self.clients.len();
        (i, self.clients[i].3.clone())
    }

    fn kv(&self) -> (usize, KvClient) {
        let i = self.current.load(Ordering::SeqCst) % self.clients.len();
        (i, self.clients[i].1.clone())
    }

    fn watch(&self) -> (usize, WatchClient) {
        let i = self.current.load(Ordering::SeqCst) % self.clients.len();
        (i, self.clients[i].2.clone())
    }

    /// Member `i` could not be reached: move on, unless another caller did.
    fn failed(&self, i: usize) {
        let next = (i + 1) % self.clients.len();
        let _ = self
            .current
            .compare_exchange(i, next, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// The etcd store.
pub struct EtcdStore {
    runtime: Option<tokio::runtime::Runtime>,
    members: Arc<Members>,
    prefix: String,
    /// The endpoints, for error messages.
    endpoints: String,
    /// This process's liveness lease (`Store::put_leased`), once made.
    liveness: std::sync::Mutex<Option<lease::Liveness>>,
    /// Every watch's progress, for [`Store::watch_lag`].
    lag: watch::Lag,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside another one.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn read_pem(path: &PathBuf, what: &str) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path)
        .map_err(|e| StoreError::Engine(format!("read {what} {}: {e}", path.display())))
}

fn tls_options(tls: &EtcdTls) -> Result<TlsOptions, StoreError> {
    let mut opts = TlsOptions::new();
    if let Some(ca) = &tls.ca {
        opts = opts.ca_certificate(Certificate::from_pem(read_pem(ca, "etcd CA")?));
    }
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            opts = opts.identity(Identity::from_pem(
                read_pem(cert, "etcd client certificate")?,
                read_pem(key, "etcd client key")?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(StoreError::Engine(
                "--etcd-cert and --etcd-key go together: give both or neither".into(),
            ));
        }
    }
    Ok(opts)
}

impl EtcdStore {
    /// Connects and checks that the cluster answers (a linearizable read).
    pub fn connect(opts: &EtcdOptions) -> Result<EtcdStore, StoreError> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::Engine("no etcd endpoints given".into()));
        }
        let endpoints = opts.endpoints.join(",");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Engine(format!("start the etcd client runtime: {e}")))?;
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            // A member cut off from the leader refuses, rather than serving
            // stale reads or holding watches that never fire.
            .with_require_leader(true);
        if let Some(tls) = &opts.tls {
            connect = connect.with_tls(tls_options(tls)?);
        }
        let mut clients = Vec::new();
        for e in &opts.endpoints {
            let (e, connect) = (e.clone(), connect.clone());
            // Connections are made on first use: a member down now is fine.
            let client = runtime
                .block_on_detached(async move { Client::connect([e], Some(connect)).await })
                .map_err(|e| StoreError::Engine(format!("connect to etcd at {endpoints}: {e}")))?;
            let kv = client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES);
            let watch = client
                .watch_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES);
            let lease = client.lease_client();
            clients.push((client, kv, watch, lease));
        }
        let store = EtcdStore {
            members: Arc::new(Members {
                clients,
                current: AtomicUsize::new(0),
            }),
            runtime: Some(runtime),
            prefix: opts.prefix.clone(),
            endpoints,
            liveness: std::sync::Mutex::new(None),
            lag: watch::Lag::default(),
        };
        store.current_revision()?;
        Ok(store)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the store")
    }

    /// Runs `fut` on the store's runtime and waits for it on this thread.
    fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        self.runtime().block_on_detached(fut)
    }

    fn full(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.prefix).into_bytes()
    }

    fn error(&self, op: &str, e: etcd_client::Error) -> StoreError {
        classify(&self.endpoints, op, e)
    }

    /// The cluster's newest revision.
    fn current_revision(&self) -> Result<u64, StoreError> {
        let key = self.full("");
        let resp = self
            .read(|mut kv| {
                let key = key.clone();
                async move {
                    kv.get(key, Some(GetOptions::new().with_count_only().with_prefix()))
                        .await
                }
            })
            .map_err(|e| self.error("read", e))?;
        Ok(resp.header().map_or(0, |h| h.revision()) as u64)
    }

    /// Runs a read on the current member, and on the next ones while it
    /// cannot be reached or has no leader.
    fn read<T: Send + 'static, F>(&self, f: impl Fn(KvClient) -> F) -> Result<T, etcd_client::Error>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        self.on_members(Members::kv, f, unavailable)
    }

    /// Runs `f` with the current member's client (`pick`); while `again`
    /// says the error came from that member alone, moves to the next and
    /// tries there: each member twice at most, with a pause after each round.
    fn on_members<C, T: Send + 'static, F>(
        &self,
        pick: fn(&Members) -> (usize, C),
        f: impl Fn(C) -> F,
        again: fn(&etcd_client::Error) -> bool,
    ) -> Result<T, etcd_client::Error>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let n = self.members.clients.len();
        let mut attempt = 0;
        loop {
            let (i, client) = pick(&self.members);
            match self.run(f(client)) {
                Err(e) if member_fault(&e) => {
                    // The next request goes elsewhere, retried or not.
                    self.members.failed(i);
                    if attempt + 1 >= 2 * n || !again(&e) {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, member = i, attempt, "etcd member unavailable; trying the next");
                    attempt += 1;
                    if attempt % n == 0 {
                        std::thread::sleep(BACKOFF_MIN * attempt as u32);
                    }
                }
                other => return other,
            }
        }
    }
}

/// Runs a future on a runtime from any thread, async or not, and waits.
trait BlockOnDetached {
    fn block_on_detached<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> T;
}

impl BlockOnDetached for tokio::runtime::Runtime {
    fn block_on_detached<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .expect("the etcd client runtime runs while the store lives")
    }
}

/// An error of the member asked, not of the request: it could not be
/// reached, has no leader, or did not answer in time.
fn member_fault(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ) || std::error::Error::source(s).is_some_and(|src| src.is::<tonic::transport::Error>())
        }
        _ => false,
    }
}

/// A read may be tried again on another member after any member fault.
fn unavailable(e: &etcd_client::Error) -> bool {
    member_fault(e)
}

/// A write worth trying on another member: it was certainly not applied,
/// because no connection was made, or the member refused it before
/// proposing it (no leader). A write that may have been sent is not retried.
fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let m = s.message();
            s.code() == tonic::Code::Unavailable
                && (m.contains("connect error")
                    || m.contains("error trying to connect")
                    || m.contains("Connection refused")
                    || m.contains("etcdserver: no leader"))
        }
        _ => false,
    }
}

impl EtcdStore {
    /// Whether a write answered NOSPACE was applied all the same: read at one
    /// revision, every put holds its value at one shared revision (the
    /// write's), no compared version is still in place, and every deleted
    /// key is gone. A write whose every put finds its exact bytes already in
    /// place reads as made: the store then holds what the caller asked for.
    fn made_despite_refusal(&self, compares: &[Compare], ops: &[Op]) -> Result<bool, StoreError> {
        let gets: Vec<TxnOp> = ops
            .iter()
            .map(|(Op::Put(k, _) | Op::Delete(k))| TxnOp::get(self.full(k), None))
            .collect();
        let resp = self
            .read(|mut kv| {
                let read = Txn::new().and_then(gets.clone());
                async move { kv.txn(read).await }
            })
            .map_err(|e| self.error("read", e))?;
        let mut revision = None;
        for (op, answer) in ops.iter().zip(resp.op_responses()) {
            let etcd_client::TxnOpResponse::Get(got) = answer else {
                return Ok(false);
            };
            match (op, got.kvs().first()) {
                (Op::Put(_, value), Some(kv)) if kv.value() == value.as_slice() => {
                    if *revision.get_or_insert(kv.mod_revision()) != kv.mod_revision() {
                        return Ok(false);
                    }
                }
                (Op::Delete(_), None) => {}
                _ => return Ok(false),
            }
        }
        let unchanged = compares.iter().any(|c| match c {
            Compare::Version(k, v) => {
                revision == Some(*v as i64)
                    && ops.iter().any(|o| matches!(o, Op::Put(p, _) if p == k))
            }
            Compare::Absent(_) => false,
        });
        Ok(!unchanged)
    }
}

/// Maps etcd's answers to what callers branch on.
fn classify(endpoints: &str, op: &str, e: etcd_client::Error) -> StoreError {
    if let etcd_client::Error::GRpcStatus(s) = &e {
        let m = s.message();
        // etcd's own bound (--max-request-bytes, --max-txn-ops), or gRPC's
        // just above it.
        if m.contains("request is too large")
            || m.contains("too many operations in txn")
            || (s.code() == tonic::Code::ResourceExhausted && m.contains("larger than max"))
        {
            return StoreError::TooLarge(format!("etcd at {endpoints}: {m}"));
        }
        if m.contains("database space exceeded") || m.contains("NOSPACE") {
            return StoreError::Full(format!(
                "etcd at {endpoints}: {m}; compact and defragment etcd, then disarm the alarm (etcdctl alarm disarm)"
            ));
        }
        if matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ) {
            return StoreError::Engine(format!("{op}: etcd at {endpoints} is unreachable: {m}"));
        }
    }
    if let etcd_client::Error::TransportError(_) = &e {
        return StoreError::Engine(format!("{op}: etcd at {endpoints} is unreachable: {e}"));
    }
    StoreError::Engine(format!("{op}: etcd at {endpoints}: {e}"))
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte is 0xff: the range runs to the end of the keyspace.
    vec![0]
}

fn key_str(prefix_len: usize, key: &[u8]) -> Result<String, StoreError> {
    std::str::from_utf8(&key[prefix_len..])
        .map(str::to_owned)
        .map_err(|e| StoreError::Engine(format!("a stored key is not UTF-8: {e}")))
}

impl Store for EtcdStore {
    fn compact(&self, keep: u64) -> Result<u64, StoreError> {
        let current = self.current_revision()?;
        let to = current.saturating_sub(keep);
        if to == 0 {
            return Ok(0);
        }
        match self.read(move |mut kv| async move { kv.compact(to as i64, None).await }) {
            Ok(_) => Ok(to),
            // Another compaction (ours or an operator's) got there first.
            Err(e) if e.to_string().contains("compacted") => Ok(to),
            Err(e) => Err(self.error("compact", e)),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let full = self.full(key);
        let mut resp = self
            .read(|mut kv| {
                let full = full.clone();
                async move { kv.get(full, None).await }
            })
            .map_err(|e| self.error("read", e))?;
        Ok(resp.take_kvs().into_iter().next().map(|kv| Entry {
            version: kv.mod_revision() as u64,
            value: kv.value().to_vec(),
        }))
    }

    fn list_at(&self, prefix: &str) -> Result<Listing, StoreError> {
        let start = self.full(prefix);
        let end = prefix_end(&start);
        let strip = self.prefix.len();
        // Pages are read at the first page's revision: one consistent view.
        'again: for _ in 0..3 {
            let mut listing = Listing::default();
            let mut from = start.clone();
            let mut limit = LIST_PAGE_KEYS;
            loop {
                let (f, e, rev) = (from.clone(), end.clone(), listing.revision as i64);
                let page = self.read(move |mut kv| {
                    let (f, e) = (f.clone(), e.clone());
                    async move {
                        let mut o = GetOptions::new().with_range(e).with_limit(limit);
                        if rev > 0 {
                            o = o.with_revision(rev);
                        }
                        kv.get(f, Some(o)).await
                    }
                });
                let mut page = match page {
                    Ok(p) => p,
                    // A page over MAX_RESPONSE_BYTES: ask for fewer keys.
                    Err(etcd_client::Error::GRpcStatus(s))
                        if s.code() == tonic::Code::OutOfRange && limit > 1 =>
                    {
                        limit /= 2;
                        continue;
                    }
                    // Compacted between two pages: read it all again.
                    Err(etcd_client::Error::GRpcStatus(s))
                        if s.message().contains("required revision has been compacted") =>
                    {
                        continue 'again;
                    }
                    Err(e) => return Err(self.error("list", e)),
                };
                if listing.revision == 0 {
                    listing.revision = page.header().map_or(0, |h| h.revision()) as u64;
                }
                let more = page.more();
                let kvs = page.take_kvs();
                if let Some(last) = kvs.last() {
                    from = last.key().to_vec();
                    from.push(0);
                }
                for kv in kvs {
                    listing.entries.push((
                        key_str(strip, kv.key())?,
                        Entry {
                            version: kv.mod_revision() as u64,
                            value: kv.value().to_vec(),
                        },
                    ));
                }
                if !more {
                    return Ok(listing);
                }
            }
        }
        Err(StoreError::Engine(format!(
            "list {prefix}: etcd at {} compacted the revision being read three times in a row",
            self.endpoints
        )))
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<bool, StoreError> {
        let when: Vec<etcd_client::Compare> = compares
            .iter()
            .map(|c| match c {
                // Never created, or deleted since: create_revision is 0.
                Compare::Absent(k) => {
                    etcd_client::Compare::create_revision(self.full(k), CompareOp::Equal, 0)
                }
                Compare::Version(k, v) => {
                    etcd_client::Compare::mod_revision(self.full(k), CompareOp::Equal, *v as i64)
                }
            })
            .collect();
        let then: Vec<TxnOp> = ops
            .iter()
            .map(|o| match o {
                Op::Put(k, v) => TxnOp::put(self.full(k), v.clone(), None),
                Op::Delete(k) => TxnOp::delete(self.full(k), None),
            })
            .collect();
        let txn = Txn::new().when(when).and_then(then);
        // Tried on another member only when it was certainly not applied;
        // otherwise the caller hears of the error.
        let resp = self.on_members(
            Members::kv,
            |mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            },
            never_sent,
        );
        match resp.map_err(|e| self.error("write", e)) {
            Ok(resp) => Ok(resp.succeeded()),
            // etcd checks its quota twice: before proposing a write (refused,
            // nothing written) and again while applying it, where the write
            // that crosses the quota is applied and still answered NOSPACE.
            // Only the store can tell which, so that `Full` means refused.
            Err(full @ StoreError::Full(_)) => match self.made_despite_refusal(compares, ops) {
                Ok(true) => Ok(true),
                _ => Err(full),
            },
            Err(e) => Err(e),
        }
    }

    fn try_lead(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Leadership>, StoreError> {
        self.lead(key, holder, ttl)
    }

    fn put_leased(&self, ops: &[Op], ttl: Duration) -> Result<(), StoreError> {
        self.leased_txn(ops, ttl)
    }

    fn watch_lag(&self) -> Option<WatchLag> {
        self.lag.measure(|| self.current_revision())
    }

    fn watch(&self, prefix: &str, from_revision: u64) -> Result<Watch, StoreError> {
        let from = if from_revision == 0 {
            self.current_revision()? + 1
        } else {
            from_revision
        };
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let progress = self.lag.track(from);
        let task = WatchTask {
            progress,
            members: self.members.clone(),
            key: self.full(prefix),
            strip: self.prefix.len(),
            next: from,
            endpoints: self.endpoints.clone(),
        };
        self.runtime().spawn(task.run(tx));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// Jittered exponential backoff.
pub(super) struct Backoff(pub(super) Duration);

impl Backoff {
    pub(super) async fn wait(&mut self) {
        let mut b = [0u8; 4];
        let _ = getrandom::fill(&mut b);
        let frac = f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX);
        tokio::time::sleep(self.0.mul_f64(0.5 + frac / 2.0)).await;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_name_every_member_or_say_what_is_wrong() {
        let o = EtcdOptions::from_url("etcd://127.0.0.1:2379,db2:2379").unwrap();
        assert_eq!(o.endpoints, ["127.0.0.1:2379", "db2:2379"]);
        assert_eq!(o.prefix, "/ballast/");
        assert_eq!(
            EtcdOptions::from_url("http://x:1").unwrap_err(),
            "store \"http://x:1\": expected etcd://HOST:PORT[,HOST:PORT...] (or no --store for the local redb file)"
        );
        assert_eq!(
            EtcdOptions::from_url("etcd://a:1,b").unwrap_err(),
            "store \"etcd://a:1,b\": endpoint \"b\" is not HOST:PORT (such as 127.0.0.1:2379)"
        );
    }

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/ballast/"), b"/ballast0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}
