//! Restarting the local test servers under a test: whether this process may (root, the
//! server tools, servers on this machine), running the tools, restarting PostgreSQL's `main`
//! cluster, and a guard that brings PostgreSQL back however the test ends.
//!
//! Used by the test binaries that restart a server (they run alone: cargo runs test binaries
//! one after another).

use std::io::{Read, Seek};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs a command with its output in a temporary file (a daemon inheriting a pipe would keep
/// a reader waiting forever); `Err` carries the status and output.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
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

/// Whether `name` is an executable file in a directory of `PATH`.
pub fn in_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|dir| dir.join(name).is_file()))
}

/// The host of a database URL (`scheme://user:pass@host:port/db`).
pub fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port.split(':').next().unwrap_or(host_port)
}

/// Whether the `what` test server at `url` runs on this machine; `Err` says where it runs.
pub fn local_server(what: &str, url: &str) -> Result<(), String> {
    match url_host(url) {
        "127.0.0.1" | "localhost" => Ok(()),
        host => Err(format!(
            "the {what} test server ({host}) is not the local one"
        )),
    }
}

/// Polls `cond` every 100 ms until it holds (true) or `limit` passes (false).
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
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

/// The version of the local PostgreSQL `main` cluster, when this process may restart it:
/// root, `pg_ctlcluster`, `pg_isready` and every tool of `more_tools` in `PATH`, the
/// PostgreSQL test server on this machine, and exactly one `main` cluster. `Err` says why not.
pub fn postgres_restart_tools(more_tools: &[&str]) -> Result<String, String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("`id -u`: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not running as root".into());
    }
    for tool in ["pg_ctlcluster", "pg_isready"].iter().chain(more_tools) {
        if !in_path(tool) {
            return Err(format!("`{tool}` not found in PATH"));
        }
    }
    local_server("PostgreSQL", &crate::pg_url())?;
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

/// Whether the local PostgreSQL server answers.
pub fn pg_ready() -> bool {
    run("pg_isready", &["-h", "127.0.0.1", "-q", "-t", "2"]).is_ok()
}

/// Starts the local `main` cluster of `version` (fails while it is already running).
pub fn start_postgres(version: &str) -> Result<(), String> {
    run(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", version, "main", "start"],
    )
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

/// Brings PostgreSQL (the `main` cluster of this version) back, and waits until it answers,
/// however the test ends.
pub struct RestorePostgres(pub String);

impl Drop for RestorePostgres {
    fn drop(&mut self) {
        let ok = wait_for(Duration::from_secs(60), || {
            pg_ready() || {
                let _ = start_postgres(&self.0);
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
