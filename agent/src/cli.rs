//! The `ballast-agent` command line: `enroll`, `run` (the daemon), `apply`
//! (the same engine with no controller) and `facts`.

use crate::cache::Cached;
use crate::client;
use crate::daemon::{self, DaemonConfig};
use crate::engine::Outcome;
use crate::host::Host;
use anyhow::Context;
use ballast_proto::spec::{self, NodeMeta};
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "ballast-agent", version, about = "Ballast node agent")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Enroll this node with a one-time token.
    Enroll {
        /// Controller address, HOST:PORT.
        #[arg(long, env = "BALLAST_CONTROLLER")]
        controller: String,
        #[arg(long, env = "BALLAST_TOKEN")]
        token: String,
        /// The controller CA's fingerprint, sha256:HEX (`ballast ca fingerprint`).
        #[arg(long)]
        ca_fingerprint: String,
        /// Node name; defaults to the hostname.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Run the daemon: watch, reconcile, report.
    Run {
        /// Resync (drift repair) interval, e.g. 30s, 5m.
        #[arg(long, default_value = "5m", value_parser = ballast_proto::parse_duration)]
        interval: Duration,
        /// Heartbeat interval.
        #[arg(long, default_value = "30s", value_parser = ballast_proto::parse_duration)]
        heartbeat: Duration,
        /// Manage paths under DIR instead of /.
        #[arg(long)]
        root: Option<PathBuf>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long, default_value = daemon::DEFAULT_FACTS_DIR)]
        facts_dir: PathBuf,
        /// Override the controller address recorded at enrollment.
        #[arg(long)]
        controller: Option<String>,
    },
    /// Apply YAML desired state locally, with no controller.
    Apply {
        #[arg(short = 'f', long = "file", required = true)]
        paths: Vec<PathBuf>,
        #[arg(long)]
        root: Option<PathBuf>,
        /// Show what would change; change nothing.
        #[arg(long)]
        noop: bool,
        /// Node label k=v (selects node groups); repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Node name; defaults to the hostname.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long, default_value = daemon::DEFAULT_FACTS_DIR)]
        facts_dir: PathBuf,
        /// Print only the summary line.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print this node's facts as JSON.
    Facts {
        #[arg(long, default_value = daemon::DEFAULT_FACTS_DIR)]
        facts_dir: PathBuf,
    },
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
        .to_lowercase()
}

/// Entry point of the binary.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let default = if matches!(cli.command, Command::Run { .. }) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BALLAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command, &mut std::io::stdout())) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

pub async fn execute(command: Command, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    match command {
        Command::Enroll {
            controller,
            token,
            ca_fingerprint,
            name,
            state_dir,
        } => {
            let state_dir = state_dir.unwrap_or_else(client::default_state_dir);
            let name = name.unwrap_or_else(hostname);
            let resp =
                client::enroll(&state_dir, &controller, &token, &ca_fingerprint, &name).await?;
            let labels: Vec<String> = resp
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            writeln!(
                out,
                "enrolled as {} (labels: {}); state in {}",
                resp.name,
                labels.join(","),
                state_dir.display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            interval,
            heartbeat,
            root,
            state_dir,
            facts_dir,
            controller,
        } => {
            let cfg = DaemonConfig {
                state_dir: state_dir.unwrap_or_else(client::default_state_dir),
                root,
                interval,
                heartbeat,
                facts_dir,
                controller,
            };
            daemon::run(cfg, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply {
            paths,
            root,
            noop,
            labels,
            name,
            state_dir,
            facts_dir,
            quiet,
        } => {
            let labels: BTreeMap<String, String> = labels
                .iter()
                .map(|l| {
                    l.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .with_context(|| format!("--label {l:?}: expected key=value"))
                })
                .collect::<anyhow::Result<_>>()?;
            let state_dir = state_dir.unwrap_or_else(client::default_state_dir);
            client::create_private_dir(&state_dir)?;
            let node = NodeMeta {
                name: name.unwrap_or_else(hostname),
                labels,
            };
            apply_local(&paths, root, noop, node, &state_dir, &facts_dir, quiet, out).await
        }
        Command::Facts { facts_dir } => {
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&crate::facts::collect(&facts_dir))?
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn apply_local(
    paths: &[PathBuf],
    root: Option<PathBuf>,
    noop: bool,
    node: NodeMeta,
    state_dir: &Path,
    facts_dir: &Path,
    quiet: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let sources = spec::read_sources(paths).map_err(anyhow::Error::msg)?;
    let spec = spec::parse(&sources).map_err(|e| anyhow::anyhow!("{e}"))?;
    let state = spec.render(&node);
    // Facts cost milliseconds; only templates need them.
    let facts = if state
        .resources
        .iter()
        .any(|r| matches!(r, spec::Resource::File(f) if f.template))
    {
        crate::facts::collect(facts_dir)
    } else {
        serde_json::Value::Null
    };
    let hash = state.hash();
    let cached = Arc::new(Cached {
        revision: 0,
        hash,
        state,
    });
    let report = daemon::reconcile(
        state_dir,
        Arc::new(Host::new(root)),
        cached,
        Arc::new(facts),
        noop,
        "local",
    )
    .await?;
    let verb = if noop { "would change" } else { "changed" };
    let (mut changed, mut failed, mut skipped) = (0, 0, 0);
    for r in &report.resources {
        match Outcome::from_pb(r.outcome) {
            Outcome::Changed => changed += 1,
            Outcome::Failed => failed += 1,
            Outcome::Skipped => skipped += 1,
            Outcome::Unchanged => {}
        }
        if quiet {
            continue;
        }
        for c in &r.changes {
            writeln!(out, "{verb} {}: {c}", r.id)?;
        }
        if !r.error.is_empty() {
            let what = if matches!(Outcome::from_pb(r.outcome), Outcome::Skipped) {
                "skipped"
            } else {
                "failed"
            };
            writeln!(out, "{what} {}: {}", r.id, r.error)?;
        }
    }
    writeln!(
        out,
        "{} resources: {changed} {verb}, {failed} failed, {skipped} skipped in {} ms",
        report.resources.len(),
        report.duration_ms
    )?;
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
