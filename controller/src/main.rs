//! `ballast`: the controller and operator CLI. All of it lives in the library.
fn main() -> std::process::ExitCode {
    ballast_controller::cli::run()
}
