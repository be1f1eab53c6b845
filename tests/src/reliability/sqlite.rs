//! SQLite as a `Backend`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AssertSqlSafe, Connection, SqliteConnection};
use tx_sqlx::SqliteTxPool;

use super::backend::{Backend, BoxFut, fresh_connection_methods};

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
    pub async fn fresh(&self) -> SqliteConnection {
        SqliteConnection::connect_with(
            &SqliteConnectOptions::new()
                .filename(&self.path)
                .busy_timeout(Duration::from_secs(5)),
        )
        .await
        .expect("fresh SQLite connection")
    }
}

impl SqliteBackend {
    /// A brand-new connection outside the pool (for the shared fresh-connection methods).
    async fn fresh_conn(&self) -> SqliteConnection {
        self.fresh().await
    }
}

impl Backend for SqliteBackend {
    type Pool = SqliteTxPool;

    fresh_connection_methods!();

    fn name(&self) -> &'static str {
        "SQLite"
    }

    fn manager(&self) -> &SqliteTxPool {
        &self.db
    }

    fn create_table<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, String> {
        Box::pin(async move {
            let table = crate::unique_table(prefix);
            sqlx::raw_sql(AssertSqlSafe(format!(
                "CREATE TABLE {table} (id INTEGER PRIMARY KEY AUTOINCREMENT, tag TEXT NOT NULL)"
            )))
            .execute(&mut self.fresh().await)
            .await
            .expect("create table");
            table
        })
    }

    fn insert<'a>(&'a self, table: &'a str, tag: &'a str) -> BoxFut<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {table} (tag) VALUES (?)"
            )))
            .bind(tag)
            .execute(&self.db)
            .await
            .map(|_| ())
        })
    }
}
