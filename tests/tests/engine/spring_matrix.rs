//! The Spring matrix differential test.
//!
//! Drives every line of `spring-matrix/matrix.jsonl`, a copy of the product's
//! `shared/spring-matrix/` (Spring's observed behaviour for outer scope x inner propagation x
//! inner outcome x outer outcome, see that directory's README), through `TransactionTemplate` and the transaction-aware executor `&TxPool`, and
//! compares the four observed fields (`outcome`, `rows`, `hooks`, `inner_saw`) line by line.
//! Every mismatch is collected; the test fails at the end listing, per scenario id, each field
//! that differs (expected vs actual).
//!
//! One test per backend:
//! - PostgreSQL: all 224 lines must match.
//! - MariaDB/MySQL (`MySqlTxPool`, InnoDB): all 224 lines must match.
//! - SQLite (temp-file database in WAL mode): SQLite has one write lock per database. See
//!   [`sqlite_would_block`] for the lines where the scenario itself needs a second connection
//!   to write while the first one holds that lock; there the backend must fail fast with
//!   `TxError::WouldBlock` and nothing may be half-written. Every other line must match.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sqlx::AssertSqlSafe;
use tx_sqlx::{
    MySqlTxPool, PgTxPool, Propagation, SqliteTxPool, TransactionStatus, TransactionTemplate,
    TxError,
};

use crate::recorder::{Log, Recorder, push};

/// The matrix, vendored from the product's `shared/spring-matrix/` so that a clone of this
/// repository alone runs it.
const MATRIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/spring-matrix/matrix.jsonl");

/// The product's copy, next to the repository's checkout when there is one: the vendored
/// file must not drift from it.
const SHARED_MATRIX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/spring-matrix/matrix.jsonl"
);

/// A whole scenario that takes longer than this is recorded as a mismatch (a hang, e.g. a
/// lock wait on a leaked transaction) instead of hanging the test.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(20);

/// One line of the matrix.
#[derive(Debug, Clone, Deserialize)]
struct Line {
    id: String,
    outcome: String,
    rows: Vec<String>,
    hooks: Vec<String>,
    inner_saw: String,
    #[serde(default)]
    #[allow(dead_code)]
    differs_from_spring: Option<String>,
}

fn load_matrix() -> Vec<Line> {
    let text = std::fs::read_to_string(MATRIX)
        .unwrap_or_else(|e| panic!("cannot read the Spring matrix at {MATRIX}: {e}"));
    let lines: Vec<Line> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad matrix line {l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 224, "the matrix has 224 scenarios");
    if let Ok(shared) = std::fs::read_to_string(SHARED_MATRIX) {
        assert!(
            shared == text,
            "tests/spring-matrix/matrix.jsonl differs from {SHARED_MATRIX}: copy the shared one over"
        );
    }
    lines
}

// ---------------------------------------------------------------------------------------------
// The scenario's vocabulary
// ---------------------------------------------------------------------------------------------

/// The scenario's error type.
#[derive(Debug)]
enum E {
    /// The inner body's own failure (`err_propagate`, `err_swallow`).
    Inner,
    /// The outer body's own failure (`OUTER_ACT = err`).
    Outer,
    /// Whatever the engine or the database reported.
    Tx(TxError),
}

impl From<TxError> for E {
    fn from(e: TxError) -> Self {
        E::Tx(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InnerAct {
    Ok,
    ErrPropagate,
    ErrSwallow,
    RollbackOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OuterAct {
    Ok,
    Err,
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    /// `None`: plain code, no template at all.
    outer: Option<Propagation>,
    inner: Propagation,
    inner_act: InnerAct,
    outer_act: OuterAct,
}

/// The propagation Spring names `name`.
pub(super) fn propagation(name: &str) -> Propagation {
    match name {
        "REQUIRED" => Propagation::Required,
        "REQUIRES_NEW" => Propagation::RequiresNew,
        "NESTED" => Propagation::Nested,
        "SUPPORTS" => Propagation::Supports,
        "NOT_SUPPORTED" => Propagation::NotSupported,
        "MANDATORY" => Propagation::Mandatory,
        "NEVER" => Propagation::Never,
        other => panic!("unknown propagation {other:?}"),
    }
}

impl Scenario {
    fn parse(id: &str) -> Scenario {
        let parts: Vec<&str> = id.split('/').collect();
        let [outer, inner, inner_act, outer_act] = parts[..] else {
            panic!("bad scenario id {id:?}");
        };
        Scenario {
            outer: (outer != "NONE").then(|| propagation(outer)),
            inner: propagation(inner),
            inner_act: match inner_act {
                "ok" => InnerAct::Ok,
                "err_propagate" => InnerAct::ErrPropagate,
                "err_swallow" => InnerAct::ErrSwallow,
                "rollback_only" => InnerAct::RollbackOnly,
                other => panic!("unknown inner action {other:?}"),
            },
            outer_act: match outer_act {
                "ok" => OuterAct::Ok,
                "err" => OuterAct::Err,
                other => panic!("unknown outer action {other:?}"),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hooks
// ---------------------------------------------------------------------------------------------

/// "register hook LABEL": outside every scope the registration fails with `NoTransaction`
/// and the scenario records `LABEL:no_scope`.
fn register_hook(log: &Log, label: &'static str) {
    match tx_sqlx::register_synchronization(Recorder::new(label, log)) {
        Ok(()) => {}
        Err(TxError::NoTransaction) => push(log, format!("{label}:no_scope")),
        Err(e) => push(log, format!("{label}:register_failed({e:?})")),
    }
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// The few operations a scenario needs, on one concrete `TxPool`. The statements in a scope go
/// through `&TxPool` (`sqlx::query(..).execute(&db)`); `fresh_tags` reads through the plain
/// sqlx pool, i.e. from a pooled connection outside every transaction.
trait Db: Clone {
    fn template(&self, propagation: Propagation) -> TransactionTemplate;
    async fn exec(&self, sql: String) -> Result<(), TxError>;
    async fn count(&self, sql: String) -> Result<i64, TxError>;
    async fn fresh_exec(&self, sql: String) -> Result<(), sqlx::Error>;
    async fn fresh_tags(&self, sql: String) -> Result<Vec<String>, sqlx::Error>;
}

macro_rules! impl_db {
    ($pool:ty) => {
        impl Db for $pool {
            fn template(&self, propagation: Propagation) -> TransactionTemplate {
                TransactionTemplate::new(self.clone()).propagation(propagation)
            }

            async fn exec(&self, sql: String) -> Result<(), TxError> {
                sqlx::query(AssertSqlSafe(sql)).execute(self).await?;
                Ok(())
            }

            async fn count(&self, sql: String) -> Result<i64, TxError> {
                Ok(sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
                    .fetch_one(self)
                    .await?)
            }

            async fn fresh_exec(&self, sql: String) -> Result<(), sqlx::Error> {
                sqlx::query(AssertSqlSafe(sql)).execute(self.pool()).await?;
                Ok(())
            }

            async fn fresh_tags(&self, sql: String) -> Result<Vec<String>, sqlx::Error> {
                sqlx::query_scalar::<_, String>(AssertSqlSafe(sql))
                    .fetch_all(self.pool())
                    .await
            }
        }
    };
}

impl_db!(PgTxPool);
impl_db!(MySqlTxPool);
impl_db!(SqliteTxPool);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Postgres,
    MySql,
    Sqlite,
}

// ---------------------------------------------------------------------------------------------
// Running one scenario
// ---------------------------------------------------------------------------------------------

/// What one scenario did.
#[derive(Debug)]
struct Observed {
    outcome: String,
    rows: Vec<String>,
    hooks: Vec<String>,
    inner_saw: String,
    elapsed: Duration,
}

fn insert(table: &str, tag: &str) -> String {
    format!("INSERT INTO {table} (tag) VALUES ('{tag}')")
}

/// The inner scope's body, as the README describes it.
async fn inner_body<D: Db>(
    db: &D,
    status: TransactionStatus,
    table: &str,
    act: InnerAct,
    log: &Log,
    saw: &Mutex<String>,
) -> Result<(), E> {
    let active = tx_sqlx::is_actual_transaction_active();
    let new = status.is_new_transaction();
    let savepoint = status.has_savepoint();
    let sees = db
        .count(format!(
            "SELECT count(*) FROM {table} WHERE tag = 'outer-before'"
        ))
        .await;
    // A failing probe is recorded as ERR (it never is in a matching line) and propagated.
    let sees_outer = match &sees {
        Ok(n) => (*n > 0).to_string(),
        Err(_) => "ERR".to_owned(),
    };
    *saw.lock().unwrap() =
        format!("active={active},new={new},savepoint={savepoint},sees_outer={sees_outer}");
    sees?;
    db.exec(insert(table, "inner")).await?;
    register_hook(log, "inner");
    match act {
        InnerAct::Ok => Ok(()),
        InnerAct::ErrPropagate | InnerAct::ErrSwallow => Err(E::Inner),
        InnerAct::RollbackOnly => {
            status.set_rollback_only();
            Ok(())
        }
    }
}

/// The outer scope's body (also run as plain code for `NONE`).
async fn outer_body<D: Db>(
    db: &D,
    sc: Scenario,
    table: &str,
    log: &Log,
    saw: &Mutex<String>,
) -> Result<(), E> {
    db.exec(insert(table, "outer-before")).await?;
    register_hook(log, "outer");
    let result = db
        .template(sc.inner)
        .execute(move |status| inner_body(db, status, table, sc.inner_act, log, saw))
        .await;
    match result {
        Err(E::Inner) if sc.inner_act == InnerAct::ErrSwallow => {}
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    db.exec(insert(table, "outer-after")).await?;
    match sc.outer_act {
        OuterAct::Err => Err(E::Outer),
        OuterAct::Ok => Ok(()),
    }
}

/// The innermost `TxError` in `e`'s source chain that is not a plain driver wrapper, so a
/// backend error the executor had to wrap (e.g. into a `sqlx::Error`) is still recognised.
fn innermost_tx_error(e: &TxError) -> &TxError {
    let mut found = e;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(inner) = s.downcast_ref::<TxError>() {
            found = inner;
        }
        // `io::Error::source()` skips the custom error it wraps: look inside.
        if let Some(inner) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|e| e.downcast_ref::<TxError>())
        {
            found = inner;
        }
        source = s.source();
    }
    found
}

fn outcome_name(r: &Result<(), E>) -> String {
    match r {
        Ok(()) => "ok".to_owned(),
        Err(E::Inner) => "InnerError".to_owned(),
        Err(E::Outer) => "OuterError".to_owned(),
        Err(E::Tx(TxError::UnexpectedRollback)) => "UnexpectedRollback".to_owned(),
        Err(E::Tx(TxError::NoTransaction)) => "NoTransaction".to_owned(),
        Err(E::Tx(TxError::ExistingTransaction)) => "ExistingTransaction".to_owned(),
        // Explanatory: it names the cause (SQLite's write lock) and a remedy (Nested).
        Err(E::Tx(TxError::WouldBlock { message }))
            if message.contains("write lock") && message.contains("Nested") =>
        {
            "WouldBlock".to_owned()
        }
        Err(E::Tx(TxError::WouldBlock { message })) => {
            format!("WouldBlock without cause and remedy: {message:?}")
        }
        Err(E::Tx(e)) => match innermost_tx_error(e) {
            // The backend's WouldBlock, but not as the TxError the body got from `?`.
            TxError::WouldBlock { .. } => format!("WouldBlock wrapped in another TxError: {e:?}"),
            _ => format!("Tx({e:?}: {e})"),
        },
    }
}

async fn reset_table<D: Db>(db: &D, backend: Backend, table: &str) {
    let sql = match backend {
        // TRUNCATE (new relation files) costs ~15 ms a time; DELETE plus a sequence restart
        // empties the table and restarts its identity just the same, in well under 1 ms.
        Backend::Postgres => {
            db.fresh_exec(format!("DELETE FROM {table}"))
                .await
                .expect("empty the scenario table");
            format!("ALTER SEQUENCE {table}_id_seq RESTART")
        }
        // MySQL's TRUNCATE is DDL (drops and recreates the InnoDB tablespace, tens of ms);
        // DELETE is enough: `rows` is read `ORDER BY id` and ids only grow, so the order of
        // the tags is the insertion order either way.
        Backend::MySql => format!("DELETE FROM {table}"),
        // `INTEGER PRIMARY KEY` without AUTOINCREMENT: an emptied table restarts at 1.
        Backend::Sqlite => format!("DELETE FROM {table}"),
    };
    db.fresh_exec(sql).await.expect("empty the scenario table");
}

async fn run_scenario<D: Db>(db: &D, backend: Backend, table: &str, line: &Line) -> Observed {
    let sc = Scenario::parse(&line.id);
    reset_table(db, backend, table).await;
    let log: Log = Arc::default();
    let saw = Mutex::new("not_run".to_owned());

    let (log_ref, saw_ref) = (&log, &saw);
    let started = Instant::now();
    let run = async {
        match sc.outer {
            None => outer_body(db, sc, table, log_ref, saw_ref).await,
            Some(p) => {
                db.template(p)
                    .execute(move |_status| outer_body(db, sc, table, log_ref, saw_ref))
                    .await
            }
        }
    };
    let outcome = match tokio::time::timeout(SCENARIO_TIMEOUT, run).await {
        Ok(r) => outcome_name(&r),
        Err(_) => format!("HUNG (no result after {SCENARIO_TIMEOUT:?})"),
    };
    let elapsed = started.elapsed();

    let rows = db
        .fresh_tags(format!("SELECT tag FROM {table} ORDER BY id"))
        .await
        .unwrap_or_else(|e| vec![format!("<read failed: {e}>")]);
    let hooks = log.lock().unwrap().clone();
    let inner_saw = saw.lock().unwrap().clone();
    Observed {
        outcome,
        rows,
        hooks,
        inner_saw,
        elapsed,
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite's single write lock
// ---------------------------------------------------------------------------------------------

/// Whether the scenario makes a second SQLite connection write while the first one holds the
/// database's only write lock, on the same task (so waiting could never succeed).
///
/// SQLite (WAL) lets any number of connections read, but one at a time write, and a writer
/// holds the lock until its transaction ends. In the matrix:
/// - The outer scope is a transaction only when OUTER is REQUIRED, REQUIRES_NEW or NESTED
///   (with nothing around it each of them begins a new transaction), and it takes the write
///   lock with its first statement, `insert 'outer-before'`, keeping it until it completes,
///   which is after the inner scope has ended. With OUTER = NONE that insert is an autocommit
///   statement that releases the lock at once, so every inner scope can write: those 56
///   lines must match.
/// - Inside such an outer transaction, inner scopes that join it (REQUIRED, SUPPORTS,
///   MANDATORY) or take a savepoint in it (NESTED) write on the very connection that holds the
///   lock: they must match. NEVER fails with `ExistingTransaction` before any statement: it
///   must match.
/// - REQUIRES_NEW begins an independent transaction on another connection, and NOT_SUPPORTED
///   suspends the transaction and runs in autocommit on another connection: their
///   `insert 'inner'` needs the write lock the suspended outer transaction holds and cannot get
///   it before the outer scope ends, which waits for this very insert. That is 3 outer scopes
///   x 2 inner propagations x 4 inner actions x 2 outer actions = 48 lines.
///
/// For those 48 the backend must not wait out the busy timeout (5 s in `sqlite_pool`) and
/// then fail with SQLITE_BUSY; it must fail fast with the explanatory `TxError::WouldBlock`,
/// which the inner body propagates (the scenario only swallows its own `Inner` error), so the
/// outer scope gets it and rolls back. Nothing may be half-written: the table stays empty, the
/// inner scope registered no hook (registration comes after its insert), the outer hook sees a
/// rollback. The inner probe (a read, which WAL allows) may have run, seeing no uncommitted
/// outer row, or may itself have been refused with `WouldBlock` (a backend may begin the
/// writable REQUIRES_NEW transaction eagerly, `BEGIN IMMEDIATE`).
fn sqlite_would_block(sc: &Scenario) -> bool {
    let outer_is_transaction = matches!(
        sc.outer,
        Some(Propagation::Required | Propagation::RequiresNew | Propagation::Nested)
    );
    let inner_writes_elsewhere = matches!(
        sc.inner,
        Propagation::RequiresNew | Propagation::NotSupported
    );
    outer_is_transaction && inner_writes_elsewhere
}

/// Fast: well under SQLite's 5 s busy timeout.
const WOULD_BLOCK_FAST: Duration = Duration::from_millis(1500);

// ---------------------------------------------------------------------------------------------
// Comparing
// ---------------------------------------------------------------------------------------------

struct Mismatch {
    id: String,
    fields: Vec<String>,
}

fn diff_field<T: std::fmt::Debug + PartialEq>(
    fields: &mut Vec<String>,
    name: &str,
    expected: &T,
    actual: &T,
) {
    if expected != actual {
        fields.push(format!(
            "  {name}:\n    expected {expected:?}\n    actual   {actual:?}"
        ));
    }
}

/// Compares a line that the backend must reproduce exactly.
fn compare_exact(line: &Line, obs: &Observed) -> Vec<String> {
    let mut fields = Vec::new();
    diff_field(&mut fields, "outcome", &line.outcome, &obs.outcome);
    diff_field(&mut fields, "rows", &line.rows, &obs.rows);
    diff_field(&mut fields, "hooks", &line.hooks, &obs.hooks);
    diff_field(&mut fields, "inner_saw", &line.inner_saw, &obs.inner_saw);
    fields
}

/// Compares one of SQLite's 48 single-writer lines (see [`sqlite_would_block`]).
fn compare_sqlite_would_block(line: &Line, obs: &Observed) -> Vec<String> {
    let mut fields = Vec::new();
    diff_field(
        &mut fields,
        "outcome (SQLite single writer: fast TxError::WouldBlock)",
        &"WouldBlock".to_owned(),
        &obs.outcome,
    );
    if obs.elapsed > WOULD_BLOCK_FAST {
        fields.push(format!(
            "  elapsed:\n    expected < {WOULD_BLOCK_FAST:?} (fail fast, not the busy timeout)\n    actual   {:?}",
            obs.elapsed
        ));
    }
    diff_field(
        &mut fields,
        "rows (nothing half-written)",
        &Vec::<String>::new(),
        &obs.rows,
    );
    diff_field(
        &mut fields,
        "hooks",
        &vec![
            "outer:before_completion".to_owned(),
            "outer:after_completion(rolled_back)".to_owned(),
        ],
        &obs.hooks,
    );
    // The inner scope's view up to its probe: the flags as in the matrix; the probe either saw
    // what the matrix says (no uncommitted outer row) or was refused.
    let flags = line
        .inner_saw
        .rsplit_once(",sees_outer=")
        .map(|(flags, _)| flags)
        .unwrap_or(&line.inner_saw);
    let allowed = [line.inner_saw.clone(), format!("{flags},sees_outer=ERR")];
    if !allowed.contains(&obs.inner_saw) {
        fields.push(format!(
            "  inner_saw:\n    expected one of {allowed:?}\n    actual   {:?}",
            obs.inner_saw
        ));
    }
    fields
}

async fn run_matrix<D: Db>(db: &D, backend: Backend, table: &str) {
    let lines = load_matrix();
    let started = Instant::now();
    let mut mismatches = Vec::new();
    let (mut would_block_lines, mut would_block_ok) = (0, 0);
    for line in &lines {
        let sc = Scenario::parse(&line.id);
        let obs = run_scenario(db, backend, table, line).await;
        let fields = if backend == Backend::Sqlite && sqlite_would_block(&sc) {
            would_block_lines += 1;
            let fields = compare_sqlite_would_block(line, &obs);
            would_block_ok += usize::from(fields.is_empty());
            fields
        } else {
            compare_exact(line, &obs)
        };
        if !fields.is_empty() {
            mismatches.push(Mismatch {
                id: line.id.clone(),
                fields,
            });
        }
    }
    if backend == Backend::Sqlite {
        assert_eq!(would_block_lines, 48, "48 single-writer lines on SQLite");
    }
    let ok = lines.len() - mismatches.len();
    eprintln!(
        "spring matrix on {backend:?}: {ok}/{} lines as expected{} in {:?}",
        lines.len(),
        if backend == Backend::Sqlite {
            format!(
                " ({} of {} exact lines match; {would_block_ok} of {would_block_lines} \
                 single-writer lines as expected: fast TxError::WouldBlock, nothing written)",
                ok - would_block_ok,
                lines.len() - would_block_lines
            )
        } else {
            String::new()
        },
        started.elapsed()
    );
    if !mismatches.is_empty() {
        let mut report = format!(
            "{} of {} Spring matrix lines differ on {backend:?}:\n",
            mismatches.len(),
            lines.len()
        );
        for m in &mismatches {
            report.push_str(&format!("{}\n{}\n", m.id, m.fields.join("\n")));
        }
        panic!("{report}");
    }
}

// ---------------------------------------------------------------------------------------------
// One test per backend
// ---------------------------------------------------------------------------------------------

/// Runs the matrix on `db` in a fresh table `(id, tag)`, made by `create` (the statement,
/// with `{table}` for the table's name).
async fn run_matrix_in_table<D: Db>(db: &D, backend: Backend, prefix: &str, create: &str) {
    let table = tx_tests::unique_table(prefix);
    db.fresh_exec(create.replace("{table}", &table))
        .await
        .expect("create table");
    run_matrix(db, backend, &table).await;
    db.fresh_exec(format!("DROP TABLE {table}")).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spring_matrix_postgres() {
    let Some(db) = tx_tests::pg_pool(4).await else {
        return;
    };
    let create = "CREATE TABLE {table} (id serial PRIMARY KEY, tag text)";
    run_matrix_in_table(&db, Backend::Postgres, "matrix_pg", create).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spring_matrix_mysql() {
    let Some(db) = tx_tests::mysql_pool(4).await else {
        return;
    };
    let create =
        "CREATE TABLE {table} (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(64)) ENGINE=InnoDB";
    run_matrix_in_table(&db, Backend::MySql, "matrix_my", create).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spring_matrix_sqlite() {
    let (db, _dir) = tx_tests::sqlite_pool(4).await;
    let create = "CREATE TABLE {table} (id INTEGER PRIMARY KEY, tag TEXT)";
    run_matrix_in_table(&db, Backend::Sqlite, "matrix_lite", create).await;
}
