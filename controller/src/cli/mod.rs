//! The `ballast` command line: `serve`, and the operator's client commands.
//!
//! Raw flags are parsed once into validated values; each command is one
//! function (in `revisions`, `nodes`, `admin`) that writes to the given writer,
//! so tests read what an operator would see. `conn` reaches the controller,
//! `output` owns formats and escaping.

mod admin;
mod conn;
pub mod host;
mod nodes;
pub mod output;
mod plan;
mod revisions;
mod rollout;
mod summary;
#[cfg(test)]
mod tests;
mod wait;

pub use admin::fingerprint_of_pem;
pub use conn::{Conn, NodeList, admin_channel, collect_pages, connect, credentials_dir};
pub use output::{Format, OutputArg};
pub use revisions::read_sources;

use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller.
    Serve(Box<ServeArgs>),
    /// Validate YAML desired state and store it as a new revision.
    Apply {
        /// A YAML file or a directory of them; repeatable.
        #[arg(short = 'f', long = "file", required = true)]
        paths: Vec<PathBuf>,
        /// Wait until every affected node converged; fail if one fails.
        /// When the apply starts a rollout, follow it wave by wave until it
        /// is done; fail when a wave fails or it is aborted.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, e.g. 90s, 5m.
        #[arg(long, default_value = "5m", value_parser = ballast_proto::parse_duration)]
        timeout: Duration,
        /// A note kept in the history.
        #[arg(short = 'm', long, default_value = "")]
        message: String,
        /// Consent to an apply that removes resources from nodes, leaves a
        /// node with no roles, or defines a role no node group uses.
        #[arg(long)]
        prune: bool,
        /// Answer yes to the consent question (for scripts): as --prune.
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show per node which resources an apply would add, change or remove.
    /// Exits 0 when no node would change, 2 when some would, 1 on error.
    Diff {
        /// A YAML file or a directory of them; repeatable.
        #[arg(short = 'f', long = "file", required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        conn: Conn,
    },
    /// Ask each selected node's agent for a dry run of these sources against
    /// its real state; nothing is stored or applied. Groups nodes by change
    /// set. Exits 0 when no node would change, 2 when some would, 1 when a
    /// node would fail, refused or did not answer (or on error).
    Plan {
        /// A YAML file or a directory of them; repeatable.
        #[arg(short = 'f', long = "file", required = true)]
        paths: Vec<PathBuf>,
        /// Only nodes matching `key=value` on labels or facts; repeatable.
        #[arg(long = "where")]
        filters: Vec<String>,
        /// How long to wait for the agents' answers, e.g. 30s, 2m.
        #[arg(long, default_value = "30s", value_parser = ballast_proto::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        conn: Conn,
    },
    /// List revisions, newest first.
    History {
        /// How many revisions to show.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        conn: Conn,
    },
    /// Store a new revision with the content of an old one.
    Rollback {
        /// The revision whose content to restore.
        revision: u64,
        /// Wait until every affected node converged; fail if one fails.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, e.g. 90s, 5m.
        #[arg(long, default_value = "5m", value_parser = ballast_proto::parse_duration)]
        timeout: Duration,
        /// Consent to an apply that removes resources from nodes, leaves a
        /// node with no roles, or defines a role no node group uses.
        #[arg(long)]
        prune: bool,
        /// Answer yes to the consent question (for scripts): as --prune.
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        conn: Conn,
    },
    /// The rollout of the current revision: status, pause, resume, abort.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
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
        #[command(flatten)]
        output: OutputArg,
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
        output: OutputArg,
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
    /// The web dashboard (ballast serve --dashboard-listen).
    Dashboard {
        #[command(subcommand)]
        command: DashboardCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum DashboardCommand {
    /// Print a one-time login link to the controller's dashboard, alone on
    /// the last line; it works once, within two minutes.
    Url {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand, Debug)]
pub enum BootstrapCommand {
    /// `#cloud-config` user-data for a new node.
    CloudInit(BootstrapArgs),
    /// The same steps as a POSIX shell script (needs python3 on the machine).
    Script(BootstrapArgs),
}

#[derive(Args, Debug)]
pub struct BootstrapArgs {
    /// A one-time token from `ballast token create`.
    #[arg(long, env = "BALLAST_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Node name; defaults to the token's bound name, else the node's hostname.
    #[arg(long)]
    pub name: Option<String>,
    /// Every controller the node may use, HOST:PORT,HOST:PORT... (default:
    /// --controller): the node enrolls through the first that answers and
    /// its agent fails over among them.
    #[arg(long)]
    pub controllers: Option<String>,
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
    /// A file (mode 0600 or stricter) holding a token of at least 32
    /// characters: Prometheus may then scrape /metrics with `Authorization:
    /// Bearer TOKEN`; without it only the admin certificate may.
    #[arg(long)]
    pub metrics_token_file: Option<PathBuf>,
    /// Serve the web dashboard here (HTTPS), e.g. 127.0.0.1:8441; off unless given.
    /// `ballast dashboard url` prints a login link.
    #[arg(long)]
    pub dashboard_listen: Option<std::net::SocketAddr>,
    /// Certificate chain (PEM) for the dashboard instead of the controller's; needs --dashboard-key.
    #[arg(long, requires = "dashboard_key")]
    pub dashboard_cert: Option<PathBuf>,
    /// Private key (PEM) of --dashboard-cert.
    #[arg(long, requires = "dashboard_cert")]
    pub dashboard_key: Option<PathBuf>,
    /// Config file (`key: value` lines); default /etc/ballast/controller.yaml when present.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Keep the fleet in etcd (`etcd://HOST:PORT[,HOST:PORT...]`) rather than
    /// in `ballast.redb` in the data dir; controllers on one prefix share the fleet.
    #[arg(long, value_name = "etcd://HOST:PORT,...")]
    pub store: Option<String>,
    /// Key prefix in etcd, so that several fleets share one cluster (default /ballast/).
    #[arg(long)]
    pub store_prefix: Option<String>,
    /// CA certificate (PEM) that signed the etcd members' certificates.
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) to present to etcd; needs --etcd-key.
    #[arg(long)]
    pub etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert.
    #[arg(long)]
    pub etcd_key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Show the waves, their nodes and the gate.
    Status {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop starting waves; nodes keep the revision they have.
    Pause {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        conn: Conn,
    },
    /// Start checking the gate again (a failed wave pauses again).
    Resume {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        conn: Conn,
    },
    /// Return every node already moved to the base revision.
    Abort {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a one-time enrollment token; prints the token alone.
    Create {
        /// Labels the node gets: k=v,k2=v2.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// How long the token stays valid, e.g. 30m, 1h.
        #[arg(long, default_value = "1h", value_parser = ballast_proto::parse_duration)]
        ttl: Duration,
        /// Bind the token to this node name.
        #[arg(long)]
        name: Option<String>,
        /// Let the token re-enroll the revoked node of that name (its timeline is kept).
        #[arg(long, requires = "name")]
        replace: bool,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Facts, last run, and the node's timeline.
    Show {
        /// The node's name.
        name: String,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke the node's certificate: its next call fails.
    Revoke {
        /// The node's name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Set labels (k=v), or remove one (k=).
    Label {
        /// The node's name.
        name: String,
        /// Labels to set, k=v; k= removes label k.
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
        output: OutputArg,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Copy the CA certificate and the admin certificate and key to a directory,
    /// for use with --data-dir on another machine.
    Credentials {
        /// The directory to write (created 0700; files 0600).
        #[arg(long, default_value = "ballast-credentials")]
        out: PathBuf,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Entry point of the binary.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    ballast_proto::log::init(if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    });
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
    summary::may_ask();
    if std::io::IsTerminal::is_terminal(&stdout) {
        rollout::redraw_in_place();
    }
    let result = runtime
        .block_on(execute(cli.command, &mut stdout))
        .and_then(|code| {
            stdout.flush()?;
            Ok(code)
        });
    conclude(result, &mut std::io::stderr())
}

/// Exit status of a closed output pipe, as if killed by SIGPIPE (128 + 13).
pub const BROKEN_PIPE_EXIT: u8 = 141;

/// The exit code for a command's result; errors go to `stderr` with their
/// chain, except a closed output pipe (`ballast nodes | head`), which ends
/// quietly with [`BROKEN_PIPE_EXIT`].
pub fn conclude(result: anyhow::Result<ExitCode>, stderr: &mut dyn Write) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::from(BROKEN_PIPE_EXIT),
        Err(e) => {
            let _ = writeln!(stderr, "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Runs one command, writing what the operator reads to `out`.
pub async fn execute(command: Command, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let wait = |wait: bool, timeout: Duration| wait.then_some(timeout);
    match command {
        Command::Serve(args) => {
            let cfg = admin::serve_config(*args)?;
            let running = crate::server::start(&cfg).await?;
            running.wait_for_signal().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply {
            paths,
            wait: w,
            timeout,
            message,
            prune,
            yes,
            output,
            conn,
        } => {
            let consent = summary::Consent::from_flags(prune, yes);
            let wait = wait(w, timeout);
            revisions::apply(&paths, message, consent, wait, output.output, &conn, out).await
        }
        Command::Diff {
            paths,
            output,
            conn,
        } => revisions::diff(&paths, output.output, &conn, out).await,
        Command::Plan {
            paths,
            filters,
            timeout,
            output,
            conn,
        } => plan::plan(&paths, filters, timeout, output.output, &conn, out).await,
        Command::History {
            limit,
            output,
            conn,
        } => revisions::history(limit, output.output, &conn, out).await,
        Command::Rollback {
            revision,
            wait: w,
            timeout,
            prune,
            yes,
            output,
            conn,
        } => {
            let consent = summary::Consent::from_flags(prune, yes);
            let wait = wait(w, timeout);
            revisions::rollback(revision, consent, wait, output.output, &conn, out).await
        }
        Command::Rollout { command } => {
            let (action, output, conn) = match command {
                RolloutCommand::Status { output, conn } => (None, output, conn),
                RolloutCommand::Pause { output, conn } => {
                    (Some(ballast_proto::pb::RolloutAction::Pause), output, conn)
                }
                RolloutCommand::Resume { output, conn } => {
                    (Some(ballast_proto::pb::RolloutAction::Resume), output, conn)
                }
                RolloutCommand::Abort { output, conn } => {
                    (Some(ballast_proto::pb::RolloutAction::Abort), output, conn)
                }
            };
            rollout::run(action, output.output, &conn, out).await
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    labels,
                    ttl,
                    name,
                    replace,
                    output,
                    conn,
                },
        } => admin::create_token(&labels, ttl, name, replace, output.output, &conn, out).await,
        Command::Nodes {
            filters,
            output,
            conn,
        } => nodes::list(filters, output.output, &conn, out).await,
        Command::Node { command } => match command {
            NodeCommand::Show { name, output, conn } => {
                nodes::show(name, output.output, &conn, out).await
            }
            NodeCommand::Revoke { name, conn } => nodes::revoke(name, &conn, out).await,
            NodeCommand::Label { name, labels, conn } => {
                nodes::label(name, &labels, &conn, out).await
            }
        },
        Command::Health { output, conn } => nodes::health(output.output, &conn, out).await,
        Command::Ca {
            command: CaCommand::Fingerprint { output, conn },
        } => admin::ca_fingerprint(output.output, &conn, out),
        Command::Bootstrap { command } => match command {
            BootstrapCommand::CloudInit(a) => admin::bootstrap(a, true, out),
            BootstrapCommand::Script(a) => admin::bootstrap(a, false, out),
        },
        Command::Dashboard {
            command: DashboardCommand::Url { output, conn },
        } => admin::dashboard_url(output.output, &conn, out).await,
        Command::Admin {
            command:
                AdminCommand::Credentials {
                    out: dest,
                    output,
                    conn,
                },
        } => admin::credentials(&dest, output.output, &conn, out),
    }
}
