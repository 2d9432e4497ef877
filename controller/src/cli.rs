//! The `ballast` command line: `serve`, and the operator's client commands.
//!
//! Raw flags are parsed once into validated values; commands write to the
//! given writer so tests can read what an operator would see.

use crate::config::{self, ServeConfig};
use anyhow::{Context, bail};
use ballast_proto::pb;
use ballast_proto::pb::admin_client::AdminClient;
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

#[derive(Parser, Debug)]
#[command(
    name = "ballast",
    version,
    about = "Ballast controller and operator CLI"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the controller is and where the admin credentials are.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Controller address.
    #[arg(long, env = "BALLAST_CONTROLLER", default_value = config::DEFAULT_CONTROLLER, global = true)]
    pub controller: String,
    /// Data dir holding `pki/` (or a directory written by `ballast admin credentials`).
    #[arg(long, env = "BALLAST_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller.
    Serve(ServeArgs),
    /// Validate YAML desired state and store it as a new revision.
    Apply {
        /// A YAML file or a directory of them.
        #[arg(short = 'f', long = "file", required = true)]
        paths: Vec<PathBuf>,
        /// Wait until every affected node converged; fail if one fails.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "5m", value_parser = ballast_proto::parse_duration)]
        timeout: Duration,
        /// A note kept in the history.
        #[arg(short = 'm', long, default_value = "")]
        message: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show per node which resources an apply would add, change or remove.
    Diff {
        #[arg(short = 'f', long = "file", required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List revisions, newest first.
    History {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Store a new revision with the content of an old one.
    Rollback {
        revision: u64,
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "5m", value_parser = ballast_proto::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        conn: Conn,
    },
    /// Enrollment tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// List nodes with their status.
    Nodes {
        /// `key=value` on labels or facts (dotted: os.id=debian); repeatable.
        #[arg(long = "where")]
        filters: Vec<String>,
        #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// One node.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Fleet summary; exits non-zero when any node is failed or stale, or a bootstrap failed.
    Health {
        #[command(flatten)]
        conn: Conn,
    },
    /// The certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Admin credentials.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Print what enrolls a new machine: cloud-init user-data or a shell script.
    Bootstrap {
        #[command(subcommand)]
        command: BootstrapCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum BootstrapCommand {
    /// `#cloud-config` user-data for a new node.
    CloudInit(BootstrapArgs),
    /// The same steps as a POSIX shell script, for machines without cloud-init.
    Script(BootstrapArgs),
}

#[derive(Args, Debug)]
pub struct BootstrapArgs {
    /// A one-time token from `ballast token create`.
    #[arg(long, env = "BALLAST_TOKEN")]
    pub token: String,
    /// Node name; defaults to the token's bound name, else the node's hostname.
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address of the gRPC API (agents and operators).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Where the store and certificates live.
    #[arg(long, env = "BALLAST_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Extra DNS name or IP the server certificate covers; repeatable.
    #[arg(long)]
    pub advertise: Vec<String>,
    /// A node is stale after this long without a heartbeat.
    #[arg(long, value_parser = ballast_proto::parse_duration)]
    pub stale_after: Option<Duration>,
    /// The agent binary served to bootstrapping nodes (default: beside `ballast`).
    #[arg(long)]
    pub agent_binary: Option<PathBuf>,
    /// Config file (`key: value` lines); default /etc/ballast/controller.yaml when present.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a one-time enrollment token; prints the token alone.
    Create {
        /// Labels the node gets: k=v,k2=v2.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        #[arg(long, default_value = "1h", value_parser = ballast_proto::parse_duration)]
        ttl: Duration,
        /// Bind the token to this node name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Facts, last run, and the node's timeline.
    Show {
        name: String,
        #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke the node's certificate: its next call fails.
    Revoke {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Set labels (k=v), or remove one (k=).
    Label {
        name: String,
        #[arg(required = true)]
        labels: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Print the CA fingerprint agents pin (sha256:HEX).
    Fingerprint {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Copy the CA certificate and the admin certificate and key to a directory,
    /// for use with --data-dir on another machine.
    Credentials {
        #[arg(long, default_value = "ballast-credentials")]
        out: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Entry point of the binary.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("BALLAST_LOG").unwrap_or_else(|_| {
        let level = if matches!(cli.command, Command::Serve(_)) {
            "info"
        } else {
            "warn"
        };
        tracing_subscriber::EnvFilter::new(level)
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    match runtime.block_on(execute(cli.command, &mut stdout)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command, writing what the operator reads to `out`.
pub async fn execute(command: Command, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            let cfg = serve_config(args)?;
            let running = crate::server::start(&cfg).await?;
            running.wait_for_signal().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply {
            paths,
            wait,
            timeout,
            message,
            conn,
        } => {
            let mut client = connect(&conn).await?;
            let sources = read_sources(&paths)?;
            let resp = client
                .apply(pb::ApplyRequest {
                    sources,
                    author: author(),
                    message,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            report_apply(out, &resp)?;
            if wait {
                wait_for(&mut client, out, &resp, timeout).await
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Diff { paths, conn } => {
            let mut client = connect(&conn).await?;
            let sources = read_sources(&paths)?;
            let resp = client
                .diff(pb::ApplyRequest {
                    sources,
                    author: author(),
                    message: String::new(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if resp.nodes.is_empty() {
                writeln!(
                    out,
                    "no node would change (current revision {})",
                    resp.current_revision
                )?;
            }
            for n in &resp.nodes {
                writeln!(out, "node {}:", n.node)?;
                for id in &n.added {
                    writeln!(out, "  + {id}")?;
                }
                for id in &n.changed {
                    writeln!(out, "  ~ {id}")?;
                }
                for id in &n.removed {
                    writeln!(out, "  - {id}")?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::History { limit, conn } => {
            let mut client = connect(&conn).await?;
            let resp = client
                .history(pb::HistoryRequest { limit })
                .await
                .map_err(status_error)?
                .into_inner();
            writeln!(
                out,
                "{:<6} {:<20} {:<24} {:<20} MESSAGE",
                "REV", "TIME", "AUTHOR", "HASH"
            )?;
            for r in resp.revisions {
                let msg = if r.restored_from > 0 && r.message.is_empty() {
                    format!("rollback to {}", r.restored_from)
                } else {
                    r.message
                };
                writeln!(
                    out,
                    "{:<6} {:<20} {:<24} {:<20} {}",
                    r.number,
                    time(r.created_at_ms),
                    r.author,
                    short_hash(&r.hash),
                    msg
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback {
            revision,
            wait,
            timeout,
            conn,
        } => {
            let mut client = connect(&conn).await?;
            let resp = client
                .rollback(pb::RollbackRequest {
                    revision,
                    author: author(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            report_apply(out, &resp)?;
            if wait {
                wait_for(&mut client, out, &resp, timeout).await
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    labels,
                    ttl,
                    name,
                    conn,
                },
        } => {
            let labels = parse_pairs(&labels)?;
            let mut client = connect(&conn).await?;
            let resp = client
                .create_token(pb::CreateTokenRequest {
                    labels: labels.into_iter().collect(),
                    ttl_seconds: ttl.as_secs().max(1),
                    name: name.unwrap_or_default(),
                    replace_revoked: false,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            writeln!(out, "{}", resp.token)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Nodes {
            filters,
            output,
            conn,
        } => {
            let mut client = connect(&conn).await?;
            let resp = client
                .list_nodes(pb::ListNodesRequest {
                    r#where: filters,
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if output == "json" {
                let nodes: Vec<serde_json::Value> = resp.nodes.iter().map(node_json).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&nodes)?)?;
            } else {
                write_node_table(out, &resp.nodes)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Node {
            command: NodeCommand::Show { name, output, conn },
        } => {
            let mut client = connect(&conn).await?;
            let detail = client
                .get_node(pb::GetNodeRequest { name })
                .await
                .map_err(status_error)?
                .into_inner();
            write_node_detail(out, &detail, output == "json")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Node {
            command: NodeCommand::Revoke { name, conn },
        } => {
            let mut client = connect(&conn).await?;
            client
                .revoke_node(pb::NodeName { name: name.clone() })
                .await
                .map_err(status_error)?;
            writeln!(out, "node {name} revoked")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Node {
            command: NodeCommand::Label { name, labels, conn },
        } => {
            let labels = parse_pairs(&labels)?;
            let mut client = connect(&conn).await?;
            client
                .label_node(pb::LabelNodeRequest {
                    name: name.clone(),
                    labels: labels.into_iter().collect(),
                })
                .await
                .map_err(status_error)?;
            writeln!(out, "node {name} labels updated")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { conn } => {
            let mut client = connect(&conn).await?;
            let resp = client
                .list_nodes(pb::ListNodesRequest::default())
                .await
                .map_err(status_error)?
                .into_inner();
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for n in &resp.nodes {
                *counts.entry(n.status.as_str()).or_default() += 1;
            }
            let parts: Vec<String> = counts.iter().map(|(s, c)| format!("{c} {s}")).collect();
            writeln!(
                out,
                "revision {}; {} nodes: {}",
                resp.current_revision,
                resp.nodes.len(),
                if parts.is_empty() {
                    "none".into()
                } else {
                    parts.join(", ")
                }
            )?;
            let bad: Vec<&pb::NodeSummary> = resp
                .nodes
                .iter()
                .filter(|n| matches!(n.status.as_str(), "failed" | "stale" | "bootstrap-failed"))
                .collect();
            for n in &bad {
                let what = match n.status.as_str() {
                    "failed" => format!("failing: {}", n.failed_resources.join(", ")),
                    "stale" => format!("last seen {}", time(n.last_seen_ms)),
                    _ => format!("see ballast node show {}", n.name),
                };
                writeln!(out, "  {} {} ({what})", n.name, n.status)?;
            }
            Ok(if bad.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Ca {
            command: CaCommand::Fingerprint { conn },
        } => {
            let dir = credentials_dir(&conn)?;
            let pem = read(&dir.join("ca.pem"))?;
            writeln!(out, "{}", fingerprint_of_pem(&pem)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bootstrap { command } => {
            let (args, cloud) = match command {
                BootstrapCommand::CloudInit(a) => (a, true),
                BootstrapCommand::Script(a) => (a, false),
            };
            let dir = credentials_dir(&args.conn)?;
            let params = crate::bootstrap::Params {
                controller: args.conn.controller.clone(),
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
        Command::Admin {
            command: AdminCommand::Credentials { out: dest, conn },
        } => {
            let dir = credentials_dir(&conn)?;
            export_credentials(&dir, &dest)?;
            writeln!(
                out,
                "wrote {0}/ca.pem, {0}/admin.pem and {0}/admin.key; use them with --data-dir {0}",
                dest.display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn serve_config(args: ServeArgs) -> anyhow::Result<ServeConfig> {
    let mut cfg = ServeConfig::defaults();
    let file = match &args.config {
        Some(path) => Some(config::read_file_config(path)?),
        None if Path::new(config::DEFAULT_CONFIG_FILE).exists() => Some(config::read_file_config(
            Path::new(config::DEFAULT_CONFIG_FILE),
        )?),
        None => None,
    };
    if let Some(f) = file {
        cfg.listen = f.listen.unwrap_or(cfg.listen);
        cfg.data_dir = f.data_dir.unwrap_or(cfg.data_dir);
        cfg.advertise = f.advertise;
        cfg.stale_after = f.stale_after.unwrap_or(cfg.stale_after);
    }
    cfg.listen = args.listen.unwrap_or(cfg.listen);
    cfg.data_dir = args.data_dir.unwrap_or(cfg.data_dir);
    cfg.advertise.extend(args.advertise);
    cfg.stale_after = args.stale_after.unwrap_or(cfg.stale_after);
    cfg.agent_binary = args.agent_binary;
    Ok(cfg)
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

fn read(path: &Path) -> anyhow::Result<String> {
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
        .with_context(|| format!("connect to controller at {}", conn.controller))?;
    Ok(channel)
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

fn author() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!("{user}@{host}")
}

/// Reads YAML sources (files, or directories of `*.yaml`/`*.yml`) for a
/// request, refusing before sending what the controller would refuse.
pub fn read_sources(paths: &[PathBuf]) -> anyhow::Result<Vec<pb::SourceFile>> {
    let sources = ballast_proto::spec::read_sources(paths).map_err(anyhow::Error::msg)?;
    let total: usize = sources.iter().map(|s| s.text.len()).sum();
    if total > ballast_proto::MAX_MESSAGE_BYTES - 64 * 1024 {
        bail!(
            "the sources together are {total} bytes; the largest request the controller accepts is {} bytes",
            ballast_proto::MAX_MESSAGE_BYTES
        );
    }
    Ok(sources
        .into_iter()
        .map(|s| pb::SourceFile {
            name: s.name,
            content: s.text,
        })
        .collect())
}

fn parse_pairs(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .with_context(|| format!("{p:?}: expected key=value"))
        })
        .collect()
}

fn report_apply(out: &mut dyn Write, resp: &pb::ApplyResponse) -> anyhow::Result<()> {
    if resp.created {
        writeln!(
            out,
            "revision {} created ({})",
            resp.revision,
            short_hash(&resp.hash)
        )?;
        if resp.affected_nodes.is_empty() {
            writeln!(out, "no node's desired state changed")?;
        } else {
            writeln!(
                out,
                "{} node(s) affected: {}",
                resp.affected_nodes.len(),
                resp.affected_nodes.join(", ")
            )?;
        }
    } else {
        writeln!(
            out,
            "no change: revision {} already has this content",
            resp.revision
        )?;
    }
    Ok(())
}

/// Polls until every affected node reports the new state, or one fails.
async fn wait_for(
    client: &mut AdminClient<Channel>,
    out: &mut dyn Write,
    resp: &pb::ApplyResponse,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let affected: Vec<&String> = resp.affected_nodes.iter().collect();
    if affected.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = Instant::now() + timeout;
    let mut last = usize::MAX;
    loop {
        let nodes = client
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .map_err(status_error)?
            .into_inner()
            .nodes;
        let mine: Vec<&pb::NodeSummary> = nodes
            .iter()
            .filter(|n| affected.contains(&&n.name))
            .collect();
        let done = |n: &pb::NodeSummary| {
            n.applied_revision >= n.desired_revision
                && matches!(n.status.as_str(), "converged" | "drifted")
        };
        let converged = mine.iter().filter(|n| done(n)).count();
        let failed: Vec<&&pb::NodeSummary> = mine
            .iter()
            .filter(|n| n.applied_revision >= n.desired_revision && n.status == "failed")
            .collect();
        if converged != last {
            writeln!(out, "converged {converged}/{}", mine.len())?;
            last = converged;
        }
        if !failed.is_empty() {
            for n in failed {
                writeln!(
                    out,
                    "node {} failed: {}",
                    n.name,
                    n.failed_resources.join(", ")
                )?;
            }
            return Ok(ExitCode::FAILURE);
        }
        if converged == mine.len() {
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            writeln!(
                out,
                "timed out after {}s waiting for nodes to converge",
                timeout.as_secs()
            )?;
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn time(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn short_hash(h: &str) -> String {
    h.chars().take(19).collect()
}

fn labels_text(labels: &std::collections::HashMap<String, String>) -> String {
    let sorted: BTreeMap<&String, &String> = labels.iter().collect();
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn node_json(n: &pb::NodeSummary) -> serde_json::Value {
    let labels: BTreeMap<&String, &String> = n.labels.iter().collect();
    serde_json::json!({
        "name": n.name,
        "labels": labels,
        "status": n.status,
        "desired_revision": n.desired_revision,
        "applied_revision": n.applied_revision,
        "last_seen": if n.last_seen_ms == 0 { serde_json::Value::Null } else { time(n.last_seen_ms).into() },
        "failed_resources": n.failed_resources,
    })
}

fn write_node_table(out: &mut dyn Write, nodes: &[pb::NodeSummary]) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<24} {:<11} {:>7} {:>7} {:<20} {:<28} FAILING",
        "NAME", "STATUS", "DESIRED", "APPLIED", "LAST SEEN", "LABELS"
    )?;
    for n in nodes {
        writeln!(
            out,
            "{:<24} {:<11} {:>7} {:>7} {:<20} {:<28} {}",
            n.name,
            n.status,
            n.desired_revision,
            n.applied_revision,
            time(n.last_seen_ms),
            labels_text(&n.labels),
            n.failed_resources.join(",")
        )?;
    }
    Ok(())
}

fn outcome_name(o: i32) -> &'static str {
    match pb::Outcome::try_from(o).unwrap_or(pb::Outcome::Unspecified) {
        pb::Outcome::Unchanged => "unchanged",
        pb::Outcome::Changed => "changed",
        pb::Outcome::Failed => "failed",
        pb::Outcome::Skipped => "skipped",
        pb::Outcome::Unspecified => "unknown",
    }
}

fn write_node_detail(out: &mut dyn Write, d: &pb::NodeDetail, json: bool) -> anyhow::Result<()> {
    let s = d.summary.clone().unwrap_or_default();
    let facts: serde_json::Value =
        serde_json::from_str(&d.facts_json).unwrap_or(serde_json::Value::Null);
    if json {
        let report = d.last_report.as_ref().map(|r| {
            serde_json::json!({
                "revision": r.revision, "state_hash": r.state_hash, "started_at": time(r.started_at_ms),
                "duration_ms": r.duration_ms, "trigger": r.trigger,
                "resources": r.resources.iter().map(|x| serde_json::json!({
                    "id": x.id, "outcome": outcome_name(x.outcome), "changes": x.changes, "error": x.error, "backup": x.backup,
                })).collect::<Vec<_>>(),
            })
        });
        let timeline: Vec<serde_json::Value> = d
            .timeline
            .iter()
            .map(|e| serde_json::json!({"at": time(e.at_ms), "stage": e.stage, "detail": e.detail}))
            .collect();
        let mut v = node_json(&s);
        v["facts"] = facts;
        v["last_run"] = report.unwrap_or(serde_json::Value::Null);
        v["timeline"] = timeline.into();
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    writeln!(out, "node:      {}", s.name)?;
    writeln!(out, "status:    {}", s.status)?;
    writeln!(out, "labels:    {}", labels_text(&s.labels))?;
    writeln!(
        out,
        "revision:  desired {}, applied {}",
        s.desired_revision, s.applied_revision
    )?;
    writeln!(out, "last seen: {}", time(s.last_seen_ms))?;
    if let Some(os) = facts.get("os") {
        writeln!(
            out,
            "facts:     {} {} {}, kernel {}, {} cpus",
            os.get("pretty_name")
                .and_then(|v| v.as_str())
                .unwrap_or("?"),
            facts.get("arch").and_then(|v| v.as_str()).unwrap_or("?"),
            facts
                .get("hostname")
                .and_then(|v| v.as_str())
                .unwrap_or("?"),
            facts.get("kernel").and_then(|v| v.as_str()).unwrap_or("?"),
            facts.get("cpus").map(|v| v.to_string()).unwrap_or_default()
        )?;
    }
    writeln!(out, "timeline:")?;
    for e in &d.timeline {
        writeln!(out, "  {}  {:<13} {}", time(e.at_ms), e.stage, e.detail)?;
    }
    match &d.last_report {
        None => writeln!(out, "last run:  none yet")?,
        Some(r) => {
            writeln!(
                out,
                "last run:  revision {} at {} ({}, {} ms)",
                r.revision,
                time(r.started_at_ms),
                r.trigger,
                r.duration_ms
            )?;
            for x in &r.resources {
                writeln!(out, "  {:<9} {}", outcome_name(x.outcome), x.id)?;
                for c in &x.changes {
                    writeln!(out, "            {c}")?;
                }
                if !x.error.is_empty() {
                    writeln!(out, "            error: {}", x.error)?;
                }
            }
        }
    }
    Ok(())
}

/// `sha256:HEX` of the first certificate in a PEM text.
pub fn fingerprint_of_pem(pem: &str) -> anyhow::Result<String> {
    let der = pem_to_der(pem).context("CA certificate PEM")?;
    Ok(ballast_proto::sha256_tag(&der))
}

fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let (_, parsed) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(parsed.contents)
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
