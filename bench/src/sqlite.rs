//! The workload on SQLite: each peer in its own database file (WAL).

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use tx_sqlx::SqliteTxPool;

use crate::workload::{Dialect, Statements, Writers, run_script, schema};

crate::place_order_workload!(SqlitePool, SqliteTxPool, DIALECT);

/// The workload's SQL on SQLite (which takes PostgreSQL's `$N` parameters and `RETURNING`).
pub const DIALECT: Dialect = Dialect::new(Statements::NUMBERED, SCHEMA, Writers::One);

/// The tables in its types.
const SCHEMA: [&str; 4] = schema!("INTEGER", "INTEGER", "INTEGER PRIMARY KEY", "TEXT");

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
