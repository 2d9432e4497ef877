//! The `ballast-agent` command line: `enroll`, `run` (the daemon, or one dry
//! run against the controller's desired state), `apply` (the same engine
//! with no controller) and `facts`.
//!
//! Invariant: a dry run (`--noop`) writes nothing, in the state dir
//! included, and takes no lock; it exits 0 (no change), 2 (changes) or 1
//! (an error, or a resource that would fail), as `ballast diff` does.

use crate::cache::Cached;
use crate::client;
use crate::daemon::{self, DaemonConfig};
use crate::engine::Outcome;
use crate::host::Host;
use crate::state::{StateDir, StateFile};
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
        /// The least time between two sends of the host figures (load,
        /// memory, disk use, uptime); they are sent only when one moved
        /// past its threshold. At least 1m.
        #[arg(long, default_value = "5m", value_parser = host_figures_every)]
        host_figures_every: Duration,
        /// Run once and exit instead of running the daemon (with --noop,
        /// the only one-shot run there is so far).
        #[arg(long, requires = "noop")]
        once: bool,
        /// With --once: ask the controller for this node's desired state and
        /// show what a run would change; apply, cache and report nothing.
        /// Exits 0 (no change), 2 (changes), 1 (errors or failures).
        #[arg(long, requires = "once")]
        noop: bool,
    },
    /// Apply YAML desired state locally, with no controller.
    Apply {
        /// A YAML file or a directory of them; repeatable.
        #[arg(short = 'f', long = "file", required = true)]
        paths: Vec<PathBuf>,
        /// Manage paths under DIR instead of /.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Show what would change; change nothing, in the state dir
        /// included (read only, no lock). Exits 0 (no change), 2 (changes),
        /// 1 (errors or failures).
        #[arg(long)]
        noop: bool,
        /// Node label k=v (selects node groups); repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Node name; defaults to the hostname.
        #[arg(long)]
        name: Option<String>,
        /// Where backups and the record of managed things live (with
        /// --noop only read: what the agent manages shows what it would remove).
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

/// `--host-figures-every`: a duration of at least the controller's floor.
fn host_figures_every(s: &str) -> Result<Duration, String> {
    let every = ballast_proto::parse_duration(s)?;
    let min = ballast_proto::limits::MIN_HOST_FIGURES_INTERVAL;
    if every < min {
        return Err(format!(
            "{s} is shorter than {}s, the least the controller stores host figures at",
            min.as_secs()
        ));
    }
    Ok(every)
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
            host_figures_every,
            once,
            noop,
        } => {
            let cfg = DaemonConfig {
                host_figures_every,
                state_dir: StateDir::new(state_dir.unwrap_or_else(StateDir::default_path)),
                root,
                interval,
                heartbeat,
                facts_dir,
                controller,
            };
            if once && noop {
                return dry_run_from_controller(&cfg, out).await;
            }
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
            let state_dir = state_dir.unwrap_or_else(StateDir::default_path);
            let state_dir = if noop {
                read_only(state_dir)?
            } else {
                StateDir::create(state_dir)?
            };
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

/// `--noop`'s exit code when something would change, as `ballast diff`'s
/// and Puppet's `--detailed-exitcodes` (0: no change; 1: an error or a
/// resource that would fail).
pub const NOOP_CHANGES: u8 = 2;

/// The state dir as a dry run uses it: read only. It must know what the
/// agent manages (`managed.json`) to show what a run would remove, and the
/// restarts owed, so it reads them; it takes no lock (it changes nothing, so
/// it need not wait for the daemon's run nor make it wait: each record is
/// replaced atomically, so it reads a whole one) and creates nothing, not
/// even the directory. A state dir that does not exist manages nothing; one
/// that cannot be read is an error, since a dry run that silently showed no
/// removals would lie.
fn read_only(path: PathBuf) -> anyhow::Result<StateDir> {
    let dir = StateDir::new(path);
    for f in [StateFile::Managed, StateFile::PendingRestarts] {
        dir.read(f).with_context(|| {
            format!(
                "a dry run reads what the agent manages in {}, to show what a run would remove (pass --state-dir for another)",
                dir.path().display()
            )
        })?;
    }
    Ok(dir)
}

/// Facts, collected only when a template needs them (they cost milliseconds).
fn facts_for(state: &spec::NodeState, facts_dir: &Path) -> serde_json::Value {
    if state
        .resources
        .iter()
        .any(|r| matches!(r, spec::Resource::File(f) if f.template))
    {
        crate::facts::collect(facts_dir)
    } else {
        serde_json::Value::Null
    }
}

/// What a dry run shows beneath a change: what it waits for beyond `requires`.
fn implied(state: &spec::NodeState) -> BTreeMap<String, Vec<String>> {
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
    let hash = state.hash();
    let cached = Cached {
        revision: 0,
        hash,
        state,
    };
    run_and_print(cached, root, noop, state_dir, facts_dir, quiet, out).await
}

/// `ballast-agent run --once --noop`: the node's current desired state from
/// its controller (enrolled identity, mutual TLS), checked as the daemon
/// checks it, and a dry run of it. Nothing is applied, nothing cached as
/// desired, and nothing reported: the controller's record of a node is what
/// its daemon did (its status, applied revision and last run), and a dry
/// run did none of it; the operator who asked reads the answer here.
async fn dry_run_from_controller(
    cfg: &DaemonConfig,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let enrolled = client::Enrolled::load(&cfg.state_dir)?;
    let state_dir = read_only(cfg.state_dir.path().to_owned())?;
    let cached = daemon::fetch_desired(&enrolled, cfg.controller.as_deref()).await?;
    writeln!(
        out,
        "desired state of {}: revision {}",
        enrolled.config.name, cached.revision
    )?;
    run_and_print(
        cached,
        cfg.root.clone(),
        true,
        &state_dir,
        &cfg.facts_dir,
        false,
        out,
    )
    .await
}

/// One run of `cached` (a dry run with `noop`), printed as operators read
/// it, and its exit code.
async fn run_and_print(
    cached: Cached,
    root: Option<PathBuf>,
    noop: bool,
    state_dir: &StateDir,
    facts_dir: &Path,
    quiet: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let facts = facts_for(&cached.state, facts_dir);
    let implied = if noop {
        implied(&cached.state)
    } else {
        BTreeMap::new()
    };
    let report = daemon::reconcile(
        state_dir,
        Arc::new(Host::new(root)),
        Arc::new(cached),
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
    } else if noop && changed > 0 {
        ExitCode::from(NOOP_CHANGES)
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

    /// `ballast-agent apply ARGS` with `--root`, `--state-dir` and `--name n1`.
    async fn local(
        root: &Path,
        state: &Path,
        site: &Path,
        extra: &[&str],
    ) -> (anyhow::Result<ExitCode>, String) {
        let mut argv = vec![
            "ballast-agent",
            "apply",
            "--root",
            root.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--name",
            "n1",
            "-f",
            site.to_str().unwrap(),
        ];
        argv.extend(extra);
        let cli = Cli::try_parse_from(argv).unwrap();
        let mut out = Vec::new();
        let code = execute(cli.command, &mut out).await;
        (code, String::from_utf8(out).unwrap())
    }

    const TWO_FILES: &str = "roles:\n  r:\n    files: [{path: /a.conf, content: a}, {path: /b.conf, content: b}]\ngroups:\n  all: {roles: [r]}\n";
    const ONE_FILE: &str =
        "roles:\n  r:\n    files: [{path: /a.conf, content: a}]\ngroups:\n  all: {roles: [r]}\n";

    /// As `ballast diff` and Puppet's `--detailed-exitcodes`: 0 when nothing
    /// would change, 2 when something would, 1 when a resource would fail.
    #[tokio::test]
    async fn a_dry_run_exits_0_without_changes_2_with_changes_1_on_failure() {
        let root = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let site = root.path().join("site.yaml");
        std::fs::write(&site, ONE_FILE).unwrap();
        let (code, out) = local(root.path(), state.path(), &site, &["--noop"]).await;
        assert_eq!(code.unwrap(), ExitCode::from(NOOP_CHANGES), "{out}");
        let (code, out) = local(root.path(), state.path(), &site, &[]).await;
        assert_eq!(
            code.unwrap(),
            ExitCode::SUCCESS,
            "a real run stays 0: {out}"
        );
        let (code, out) = local(root.path(), state.path(), &site, &["--noop"]).await;
        assert_eq!(code.unwrap(), ExitCode::SUCCESS, "{out}");
        // A file where a directory must be: the dry run sees it fail.
        std::fs::write(
            &site,
            "roles:\n  r:\n    files: [{path: /a.conf/x, content: a}, {path: /c.conf, content: c}]\ngroups:\n  all: {roles: [r]}\n",
        )
        .unwrap();
        let (code, out) = local(root.path(), state.path(), &site, &["--noop"]).await;
        assert_eq!(code.unwrap(), ExitCode::FAILURE, "{out}");
        assert!(out.contains("failed file[/a.conf/x]"), "{out}");
    }

    /// Every file of `dir` with its content and modification time.
    fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>, std::time::SystemTime)> {
        let mut all: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let meta = e.metadata().unwrap();
                let bytes = if meta.is_file() {
                    std::fs::read(e.path()).unwrap()
                } else {
                    Vec::new()
                };
                (
                    e.file_name().to_string_lossy().into_owned(),
                    bytes,
                    meta.modified().unwrap(),
                )
            })
            .collect();
        all.sort();
        all
    }

    /// A dry run knows what the agent manages, so it shows what a run would
    /// remove; it reads the state dir and nothing more: no lock taken (a
    /// run holding it does not hold the dry run up), no file written or
    /// removed, no directory made where there was none.
    #[tokio::test]
    async fn a_dry_run_reads_the_state_dir_without_locking_or_writing() {
        let root = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let site = root.path().join("site.yaml");
        std::fs::write(&site, TWO_FILES).unwrap();
        let (code, out) = local(root.path(), state.path(), &site, &[]).await;
        assert_eq!(code.unwrap(), ExitCode::SUCCESS, "{out}");
        std::fs::write(&site, ONE_FILE).unwrap();
        let dir = StateDir::new(state.path());
        let _run = dir.lock(crate::state::Lock::Run).unwrap();
        let before = snapshot(state.path());
        let (code, out) = tokio::time::timeout(
            Duration::from_secs(20),
            local(root.path(), state.path(), &site, &["--noop"]),
        )
        .await
        .expect("a dry run does not wait for the run lock");
        assert_eq!(code.unwrap(), ExitCode::from(NOOP_CHANGES), "{out}");
        assert!(
            out.contains("would change file[/b.conf]: remove file")
                && out.contains("(no longer in desired state)"),
            "{out}"
        );
        assert_eq!(snapshot(state.path()), before);
        assert!(root.path().join("b.conf").exists());

        let fresh = state.path().join("never-made");
        let (code, out) = local(root.path(), &fresh, &site, &["--noop"]).await;
        assert_eq!(code.unwrap(), ExitCode::SUCCESS, "{out}");
        assert!(!fresh.exists(), "a dry run made {}", fresh.display());
    }

    /// A record of managed things that cannot be read would make a dry run
    /// show no removals that a real run (which can read it) would make.
    #[tokio::test]
    async fn a_dry_run_refuses_a_managed_record_it_cannot_read() {
        let root = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let site = root.path().join("site.yaml");
        std::fs::write(&site, ONE_FILE).unwrap();
        std::fs::create_dir(state.path().join("managed.json")).unwrap();
        let (code, out) = local(root.path(), state.path(), &site, &["--noop"]).await;
        let err = format!("{:#}", code.unwrap_err());
        assert!(
            err.contains("to show what a run would remove") && err.contains("managed.json"),
            "{err} {out}"
        );
    }
}
