//! The CLI as a whole: help text on every argument, quiet ends on closed
//! pipes, connection errors that say what to try, logs without colour in files.

use super::*;
use clap::CommandFactory;

/// Every argument and subcommand of `cmd`, recursively, that has no help text.
pub fn args_without_help(cmd: &clap::Command) -> Vec<String> {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            if a.get_help().is_none() && a.get_long_help().is_none() {
                missing.push(format!("{path} <{}>", a.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            let sub_path = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(sub_path.clone());
            }
            walk(sub, &sub_path, missing);
        }
    }
    let mut cmd = cmd.clone();
    cmd.build();
    let mut missing = Vec::new();
    walk(&cmd, cmd.get_name(), &mut missing);
    missing
}

#[test]
fn every_flag_and_argument_has_help_text() {
    let missing = args_without_help(&Cli::command());
    assert!(missing.is_empty(), "without help text: {missing:#?}");
}

#[test]
fn every_printing_command_takes_one_output_flag() {
    let cmd = Cli::command();
    let mut with = Vec::new();
    for path in [
        "apply",
        "diff",
        "history",
        "rollback",
        "nodes",
        "health",
        "token create",
        "node show",
        "ca fingerprint",
        "admin credentials",
    ] {
        let mut c = &cmd;
        for part in path.split(' ') {
            c = c.find_subcommand(part).expect(path);
        }
        let arg = c
            .get_arguments()
            .find(|a| a.get_id() == "output")
            .unwrap_or_else(|| panic!("{path} has no -o"));
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_owned())
            .collect();
        assert_eq!(values, ["table", "json", "yaml"], "{path}");
        with.push(path);
    }
    assert_eq!(with.len(), 10);
}

/// A data dir with a CA and admin credentials, as `ballast serve` leaves it.
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::server::pki_dir(dir.path());
    std::fs::create_dir_all(&pki).unwrap();
    let ca = crate::ca::Ca::load_or_create(&pki).unwrap();
    ca.ensure_admin_cert(&pki).unwrap();
    dir
}

fn parse(args: &[&str]) -> Command {
    Cli::try_parse_from(std::iter::once("ballast").chain(args.iter().copied()))
        .unwrap()
        .command
}

#[tokio::test]
async fn a_closed_output_pipe_ends_quietly() {
    let dir = data_dir();
    let data = dir.path().to_str().unwrap();
    for format in ["table", "json", "yaml"] {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let mut pipe = std::fs::File::from(write);
        let cmd = parse(&["ca", "fingerprint", "--data-dir", data, "-o", format]);
        let result = execute(cmd, &mut pipe).await;
        assert!(result.is_err(), "writing to a closed pipe fails");
        let mut stderr = Vec::new();
        let code = conclude(result, &mut stderr);
        assert_eq!(code, ExitCode::from(BROKEN_PIPE_EXIT));
        assert_eq!(String::from_utf8(stderr).unwrap(), "", "nothing on stderr");
    }
    // Other errors still say what went wrong.
    let mut stderr = Vec::new();
    let code = conclude(Err(anyhow::anyhow!("boom")), &mut stderr);
    assert_eq!(code, ExitCode::FAILURE);
    assert_eq!(String::from_utf8(stderr).unwrap(), "error: boom\n");
}

#[tokio::test]
async fn a_refused_connection_names_the_address_and_the_fix() {
    let dir = data_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let cmd = parse(&[
        "nodes",
        "--controller",
        &addr,
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let err = execute(cmd, &mut Vec::new()).await.expect_err("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains(&addr)
            && text.contains("connection refused")
            && text.contains("ballast serve")
            && text.contains("--controller"),
        "{text}"
    );
    assert!(!text.contains("tcp connect error"), "{text}");
}
