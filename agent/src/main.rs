//! `ballast-agent`: the node agent. All of it lives in the library.
fn main() -> std::process::ExitCode {
    // systemd gives services a soft open-file limit of 1024; take the hard one.
    if let Err(e) = ballast_agent::host::raise_nofile_limit() {
        eprintln!("warning: {e:#}");
    }
    ballast_agent::cli::run()
}
