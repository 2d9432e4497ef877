//! Reaching the controller: where it is, the admin credentials, the
//! mutual-TLS channel, errors that say what to try next, the node list
//! followed page by page, and who the operator is.

use crate::config;
use anyhow::{Context, bail};
use ballast_proto::pb;
use ballast_proto::pb::admin_client::AdminClient;
use clap::Args;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Where the controller is and where the admin credentials are.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Controller address, HOST:PORT.
    #[arg(long, env = "BALLAST_CONTROLLER", default_value = config::DEFAULT_CONTROLLER, global = true)]
    pub controller: String,
    /// Data dir holding `pki/` (or a directory written by `ballast admin credentials`).
    #[arg(long, env = "BALLAST_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

/// The directory holding `ca.pem`, `admin.pem` and `admin.key`: `DATA_DIR/pki`
/// for a controller's data dir, or the directory itself for exported credentials.
pub fn credentials_dir(conn: &Conn) -> anyhow::Result<PathBuf> {
    let base = conn
        .data_dir
        .clone()
        .unwrap_or_else(config::default_data_dir);
    let pki = crate::server::pki_dir(&base);
    if pki.join("ca.pem").exists() {
        return Ok(pki);
    }
    if base.join("ca.pem").exists() {
        return Ok(base);
    }
    bail!(
        "no admin credentials in {} or {}: start the controller there with `ballast serve`, or pass --data-dir DIR (env BALLAST_DATA_DIR) with a directory written by `ballast admin credentials`",
        pki.display(),
        base.display()
    )
}

pub fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

/// Connects to the Admin service with the admin certificate.
pub async fn connect(conn: &Conn) -> anyhow::Result<AdminClient<Channel>> {
    let channel = admin_channel(conn).await?;
    Ok(AdminClient::new(channel)
        .max_decoding_message_size(ballast_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(ballast_proto::MAX_MESSAGE_BYTES))
}

/// A mutual-TLS channel to the controller with the admin certificate.
pub async fn admin_channel(conn: &Conn) -> anyhow::Result<Channel> {
    let dir = credentials_dir(conn)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&dir.join("ca.pem"))?))
        .identity(Identity::from_pem(
            read(&dir.join("admin.pem"))?,
            read(&dir.join("admin.key"))?,
        ))
        .domain_name(ballast_proto::host_of(&conn.controller));
    let channel = Channel::from_shared(format!("https://{}", conn.controller))
        .with_context(|| {
            format!(
                "controller address {:?}: expected HOST:PORT",
                conn.controller
            )
        })?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| connect_error(&conn.controller, &e))?;
    Ok(channel)
}

/// One sentence for a failed connection: the address tried, the innermost
/// cause (not the transport's repeated wrappers), and what to try.
fn connect_error(addr: &str, e: &(dyn std::error::Error + 'static)) -> anyhow::Error {
    let mut cause: &(dyn std::error::Error + 'static) = e;
    let mut io_kind = None;
    loop {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        match cause.source() {
            Some(next) => cause = next,
            None => break,
        }
    }
    let hint = "is the controller running? Start it with `ballast serve`, or name its address with --controller HOST:PORT (env BALLAST_CONTROLLER)";
    match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => {
            anyhow::anyhow!(
                "cannot connect to the controller at {addr}: connection refused; {hint}"
            )
        }
        _ if cause.to_string().contains("timed out") => {
            anyhow::anyhow!(
                "cannot connect to the controller at {addr}: no answer within 5 s; {hint}"
            )
        }
        _ => anyhow::anyhow!("cannot connect to the controller at {addr}: {cause}"),
    }
}

pub fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

/// Every node the filters select, with the controller's current revision.
#[derive(Debug)]
pub struct NodeList {
    pub nodes: Vec<pb::NodeSummary>,
    pub current_revision: u64,
}

/// The one way the CLI lists nodes: every page, through [`collect_pages`].
pub async fn list_nodes(
    client: &mut AdminClient<Channel>,
    filters: &[String],
) -> anyhow::Result<NodeList> {
    collect_pages(|page_token| {
        let mut client = client.clone();
        let req = pb::ListNodesRequest {
            r#where: filters.to_vec(),
            page_size: 0,
            page_token,
        };
        async move {
            Ok(client
                .list_nodes(req)
                .await
                .map_err(status_error)?
                .into_inner())
        }
    })
    .await
}

/// Follows `next_page_token` until a page comes back without one. `fetch`
/// gets the page token ("" for the first page). A token seen twice is an
/// error rather than an endless loop.
pub async fn collect_pages<F, Fut>(mut fetch: F) -> anyhow::Result<NodeList>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = anyhow::Result<pb::ListNodesResponse>>,
{
    let mut list = NodeList {
        nodes: Vec::new(),
        current_revision: 0,
    };
    let mut token = String::new();
    let mut seen = HashSet::new();
    loop {
        let page = fetch(token).await?;
        list.nodes.extend(page.nodes);
        list.current_revision = list.current_revision.max(page.current_revision);
        if page.next_page_token.is_empty() {
            return Ok(list);
        }
        if !seen.insert(page.next_page_token.clone()) {
            bail!(
                "list nodes: the controller sent page token {:?} twice (after {} nodes); stopped",
                page.next_page_token,
                list.nodes.len()
            );
        }
        token = page.next_page_token;
    }
}

/// `user@host` for a revision's author: `$USER`, `$LOGNAME`, else the name
/// of the effective user (as `id -un`), else `uid N`.
pub fn author() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    format!("{}@{host}", user_name(|k| std::env::var(k).ok()))
}

pub(crate) fn user_name(env: impl Fn(&str) -> Option<String>) -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|k| env(k).filter(|v| !v.is_empty()))
        .unwrap_or_else(|| {
            let uid = nix::unistd::geteuid();
            nix::unistd::User::from_uid(uid)
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| format!("uid {uid}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn node(name: &str) -> pb::NodeSummary {
        pb::NodeSummary {
            name: name.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn listing_follows_every_page_in_order() {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let pages = [
            ("", vec!["a", "b"], "t1"),
            ("t1", vec!["c"], "t2"),
            ("t2", vec!["d"], ""),
        ];
        let list = collect_pages(|token: String| {
            asked.lock().unwrap().push(token.clone());
            let (_, names, next) = pages.iter().find(|p| p.0 == token).unwrap();
            let page = pb::ListNodesResponse {
                nodes: names.iter().map(|n| node(n)).collect(),
                current_revision: 7,
                next_page_token: next.to_string(),
            };
            async move { Ok(page) }
        })
        .await
        .unwrap();
        let names: Vec<&str> = list.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        assert_eq!(list.current_revision, 7);
        assert_eq!(*asked.lock().unwrap(), ["", "t1", "t2"]);
    }

    #[tokio::test]
    async fn listing_stops_on_a_repeated_page_token() {
        let err = collect_pages(|_| async {
            Ok(pb::ListNodesResponse {
                nodes: vec![node("a")],
                current_revision: 1,
                next_page_token: "same".into(),
            })
        })
        .await
        .expect_err("a cycle is an error");
        assert!(format!("{err:#}").contains("twice"), "{err:#}");
    }

    #[test]
    fn author_falls_back_to_the_effective_user() {
        let euid = nix::unistd::geteuid();
        let want = nix::unistd::User::from_uid(euid).unwrap().unwrap().name;
        assert_eq!(user_name(|_| None), want);
        assert_eq!(user_name(|_| Some(String::new())), want);
        assert_eq!(
            user_name(|k| (k == "LOGNAME").then(|| "carol".into())),
            "carol"
        );
    }
}
