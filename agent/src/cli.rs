//! The `ballast-agent` command line: `enroll`, `run` (the daemon), `apply`
//! (the same engine with no controller) and `facts`.

use crate::cache::Cached;
use crate::client;
use crate::daemon::{self, DaemonConfig};
use crate::engine::Outcome;
use crate::host::Host;
use crate::state::StateDir;
use anyhow::Context;
use ballast_proto::enums::Trigger;
use ballast_proto::spec::{self, NodeMeta};
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::io::{Read, Write};
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
        /// Controller address, HOST:PORT, or several, comma-separated
        /// (a:8440,b:8440): the agent fails over among them.
        #[arg(long, env = "BALLAST_CONTROLLER")]
        controller: String,
        /// The one-time token (`ballast token create`). Prefer the environment
        /// (BALLAST_TOKEN) or --token-file: arguments are visible to every user.
        #[arg(long, env = "BALLAST_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Read the token from this file, or from standard input with `-`.
        #[arg(long, conflicts_with = "token")]
        token_file: Option<PathBuf>,
        /// The controller CA's fingerprint, sha256:HEX (`ballast ca fingerprint`).
        #[arg(long)]
        ca_fingerprint: String,
        /// Node name; defaults to the hostname.
        #[arg(long)]
        name: Option<String>,
        /// Where the key, certificate and cached state live.
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
        /// Where the key, certificate and cached state live.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Directory of custom facts (*.json, or executables printing JSON).
        #[arg(long, default_value = daemon::DEFAULT_FACTS_DIR)]
        facts_dir: PathBuf,
        /// Override the controller address(es) recorded at enrollment
        /// (HOST:PORT[,HOST:PORT...]).
        #[arg(long)]
        controller: Option<String>,
    },
    /// Apply YAML desired state locally, with no controller.
    Apply {
        /// A YAML file or a directory of them; repeatable.
        #[arg(short = 'f', long = "file", required = true)]
        paths: Vec<PathBuf>,
        /// Manage paths under DIR instead of /.
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
        /// Where backups and the record of managed things live.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Directory of custom facts (*.json, or executables printing JSON).
        #[arg(long, default_value = daemon::DEFAULT_FACTS_DIR)]
        facts_dir: PathBuf,
        /// Print only the summary line.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print this node's facts as JSON.
    Facts {
        /// Directory of custom facts (*.json, or executables printing JSON).
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
    ballast_proto::log::init(if matches!(cli.command, Command::Run { .. }) {
        "info"
    } else {
        "warn"
    });
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

/// The enrollment token from `--token`/BALLAST_TOKEN or `--token-file`
/// (`-`: standard input), trimmed.
fn read_token(
    token: Option<String>,
    file: Option<&Path>,
    stdin: &mut dyn Read,
) -> anyhow::Result<String> {
    let text = match (token, file) {
        (Some(t), _) => t,
        (None, Some(p)) if p == Path::new("-") => {
            let mut s = String::new();
            stdin
                .take(4096)
                .read_to_string(&mut s)
                .context("read the token from standard input")?;
            s
        }
        (None, Some(p)) => std::fs::read_to_string(p)
            .with_context(|| format!("read the token from {}", p.display()))?,
        (None, None) => anyhow::bail!(
            "no enrollment token: set BALLAST_TOKEN, or pass --token-file FILE (- for standard input)"
        ),
    };
    let token = text.trim().to_owned();
    anyhow::ensure!(!token.is_empty(), "the enrollment token is empty");
    Ok(token)
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
            token_file,
            ca_fingerprint,
            name,
            state_dir,
        } => {
            let token = read_token(token, token_file.as_deref(), &mut std::io::stdin())?;
            let state_dir = state_dir.unwrap_or_else(StateDir::default_path);
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
                state_dir: StateDir::new(state_dir.unwrap_or_else(StateDir::default_path)),
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
            let state_dir = StateDir::create(state_dir.unwrap_or_else(StateDir::default_path))?;
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
    state_dir: &StateDir,
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
    // A dry run shows what each change waits for beyond `requires`.
    let implied: BTreeMap<String, Vec<String>> = if noop {
        let all: Vec<&spec::Resource> = state.resources.iter().collect();
        all.iter()
            .zip(spec::dependencies(&all))
            .map(|(r, deps)| {
                let lines = deps
                    .iter()
                    .filter(|d| d.is_implicit())
                    .map(|d| format!("after {} ({}, implied)", d.on, d.why))
                    .collect();
                (r.id(), lines)
            })
            .collect()
    } else {
        BTreeMap::new()
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
        Trigger::Local,
    )
    .await?;
    let verb = if noop { "would change" } else { "changed" };
    let (mut changed, mut failed, mut skipped) = (0, 0, 0);
    for r in &report.resources {
        let outcome =
            Outcome::try_from(r.outcome).with_context(|| format!("report of {}", r.id))?;
        match outcome {
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
        if !r.changes.is_empty() {
            for line in implied.get(&r.id).into_iter().flatten() {
                writeln!(out, "    {line}")?;
            }
        }
        if !r.error.is_empty() {
            let what = match outcome {
                Outcome::Skipped => Outcome::Skipped,
                _ => Outcome::Failed,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_and_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} <{}>", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "ballast-agent", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }

    #[test]
    fn the_token_comes_from_the_environment_a_file_or_stdin() {
        let t = format!("blt_{}", "0f".repeat(32));
        let mut no_stdin: &[u8] = b"";
        assert_eq!(read_token(Some(t.clone()), None, &mut no_stdin).unwrap(), t);
        let mut stdin = format!("{t}\n");
        let mut stdin_bytes = stdin.as_bytes();
        assert_eq!(
            read_token(None, Some(Path::new("-")), &mut stdin_bytes).unwrap(),
            t
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        stdin.insert(0, ' ');
        std::fs::write(file.path(), &stdin).unwrap();
        assert_eq!(
            read_token(None, Some(file.path()), &mut no_stdin).unwrap(),
            t
        );
        let err = read_token(None, None, &mut no_stdin).unwrap_err();
        assert!(format!("{err:#}").contains("BALLAST_TOKEN"), "{err:#}");
        // The enroll command parses with no --token at all (env or file instead).
        let cli = Cli::try_parse_from([
            "ballast-agent",
            "enroll",
            "--controller",
            "c:1",
            "--ca-fingerprint",
            "x",
            "--token-file",
            "-",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Enroll { token: None, .. }));
    }

    /// `--noop` shows the implicit dependencies of what it would change.
    #[tokio::test]
    async fn a_dry_run_shows_implicit_dependencies() {
        let root = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let site = root.path().join("site.yaml");
        std::fs::write(
            &site,
            "roles:\n  r:\n    directories: [{path: /srv/app}]\n    files: [{path: /srv/app/a.conf, content: x}]\ngroups:\n  all: {roles: [r]}\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "ballast-agent",
            "apply",
            "--noop",
            "--root",
            root.path().to_str().unwrap(),
            "--state-dir",
            state.path().to_str().unwrap(),
            "--name",
            "n1",
            "-f",
            site.to_str().unwrap(),
        ])
        .unwrap();
        let mut out = Vec::new();
        execute(cli.command, &mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let text: Vec<&str> = text.lines().filter(|l| !l.contains(" ms")).collect();
        expect_test::expect![[r#"
            would change directory[/srv/app]: create directory (and missing parents /srv)
            would change file[/srv/app/a.conf]: create file (1 bytes)
                after directory[/srv/app] (the directory it is in, implied)"#]]
        .assert_eq(&text.join("\n"));
    }
}
