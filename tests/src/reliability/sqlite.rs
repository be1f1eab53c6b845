//! SQLite as a `Backend`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};
use tx_sqlx::SqliteTxPool;

use super::backend::{Backend, backend_methods, script};

/// SQLite on a temporary file database (WAL), from [`crate::sqlite_pool`].
#[derive(Clone)]
pub struct SqliteBackend {
    /// The pool under test.
    pub db: SqliteTxPool,
    path: PathBuf,
    _dir: Arc<tempfile::TempDir>,
}

impl SqliteBackend {
    /// A pool of `max` connections on a new database file.
    pub async fn connect(max: u32) -> SqliteBackend {
        let (db, dir) = crate::sqlite_pool(max).await;
        SqliteBackend {
            db,
            path: dir.path().join("test.db"),
            _dir: Arc::new(dir),
        }
    }

    /// A brand-new connection on the same file, outside the pool.
    pub fn fresh(&self) -> impl Future<Output = SqliteConnection> + Send + use<> {
        let options = SqliteConnectOptions::new()
            .filename(&self.path)
            .busy_timeout(Duration::from_secs(5));
        async move {
            SqliteConnection::connect_with(&options)
                .await
                .expect("fresh SQLite connection")
        }
    }
}

impl Backend for SqliteBackend {
    type Pool = SqliteTxPool;

    backend_methods!(
        |b: &Self| b.fresh(),
        "SQLite",
        "CREATE TABLE {table} (id INTEGER PRIMARY KEY AUTOINCREMENT, tag TEXT NOT NULL)",
        "?"
    );
}
