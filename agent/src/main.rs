//! `ballast-agent`: the node agent. All of it lives in the library.
fn main() -> std::process::ExitCode {
    ballast_agent::cli::run()
}
