//! Starting the controller: data dir, store, CA and certificates, then one
//! mTLS gRPC port for agents and operators (which also serves the bootstrap
//! downloads and `/metrics`). Tests call [`start`] on `127.0.0.1:0`.

use crate::api::Api;
use crate::authz::AuthzLayer;
use crate::bootstrap;
use crate::ca::Ca;
use crate::config::{ServeConfig, StoreConfig};
use crate::dashboard;
use crate::fleet::Fleet;
use crate::listener::Incoming;
use crate::metrics::{self, MetricsLayer, ScrapeToken};
use crate::store::{EtcdStore, RedbStore, Store};
use anyhow::Context;
use ballast_proto::{MAX_MESSAGE_BYTES, pb};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// Where the controller keeps its certificates and keys, inside the data dir.
pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// A controller serving in this process.
pub struct Running {
    pub addr: SocketAddr,
    /// The dashboard's address, when it is on.
    pub dashboard: Option<SocketAddr>,
    /// `sha256:HEX` of the CA certificate.
    pub fingerprint: String,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    /// The fleet's watches of the store (see `fleet::follow`) and the
    /// dashboard: aborted at stop.
    followers: Vec<tokio::task::JoinHandle<()>>,
    /// The single-owner jobs (`leader`), told through `resign` at stop to
    /// give up the lead: peers take over at once, not when its lease ends.
    leader: tokio::task::JoinHandle<()>,
    resign: tokio::sync::watch::Sender<bool>,
    /// Withdraws its liveness summary at stop.
    fleet: Arc<Fleet>,
    /// Plan streams never end by themselves: closed at stop.
    plans: Arc<crate::fleet::plan::Hub>,
}

impl Running {
    /// Stops accepting, closes streams, and waits for the server to end.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.plans.close();
        let _ = self.shutdown.send(());
        let served = self.task.await;
        // A job in progress finishes first (its store calls are bounded).
        let _ = self.resign.send(true);
        let mut leader = self.leader;
        let waited = crate::leader::RESIGN_WAIT + crate::leader::LEADER_TTL;
        if tokio::time::timeout(waited, &mut leader).await.is_err() {
            tracing::warn!(
                "the single-owner jobs did not stop in time; the leader key expires with its lease"
            );
            leader.abort();
        }
        for f in &self.followers {
            f.abort();
        }
        for f in self.followers {
            let _ = f.await;
        }
        // Peers show this controller's nodes reconnecting now, not when its
        // liveness lease runs out.
        let fleet = self.fleet;
        match tokio::task::spawn_blocking(move || fleet.withdraw_liveness()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not withdraw the liveness summary"),
            Err(e) => tracing::warn!(error = %e, "liveness withdrawal failed"),
        }
        served.context("server task")?.context("server")?;
        Ok(())
    }

    /// Waits until the server ends by itself (an error) or Ctrl-C / SIGTERM.
    pub async fn wait_for_signal(self) -> anyhow::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
        self.stop().await
    }
}

/// Each agent holds a connection: lift the soft open-files limit to the hard one.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "could not raise the open files limit");
    }
}

/// Opens (or creates) everything in the data dir and starts serving.
pub async fn start(cfg: &ServeConfig) -> anyhow::Result<Running> {
    raise_open_files_limit();
    create_private_dir(&cfg.data_dir)?;
    let pki = pki_dir(&cfg.data_dir);
    create_private_dir(&pki)?;
    let store: Arc<dyn Store> = match &cfg.store {
        StoreConfig::Redb => {
            let path = cfg.data_dir.join("ballast.redb");
            Arc::new(
                RedbStore::open(&path).with_context(|| format!("open store {}", path.display()))?,
            )
        }
        StoreConfig::Etcd(opts) => {
            let opts = opts.clone();
            // Connecting waits on the network: off the async threads.
            let store = tokio::task::spawn_blocking(move || EtcdStore::connect(&opts))
                .await
                .context("connect to the etcd store")?
                .context("connect to the etcd store")?;
            Arc::new(store)
        }
    };
    // On etcd every controller of the fleet shares one CA (and admin
    // certificate) through the store; redb keeps them in the data dir only.
    let ca = match &cfg.store {
        StoreConfig::Redb => Ca::load_or_create(&pki),
        StoreConfig::Etcd(_) => Ca::load_or_share(store.as_ref(), &pki),
    }
    .context("certificate authority")?;
    // A controller listening on one address serves clients that dial it.
    let mut names = cfg.advertise.clone();
    if !cfg.listen.ip().is_unspecified() {
        names.push(cfg.listen.ip().to_string());
    }
    let (server_chain, server_key) = ca
        .ensure_server_cert(&pki, &names)
        .context("server certificate")?;
    let dashboard_cert = (server_chain.clone(), server_key.clone());
    ca.ensure_admin_cert(&pki).context("admin certificate")?;
    let fleet = Fleet::open(store, cfg.stale_after, cfg.liveness, cfg.clock.clone())
        .context("load fleet state")?;
    let fingerprint = ca.fingerprint();
    let ca = Arc::new(ca);

    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(server_chain, server_key))
        .client_ca_root(Certificate::from_pem(ca.cert_pem()))
        // Enrollment has no certificate yet; every other method is refused without one (authz).
        .client_auth_optional(true)
        .timeout(cfg.connections.handshake_timeout);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    // Every change, whoever wrote it, reaches memory through the store's watch.
    let mut followers = fleet.follow_store();
    // Single-owner jobs on whichever controller holds the leader key.
    let holder = format!(
        "{}:{addr} pid {}",
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    );
    let (resign, stop_leading) = tokio::sync::watch::channel(false);
    let leader = tokio::spawn(crate::leader::run(
        fleet.store(),
        fleet.clone(),
        holder,
        cfg.clock.clone(),
        crate::leader::JOBS_EVERY,
        stop_leading,
    ));
    let scrape_token = cfg
        .metrics_token_file
        .as_deref()
        .map(ScrapeToken::load)
        .transpose()?
        .map(Arc::new);
    let dashboard = match cfg.dashboard_listen {
        Some(listen) => {
            let dcfg = dashboard::DashboardConfig {
                listen,
                cert: cfg.dashboard_cert.clone().zip(cfg.dashboard_key.clone()),
                limits: cfg.connections.clone(),
            };
            Some(
                dashboard::start(
                    &dcfg,
                    fleet.clone(),
                    dashboard_cert,
                    cfg.advertise.first().map(String::as_str),
                    scrape_token.clone(),
                )
                .await?,
            )
        }
        None => None,
    };
    let api = Api::new(
        fleet.clone(),
        ca.clone(),
        dashboard.as_ref().map(|d| d.access.clone()),
    );
    let plans = api.plans();
    let mut grpc = tonic::service::Routes::builder();
    grpc.add_service(
        pb::enrollment_server::EnrollmentServer::new(api.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(
        pb::agent_server::AgentServer::new(api.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(
        pb::admin_server::AdminServer::new(api)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    );
    // Bootstrap downloads (installer, agent binary) share the port, over HTTPS.
    let agent_binary = cfg
        .agent_binary
        .clone()
        .or_else(bootstrap::default_agent_binary);
    let fallback = cfg
        .advertise
        .first()
        .map(|h| format!("{h}:{}", addr.port()))
        .unwrap_or_else(|| addr.to_string());
    let routes = tonic::service::Routes::from(
        grpc.routes()
            .into_axum_router()
            .merge(bootstrap::routes(
                agent_binary,
                fingerprint.clone(),
                ca.cert_pem().to_owned(),
                fallback,
            ))
            .merge(metrics::routes(fleet.clone())),
    );
    let router = Server::builder()
        .tls_config(tls)?
        .accept_http1(true)
        .http2_keepalive_interval(Some(cfg.connections.keepalive_interval))
        .http2_keepalive_timeout(Some(cfg.connections.keepalive_timeout))
        // Outside authz, so refusals are counted too.
        .layer(MetricsLayer::new(fleet.metrics().clone()))
        .layer(AuthzLayer::new(fleet.clone(), scrape_token))
        .add_routes(routes);
    let (shutdown, rx) = tokio::sync::oneshot::channel::<()>();
    // Limits at the accept boundary: caps, idle timeout (see `listener`).
    let incoming = Incoming::new(listener, cfg.connections.clone());
    let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = rx.await;
    }));
    tracing::info!(%addr, data_dir = %cfg.data_dir.display(), %fingerprint, "controller serving");
    let dashboard_addr = dashboard.as_ref().map(|d| d.addr);
    if let Some(d) = dashboard {
        followers.push(d.task);
    }
    Ok(Running {
        addr,
        dashboard: dashboard_addr,
        fingerprint,
        shutdown,
        task,
        followers,
        leader,
        resign,
        fleet,
        plans,
    })
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create directory {}", dir.display()))
}
