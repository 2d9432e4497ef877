//! Commands over credentials and enrollment: `token create`, `ca
//! fingerprint`, `admin credentials`, `bootstrap`, and `serve`'s settings.

use super::conn::{Conn, connect, credentials_dir, read, status_error};
use super::nodes::parse_pairs;
use super::output::{Format, emit, time_json};
use super::{BootstrapArgs, ServeArgs};
use crate::config::{self, ServeConfig};
use anyhow::Context;
use ballast_proto::pb;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// `ballast token create`: the token alone, or a document with its expiry.
pub async fn create_token(
    labels: &[String],
    ttl: Duration,
    name: Option<String>,
    replace_revoked: bool,
    format: Format,
    conn: &Conn,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let labels = parse_pairs(labels)?;
    let mut client = connect(conn).await?;
    let resp = client
        .create_token(pb::CreateTokenRequest {
            labels: labels.clone().into_iter().collect(),
            ttl_seconds: ttl.as_secs().max(1),
            name: name.clone().unwrap_or_default(),
            replace_revoked,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let doc = || {
        serde_json::json!({
            "token": resp.token,
            "expires_at": time_json(resp.expires_at_ms),
            "name": name,
            "labels": labels,
        })
    };
    emit(out, format, doc, |out| Ok(writeln!(out, "{}", resp.token)?))?;
    Ok(ExitCode::SUCCESS)
}

/// `ballast dashboard url`: the link alone on the last line, so scripts
/// can take it with `tail -n1`.
pub async fn dashboard_url(
    format: Format,
    conn: &Conn,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(conn).await?;
    let resp = client
        .create_dashboard_login(pb::DashboardLoginRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    emit(
        out,
        format,
        || serde_json::json!({ "url": resp.url, "expires_at": time_json(resp.expires_at_ms) }),
        |out| {
            writeln!(
                out,
                "Open this link in a browser before {}; it works once:",
                super::output::time(resp.expires_at_ms)
            )?;
            Ok(writeln!(out, "{}", super::output::esc(&resp.url))?)
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `ballast ca fingerprint`.
pub fn ca_fingerprint(
    format: Format,
    conn: &Conn,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let dir = credentials_dir(conn)?;
    let fingerprint = fingerprint_of_pem(&read(&dir.join("ca.pem"))?)?;
    emit(
        out,
        format,
        || serde_json::json!({ "fingerprint": fingerprint }),
        |out| Ok(writeln!(out, "{fingerprint}")?),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `ballast bootstrap cloud-init|script`: prints the user-data or script.
pub fn bootstrap(
    args: BootstrapArgs,
    cloud: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let dir = credentials_dir(&args.conn)?;
    let params = crate::bootstrap::Params {
        controller: args
            .controllers
            .clone()
            .unwrap_or_else(|| args.conn.controller.clone()),
        fingerprint: fingerprint_of_pem(&read(&dir.join("ca.pem"))?)?,
        token: args.token,
        name: args.name.unwrap_or_default(),
    };
    let text = if cloud {
        crate::bootstrap::cloud_init(&params)?
    } else {
        crate::bootstrap::script(&params)?
    };
    write!(out, "{text}")?;
    Ok(ExitCode::SUCCESS)
}

/// `ballast admin credentials --out DIR`.
pub fn credentials(
    dest: &Path,
    format: Format,
    conn: &Conn,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let dir = credentials_dir(conn)?;
    export_credentials(&dir, dest)?;
    let files: Vec<PathBuf> = ["ca.pem", "admin.pem", "admin.key"]
        .iter()
        .map(|f| dest.join(f))
        .collect();
    emit(
        out,
        format,
        || serde_json::json!({ "dir": dest, "files": files }),
        |out| {
            Ok(writeln!(
                out,
                "wrote {0}/ca.pem, {0}/admin.pem and {0}/admin.key; use them with --data-dir {0}",
                dest.display()
            )?)
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `serve`'s settings: defaults, then the config file, then flags.
pub fn serve_config(args: ServeArgs) -> anyhow::Result<ServeConfig> {
    let mut cfg = ServeConfig::defaults();
    let file = match &args.config {
        Some(path) => Some(config::read_file_config(path)?),
        None if Path::new(config::DEFAULT_CONFIG_FILE).exists() => Some(config::read_file_config(
            Path::new(config::DEFAULT_CONFIG_FILE),
        )?),
        None => None,
    };
    let flags = config::StoreSettings {
        store: args.store,
        prefix: args.store_prefix,
        etcd_ca: args.etcd_ca,
        etcd_cert: args.etcd_cert,
        etcd_key: args.etcd_key,
    };
    let mut store = flags;
    if let Some(f) = file {
        store = store.or(f.store.clone());
        f.merge_connections(&mut cfg.connections);
        f.merge_liveness(&mut cfg.liveness);
        cfg.listen = f.listen.unwrap_or(cfg.listen);
        cfg.data_dir = f.data_dir.unwrap_or(cfg.data_dir);
        cfg.advertise = f.advertise;
        cfg.stale_after = f.stale_after.unwrap_or(cfg.stale_after);
        cfg.metrics_token_file = f.metrics_token_file;
        cfg.dashboard_listen = f.dashboard_listen;
        cfg.dashboard_cert = f.dashboard_cert;
        cfg.dashboard_key = f.dashboard_key;
    }
    cfg.metrics_token_file = args.metrics_token_file.or(cfg.metrics_token_file);
    cfg.dashboard_listen = args.dashboard_listen.or(cfg.dashboard_listen);
    if args.dashboard_cert.is_some() {
        cfg.dashboard_cert = args.dashboard_cert;
        cfg.dashboard_key = args.dashboard_key;
    }
    if cfg.dashboard_cert.is_some() != cfg.dashboard_key.is_some() {
        anyhow::bail!("dashboard_cert and dashboard_key go together: give both or neither");
    }
    cfg.listen = args.listen.unwrap_or(cfg.listen);
    cfg.data_dir = args.data_dir.unwrap_or(cfg.data_dir);
    cfg.advertise.extend(args.advertise);
    cfg.stale_after = args.stale_after.unwrap_or(cfg.stale_after);
    cfg.agent_binary = args.agent_binary;
    cfg.store = store.resolve().map_err(anyhow::Error::msg)?;
    Ok(cfg)
}

/// `sha256:HEX` of the first certificate in a PEM text.
pub fn fingerprint_of_pem(pem: &str) -> anyhow::Result<String> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("CA certificate PEM: {e}"))?;
    Ok(ballast_proto::sha256_tag(&parsed.contents))
}

fn export_credentials(from: &Path, to: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(to)
        .with_context(|| format!("create {}", to.display()))?;
    for name in ["ca.pem", "admin.pem", "admin.key"] {
        let bytes = std::fs::read(from.join(name))
            .with_context(|| format!("read {}", from.join(name).display()))?;
        let dest = to.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&dest)
            .with_context(|| format!("write {}", dest.display()))?;
        f.write_all(&bytes)
            .with_context(|| format!("write {}", dest.display()))?;
        f.sync_all()?;
    }
    Ok(())
}
