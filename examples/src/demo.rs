//! What the demo binaries (`cargo run --example shop`, `--example observe`) share: their log
//! set-up and the temporary directory their SQLite files live in.

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

/// Logs to stderr what `RUST_LOG` asks for (`warn` when unset), without times or targets:
/// the demos print their results on stdout.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_target(false)
        .without_time()
        .init();
}

/// A new temporary directory, removed when dropped.
///
/// # Errors
///
/// The exit code of a failed demo, once the failure is told on stderr.
pub fn temp_dir() -> Result<tempfile::TempDir, ExitCode> {
    tempfile::tempdir().map_err(|e| {
        eprintln!("cannot create a temporary directory: {e}");
        ExitCode::FAILURE
    })
}
