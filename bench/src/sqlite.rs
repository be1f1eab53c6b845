//! The workload on SQLite: each peer in its own database file (WAL).

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use tx_sqlx::SqliteTxPool;

use crate::postgres;
use crate::workload::{Dialect, run_script};

crate::place_order_workload!(SqlitePool, SqliteTxPool, DIALECT);

/// The workload's SQL on SQLite. One writer at a time: the audit's transaction runs right
/// after the order's commits (tx refuses a `RequiresNew` writer inside a writer transaction,
/// and hand-written sqlx would wait for the write lock its own outer transaction holds).
/// Hand-written sqlx begins with `BEGIN IMMEDIATE`, as tx does for writers: a deferred
/// writer fails with `SQLITE_BUSY` when another writer committed since its first read.
pub const DIALECT: Dialect = Dialect {
    // SQLite takes PostgreSQL's `$N` parameters and `RETURNING`.
    deduct: postgres::DIALECT.deduct,
    create: postgres::DIALECT.create,
    charge: postgres::DIALECT.charge,
    audit: postgres::DIALECT.audit,
    audited: postgres::DIALECT.audited,
    schema: [
        "CREATE TABLE products (id INTEGER PRIMARY KEY, stock INTEGER NOT NULL CHECK (stock >= 0))",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL CHECK (balance >= 0))",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, product_id INTEGER NOT NULL, qty INTEGER NOT NULL)",
        "CREATE TABLE audit (id INTEGER PRIMARY KEY, note TEXT NOT NULL)",
    ],
    hand_begin: Some("BEGIN IMMEDIATE"),
    audit_inside: false,
};

/// The connect options of the bench's database file `path` (WAL, `synchronous = NORMAL`, a
/// busy timeout so writers queue for the write lock).
pub fn options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30))
}

/// Creates the database file `path` afresh (tables filled) and returns a pool on it.
pub async fn pool(path: &Path, pool: SqlitePoolOptions) -> SqlitePool {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    let admin: SqliteConnection = run_script(&options(path), DIALECT.setup_sql("")).await;
    let _ = sqlx::Connection::close(admin).await;
    pool.connect_with(options(path)).await.expect("pool")
}
