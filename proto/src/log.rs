//! The one log set-up of both binaries (`ballast`, `ballast-agent`), behind
//! the `log` feature so the wire crate itself pulls no log machinery.
//!
//! Invariant: colour only on a terminal with `NO_COLOR` unset, so the journal
//! or a log file never carries escapes.

use std::io::{IsTerminal, Write};

/// The level filter: `BALLAST_LOG` if it parses, else `default` (`info`, `warn`).
pub fn filter(default: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("BALLAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
}

/// The log subscriber: `filter` on `stream`, coloured only when `stream` is a
/// terminal and `NO_COLOR` is unset.
pub fn subscriber<W>(
    filter: tracing_subscriber::EnvFilter,
    stream: W,
) -> impl tracing::Subscriber + Send + Sync
where
    W: Write + IsTerminal + Send + 'static,
{
    let ansi = stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::sync::Mutex::new(stream))
        .finish()
}

/// Logs to standard error at [`filter`]`(default)` for the whole process.
/// A second call (tests driving `run` twice) keeps the first subscriber.
pub fn init(default: &str) {
    let _ = tracing::subscriber::set_global_default(subscriber(filter(default), std::io::stderr()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_to_a_file_carry_no_colour() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let sub = subscriber(
            tracing_subscriber::EnvFilter::new("info"),
            file.reopen().unwrap(),
        );
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(node = "web-1", count = 3, "something happened");
        });
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(text.contains("something happened"), "{text:?}");
        assert!(
            text.contains("node=\"web-1\"") || text.contains("node=web-1"),
            "{text:?}"
        );
        assert!(
            !text.contains('\x1b'),
            "no ANSI escapes in a file: {text:?}"
        );
    }
}
