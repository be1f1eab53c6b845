//! The last server fault: the server restarts during a run. The in-flight call
//! returns an error promptly, nothing of it is committed, after_completion does not report
//! `Committed`, the pool recovers and later transactions commit; a load running through the
//! restart never leaves a transaction half-written.
//!
//! This binary restarts the shared test servers (PostgreSQL with `pg_ctlcluster`, MariaDB with
//! `mariadb-admin shutdown` + `start-stop-daemon`). cargo runs test binaries one after another,
//! so no other binary sees the restarts; inside this binary, everything runs in ONE test so the
//! two servers are never restarted under each other. A drop guard brings both servers back
//! (and waits until they answer) however the test ends, panics included.
//!
//! Needs root and the server tools on a machine whose test servers are local; otherwise skips
//! loudly, or fails under `TX_TEST_REQUIRE_SERVERS=1`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tx_tests::server_control::{
    local_server, pg_ready, postgres_restart_tools, restart_postgres, run, start_postgres, wait_for,
};

use tokio::sync::{Barrier, Notify};
use tx_sqlx::TxError;
use tx_tests::reliability::{
    self, AppError, Completions, MySqlBackend, PgBackend, Server, error_chain, record_completion,
};

const MARIADBD: &str = "/usr/sbin/mariadbd";
/// Pool size and acquire timeout of the pools under test.
const POOL: u32 = 4;
const ACQUIRE: Duration = Duration::from_secs(5);
/// The in-flight call must end within this long of the moment it can learn of the restart.
const PROMPT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Server control (blocking; run through spawn_blocking, or from the drop guard)
// ---------------------------------------------------------------------------------------------

/// The PostgreSQL version whose `main` cluster serves the tests, when this process can
/// restart both servers; `Err` says why not.
fn restart_tools() -> Result<String, String> {
    let version = postgres_restart_tools(&["mariadb-admin", "mariadb", "start-stop-daemon"])?;
    if !Path::new(MARIADBD).is_file() {
        return Err(format!("{MARIADBD} not found"));
    }
    local_server("MariaDB", &tx_tests::mysql_url())?;
    Ok(version)
}

fn mariadb_ready() -> bool {
    run(
        "mariadb",
        &[
            "-h",
            "127.0.0.1",
            "-uroot",
            "--connect-timeout=2",
            "-e",
            "select 1",
        ],
    )
    .is_ok()
}

fn mariadbd_running() -> bool {
    // Exit status 0: a process runs that executable (zombies have no executable).
    run("start-stop-daemon", &["--status", "--exec", MARIADBD]).is_ok()
}

fn start_mariadb() -> Result<(), String> {
    run(
        "start-stop-daemon",
        &["--start", "--oknodo", "--background", "--exec", MARIADBD],
    )
}

fn restart_mariadb() -> Result<(), String> {
    if let Err(e) = run("mariadb-admin", &["-uroot", "shutdown"]) {
        eprintln!("mariadb-admin shutdown failed ({e}); stopping mariadbd with a signal");
        run(
            "start-stop-daemon",
            &[
                "--stop",
                "--oknodo",
                "--retry",
                "TERM/20/KILL/5",
                "--exec",
                MARIADBD,
            ],
        )?;
    }
    if !wait_for(Duration::from_secs(30), || !mariadbd_running()) {
        return Err("mariadbd still runs 30 s after its shutdown".into());
    }
    start_mariadb()?;
    if !wait_for(Duration::from_secs(30), mariadb_ready) {
        return Err("MariaDB did not answer within 30 s of its start".into());
    }
    Ok(())
}

/// Starts whichever server does not answer, until both do (or `limit` passes).
fn ensure_servers(version: &str, limit: Duration) -> Result<(), String> {
    let mut last = String::new();
    let ok = wait_for(limit, || {
        let pg = pg_ready();
        if !pg && let Err(e) = start_postgres(version) {
            // "already running" while it starts or stops: try again.
            last = e;
        }
        let my = mariadb_ready();
        if !my && let Err(e) = start_mariadb() {
            last = e;
        }
        pg && my
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the servers are not both back after {limit:?} (PostgreSQL ready: {}, MariaDB ready: {}); last error: {last}",
            pg_ready(),
            mariadb_ready()
        ))
    }
}

/// Brings both servers back, and waits until they answer, however the test ends.
struct RestoreServers {
    pg_version: String,
}

impl Drop for RestoreServers {
    fn drop(&mut self) {
        if let Err(e) = ensure_servers(&self.pg_version, Duration::from_secs(60)) {
            if std::thread::panicking() {
                eprintln!("!!!!! {e}");
            } else {
                panic!("{e}");
            }
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

// ---------------------------------------------------------------------------------------------
// The service whose transaction is in flight when the server restarts
// ---------------------------------------------------------------------------------------------

/// Where the in-flight transaction waits while the server restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Inside a statement (`pg_sleep` / `SLEEP`) running on the server.
    OnServer,
    /// In the client, idle in transaction; it resumes (and writes again) once the server is back.
    InClient,
}

struct Orders<B: Server> {
    db: B::Pool,
    b: B,
    table: String,
    completions: Completions,
}

impl<B: Server> Orders<B> {
    /// Writes a row, says so, waits, writes again.
    #[tx_sqlx::transactional(manager = self.db)]
    async fn write_then_wait(
        &self,
        wait: Wait,
        written: &Notify,
        resume: &Notify,
    ) -> Result<(), AppError> {
        record_completion(&self.completions)?;
        self.b.insert(&self.table, "doomed").await?;
        written.notify_one();
        match wait {
            Wait::OnServer => self.b.sleep(20.0).await?,
            Wait::InClient => resume.notified().await,
        }
        self.b.insert(&self.table, "after-wait").await?;
        Ok(())
    }
}

/// How a load transaction ended, as its caller knows it.
#[derive(Debug)]
enum LoadEnd {
    Committed,
    Failed(String),
    Unknown,
}

/// Transactions of two rows each, one after another until `stop`; every call bounded.
async fn load<B: Server>(
    b: B,
    table: String,
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicUsize>,
) -> Vec<(u32, LoadEnd)> {
    let mut ends = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let template = b.template().name("restart.load");
        let call = template.execute(|_| async {
            b.insert(&table, &format!("L{i}a")).await?;
            b.insert(&table, &format!("L{i}b")).await?;
            Ok::<_, AppError>(())
        });
        let end = match tokio::time::timeout(Duration::from_secs(10), call).await {
            Err(_) => panic!("{}: load transaction {i} hangs", b.name()),
            Ok(Ok(())) => {
                commits.fetch_add(1, Ordering::SeqCst);
                LoadEnd::Committed
            }
            Ok(Err(AppError::Tx(TxError::CommitOutcomeUnknown(_)))) => LoadEnd::Unknown,
            Ok(Err(e)) => LoadEnd::Failed(error_chain(&e)),
        };
        ends.push((i, end));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ends
}

/// Restarts the server while a `#[transactional]` call has written a row and waits `wait`;
/// returns every violation.
async fn restart_case<B, R>(b: &B, wait: Wait, restart: R) -> Vec<String>
where
    B: Server,
    R: FnOnce() -> Result<(), String> + Send + 'static,
{
    let case = format!(
        "{}: server restarted, transaction waiting {wait:?}",
        b.name()
    );
    let mut violations = Vec::new();
    let table = b.create_table("restart").await;
    let load_table = b.create_table("restart_load").await;

    // Fill the pool: every connection is open (and goes stale) when the server restarts.
    let barrier = Arc::new(Barrier::new(POOL as usize));
    let warm = (0..POOL).map(|_| {
        let (b, barrier) = (b.clone(), barrier.clone());
        async move {
            b.template()
                .execute(|_| async {
                    b.session_id().await?;
                    barrier.wait().await;
                    Ok::<_, AppError>(())
                })
                .await
        }
    });
    let warmed = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(warm),
    )
    .await
    .unwrap_or_else(|_| panic!("{case}: warming the pool hangs"));
    for r in warmed {
        r.unwrap_or_else(|e| panic!("{case}: warming the pool failed: {e}"));
    }
    assert_eq!(
        reliability::settle(b).await,
        (POOL, POOL as usize),
        "{case}: pool not full and idle"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicUsize::new(0));
    let load_task = tokio::spawn(load(
        b.clone(),
        load_table.clone(),
        stop.clone(),
        commits.clone(),
    ));

    let orders = Orders {
        db: b.manager().clone(),
        b: b.clone(),
        table: table.clone(),
        completions: Completions::default(),
    };
    let (written, resume) = (Notify::new(), Notify::new());
    let call = async {
        let r = orders.write_then_wait(wait, &written, &resume).await;
        (r, Instant::now())
    };
    let driver = async {
        written.notified().await;
        // Let the statement reach the server.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let began = Instant::now();
        let restarted = blocking(restart).await;
        let back = Instant::now();
        let commits_before = commits.load(Ordering::SeqCst);
        resume.notify_one();
        (began, back, restarted, commits_before)
    };
    let ((r, returned), (began, back, restarted, commits_before)) = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join(call, driver),
    )
    .await
    .unwrap_or_else(|_| panic!("{case}: the call or the restart hangs"));
    if let Err(e) = restarted {
        // The guard brings the server back; nothing below would mean anything.
        stop.store(true, Ordering::SeqCst);
        panic!("{case}: restarting the server failed: {e}");
    }
    eprintln!("{case}: restart took {:?}", back - began);

    // The in-flight call failed, promptly.
    let (from, what) = match wait {
        Wait::OnServer => (began, "the restart began"),
        Wait::InClient => (back, "the server was back and the call resumed"),
    };
    let took = returned.saturating_duration_since(from);
    if returned < from || took > PROMPT {
        violations.push(format!(
            "{case}: the call returned {took:?} after {what} (limit {PROMPT:?}; before it: {})",
            returned < from
        ));
    }
    let unknown = matches!(&r, Err(AppError::Tx(TxError::CommitOutcomeUnknown(_))));
    match &r {
        Ok(()) => violations.push(format!(
            "{case}: the call returned Ok although the server restarted under it"
        )),
        Err(e) => eprintln!(
            "{case}: the call failed after {took:?} with: {}",
            error_chain(e)
        ),
    }
    // Nothing of it committed (read from a fresh connection).
    let rows = b.tags(&table).await;
    if !rows.is_empty() {
        violations.push(format!(
            "{case}: rows of the failed transaction committed: {rows:?}"
        ));
    }
    // after_completion agrees, and never says Committed.
    if let Err(e) = reliability::check_failed_completion(&orders.completions, unknown).await {
        violations.push(format!("{case}: {e}"));
    }

    // The load commits again on the recovered server; then check it was all-or-nothing.
    let resumed = reliability::eventually(Duration::from_secs(10), || async {
        commits.load(Ordering::SeqCst) > commits_before
    })
    .await;
    if !resumed {
        violations.push(format!(
            "{case}: the load committed nothing within 10 s of the server being back"
        ));
    }
    stop.store(true, Ordering::SeqCst);
    let ends = tokio::time::timeout(Duration::from_secs(20), load_task)
        .await
        .unwrap_or_else(|_| panic!("{case}: the load task hangs"))
        .unwrap_or_else(|e| panic!("{case}: the load task failed: {e}"));
    let load_rows = b.tags(&load_table).await;
    let (mut committed, mut failed, mut unknowns) = (0, 0, 0);
    for (i, end) in &ends {
        let a = load_rows.contains(&format!("L{i}a"));
        let bb = load_rows.contains(&format!("L{i}b"));
        let bad = match end {
            LoadEnd::Committed => {
                committed += 1;
                !(a && bb)
            }
            LoadEnd::Failed(_) => {
                failed += 1;
                a || bb
            }
            LoadEnd::Unknown => {
                unknowns += 1;
                a != bb
            }
        };
        if bad {
            violations.push(format!(
                "{case}: load transaction {i} ended {end:?} but its rows in the table are \
                 (a: {a}, b: {bb})"
            ));
        }
    }
    if load_rows.len() < 2 * committed || load_rows.len() > 2 * (committed + unknowns) {
        violations.push(format!(
            "{case}: the load table holds {} rows for {committed} committed and {unknowns} \
             outcome-unknown transactions",
            load_rows.len()
        ));
    }
    if let Some((i, LoadEnd::Failed(e))) =
        ends.iter().find(|(_, e)| matches!(e, LoadEnd::Failed(_)))
    {
        eprintln!("{case}: e.g. load transaction {i} failed with: {e}");
    }
    eprintln!(
        "{case}: load through the restart: {} transactions, {committed} committed, {failed} failed, \
         {unknowns} outcome unknown",
        ends.len()
    );

    // The pool recovers: later transactions commit, concurrently and one after another.
    let later = |k: usize| {
        let (b, t) = (b.clone(), table.clone());
        async move {
            let template = b.template().name("restart.later");
            let call = template.execute(|_| async {
                b.insert(&t, "later").await?;
                Ok::<_, AppError>(())
            });
            match tokio::time::timeout(Duration::from_secs(10), call).await {
                Err(_) => Some(format!("later transaction {k} hangs")),
                Ok(Err(e)) => Some(format!("later transaction {k} failed: {}", error_chain(&e))),
                Ok(Ok(())) => None,
            }
        }
    };
    let concurrent = futures_util::future::join_all((0..POOL as usize).map(later)).await;
    violations.extend(
        concurrent
            .into_iter()
            .flatten()
            .map(|v| format!("{case}: {v}")),
    );
    for k in 0..3 {
        if let Some(v) = later(POOL as usize + k).await {
            violations.push(format!("{case}: {v}"));
        }
    }
    let rows = b.tags(&table).await;
    if rows != vec!["later".to_owned(); POOL as usize + 3] {
        violations.push(format!("{case}: after recovery the table holds {rows:?}"));
    }
    let open = reliability::no_open_transactions(b).await;
    let (size, idle) = reliability::settle(b).await;
    if open != 0 || size as usize != idle || size > POOL {
        violations.push(format!(
            "{case}: left {open} open transaction(s), pool size {size} idle {idle}"
        ));
    }
    if let Err(e) = b.check_clean().await {
        violations.push(format!("{case}: {e}"));
    }
    b.drop_table(&table).await;
    b.drop_table(&load_table).await;
    violations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_during_a_run() {
    let pg_version = match restart_tools() {
        Ok(v) => v,
        Err(why) => {
            if tx_tests::servers_required() {
                panic!(
                    "restarting the test servers is required (TX_TEST_REQUIRE_SERVERS=1) but impossible: {why}"
                );
            }
            eprintln!(
                "\n!!!!! SKIPPED: cannot restart the test servers ({why}); set TX_TEST_REQUIRE_SERVERS=1 to make this a failure !!!!!\n"
            );
            return;
        }
    };
    // Both servers must be up before anything is restarted (skip policy of tx_tests).
    let Some(pg) = PgBackend::connect(POOL, ACQUIRE, "restart").await else {
        return;
    };
    let Some(my) = MySqlBackend::connect(POOL, ACQUIRE).await else {
        return;
    };
    let guard = RestoreServers {
        pg_version: pg_version.clone(),
    };
    let started = Instant::now();
    let mut violations = Vec::new();
    // One server at a time, never both restarting at once.
    for wait in [Wait::OnServer, Wait::InClient] {
        let v = pg_version.clone();
        violations.extend(restart_case(&pg, wait, move || restart_postgres(&v)).await);
    }
    for wait in [Wait::OnServer, Wait::InClient] {
        violations.extend(restart_case(&my, wait, restart_mariadb).await);
    }
    pg.db.pool().close().await;
    my.db.pool().close().await;
    // Both servers answer at the end (the guard would also bring them back on a panic).
    let v = pg_version.clone();
    if let Err(e) = blocking(move || ensure_servers(&v, Duration::from_secs(60))).await {
        violations.push(e);
    }
    drop(guard);
    eprintln!("server restarts: {:?} in all", started.elapsed());
    assert!(
        violations.is_empty(),
        "server restart: {} violation(s):\n  {}",
        violations.len(),
        violations.join("\n  ")
    );
}
