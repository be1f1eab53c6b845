//! Restarting the local PostgreSQL server under a test: whether this process may (root, the
//! server tools, a local `main` cluster), the restart itself, and a guard that brings the
//! server back however the test ends.

use std::io::{Read, Seek};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs a command with its output in a temporary file (a daemon inheriting a pipe would keep
/// a reader waiting forever); `Err` carries the status and output.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let mut out = tempfile::tempfile().map_err(|e| format!("temp file: {e}"))?;
    let err = out.try_clone().map_err(|e| format!("temp file: {e}"))?;
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().map_err(|e| e.to_string())?))
        .stderr(Stdio::from(err))
        .status()
        .map_err(|e| format!("{program}: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let mut text = String::new();
    let _ = out.rewind();
    let _ = out.read_to_string(&mut text);
    Err(format!(
        "`{program} {}` failed ({status}): {}",
        args.join(" "),
        text.trim()
    ))
}

/// The version of the local `main` cluster, when this process may restart it.
pub fn restart_tools() -> Result<String, String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("`id -u`: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not running as root".into());
    }
    for tool in ["pg_ctlcluster", "pg_isready"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            return Err(format!("`{tool}` not found in PATH"));
        }
    }
    let url = super::pg_url();
    if !url.contains("@127.0.0.1") && !url.contains("@localhost") {
        return Err(format!(
            "the PostgreSQL test server ({url}) is not the local one"
        ));
    }
    let versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .map_err(|e| format!("/etc/postgresql: {e}"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("main").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match versions.as_slice() {
        [v] => Ok(v.clone()),
        other => Err(format!(
            "expected one PostgreSQL `main` cluster, found {other:?}"
        )),
    }
}

/// Whether the local server answers.
pub fn pg_ready() -> bool {
    run("pg_isready", &["-h", "127.0.0.1", "-q", "-t", "2"]).is_ok()
}

/// Polls `cond` every 100 ms until it holds (true) or `limit` passes (false).
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Restarts the local `main` cluster of `version` (fast shutdown) and waits until it answers.
pub fn restart_postgres(version: &str) -> Result<(), String> {
    run(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            version,
            "main",
            "restart",
            "-m",
            "fast",
        ],
    )?;
    if !wait_for(Duration::from_secs(30), pg_ready) {
        return Err("PostgreSQL did not answer within 30 s of its restart".into());
    }
    Ok(())
}

/// Brings PostgreSQL back, and waits until it answers, however the test ends.
pub struct RestorePostgres(pub String);

impl Drop for RestorePostgres {
    fn drop(&mut self) {
        let version = self.0.clone();
        let ok = wait_for(Duration::from_secs(60), || {
            pg_ready() || {
                let _ = run(
                    "pg_ctlcluster",
                    &["--skip-systemctl-redirect", &version, "main", "start"],
                );
                false
            }
        });
        if !ok {
            let e = "PostgreSQL is not back 60 s after the test";
            if std::thread::panicking() {
                eprintln!("!!!!! {e}");
            } else {
                panic!("{e}");
            }
        }
    }
}
