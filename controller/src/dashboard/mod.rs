//! The web dashboard: server-rendered pages over the fleet on a port of its
//! own (`ballast serve --dashboard-listen 127.0.0.1:8441`, off unless given),
//! HTTPS with the controller's certificate (or `--dashboard-cert/-key`).
//!
//! Access: `ballast dashboard url` (Admin, so the admin certificate) asks
//! for a one-time login link; opening it trades the code for a session
//! cookie (HttpOnly, Secure, SameSite=Strict). Codes and sessions are kept
//! only as SHA-256, in this controller's memory: a link opens the dashboard
//! of the controller that made it. Without a session every path answers
//! with the login page alone. Read-only: no page changes anything.
//!
//! Every value a node sent reaches the page through the templates'
//! autoescaping (`pages`), never through string concatenation. The one
//! script (`static/rollout.js`, compiled in) only swaps in a fragment the
//! server rendered; the policy allows no inline script.

mod chart;
mod diff;
mod pages;
mod rollout;

pub use pages::fleet_html;

use crate::fleet::Fleet;
use crate::metrics::ScrapeToken;
use anyhow::Context;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a login link works.
pub const LOGIN_TTL: Duration = Duration::from_secs(120);
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Outstanding login links and sessions kept at most; the oldest go first.
const MAX_CODES: usize = 1024;
const COOKIE: &str = "ballast_session";

/// One-time login codes and sessions, by SHA-256, with their expiry (ms).
pub struct Access {
    base_url: String,
    logins: Mutex<HashMap<[u8; 32], u64>>,
    sessions: Mutex<HashMap<[u8; 32], u64>>,
    fleet: Arc<Fleet>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn random_code() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random source");
    hex::encode(bytes)
}

/// Drops expired entries, then the soonest to expire while over `max`.
fn prune(map: &mut HashMap<[u8; 32], u64>, now: u64, max: usize) {
    map.retain(|_, exp| *exp > now);
    while map.len() >= max {
        let Some(first) = map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k) else {
            break;
        };
        map.remove(&first);
    }
}

impl Access {
    /// A new one-time login link and when it expires.
    pub fn login_link(&self) -> (String, u64) {
        let code = random_code();
        let expires = self.fleet.clock().now_ms() + LOGIN_TTL.as_millis() as u64;
        let mut logins = self.logins.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut logins, self.fleet.clock().now_ms(), MAX_CODES);
        logins.insert(sha256(code.as_bytes()), expires);
        (format!("{}/login?code={code}", self.base_url), expires)
    }

    /// Spends a login code: a new session id, or `None` (unknown, used, expired).
    fn spend(&self, code: &str) -> Option<String> {
        let now = self.fleet.clock().now_ms();
        let expires = self
            .logins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&sha256(code.as_bytes()))?;
        if expires <= now {
            return None;
        }
        let session = random_code();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut sessions, now, MAX_CODES);
        sessions.insert(
            sha256(session.as_bytes()),
            now + SESSION_TTL.as_millis() as u64,
        );
        Some(session)
    }

    fn session_valid(&self, cookie_header: Option<&str>) -> bool {
        let Some(id) = cookie_header.and_then(|h| {
            h.split(';')
                .filter_map(|c| c.trim().split_once('='))
                .find(|(k, _)| *k == COOKIE)
                .map(|(_, v)| v.to_owned())
        }) else {
            return false;
        };
        let now = self.fleet.clock().now_ms();
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&sha256(id.as_bytes()))
            .is_some_and(|exp| *exp > now)
    }
}

/// Where and how the dashboard listens.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    pub listen: SocketAddr,
    /// A certificate chain and key (PEM) to serve instead of the controller's.
    pub cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The accept boundary's caps and timeouts, as on the main port.
    pub limits: crate::listener::ConnLimits,
}

/// The running dashboard.
pub struct Dashboard {
    pub addr: SocketAddr,
    pub access: Arc<Access>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds the dashboard's port and serves it until the task is aborted.
/// `advertise`: the first name the controller is known by, for the links.
pub async fn start(
    cfg: &DashboardConfig,
    fleet: Arc<Fleet>,
    server_cert: (String, String),
    advertise: Option<&str>,
    scrape_token: Option<Arc<ScrapeToken>>,
) -> anyhow::Result<Dashboard> {
    let (chain, key) = match &cfg.cert {
        Some((c, k)) => (
            std::fs::read_to_string(c)
                .with_context(|| format!("dashboard certificate {}", c.display()))?,
            std::fs::read_to_string(k).with_context(|| format!("dashboard key {}", k.display()))?,
        ),
        None => server_cert,
    };
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(chain, key));
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("dashboard: listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let host = match advertise {
        Some(h) => h.to_owned(),
        None if addr.ip().is_unspecified() => "127.0.0.1".to_owned(),
        None => addr.ip().to_string(),
    };
    let access = Arc::new(Access {
        base_url: format!("https://{host}:{}", addr.port()),
        logins: Mutex::default(),
        sessions: Mutex::default(),
        fleet: fleet.clone(),
    });
    let pages = Arc::new(pages::Pages::new(fleet, access.clone(), scrape_token));
    let router = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let pages = pages.clone();
        async move { pages.handle(req).await }
    });
    let server = tonic::transport::Server::builder()
        .tls_config(tls)?
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(router));
    let incoming = crate::listener::Incoming::new(listener, cfg.limits.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = server.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "dashboard stopped");
        }
    });
    tracing::info!(%addr, "dashboard serving");
    Ok(Dashboard { addr, access, task })
}
