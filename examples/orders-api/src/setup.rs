//! Setting the API up on each backend, on a fresh namespace: SQLite files in a directory, a
//! PostgreSQL schema, a MariaDB/MySQL database.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tx_sqlx::{MySqlTxPool, Operation, PgTxPool, SqliteTxPool, TxError};

use crate::routes::Api;
use crate::schema;

/// Connections per pool of a server.
const POOL_SIZE: u32 = 10;

/// Where the API runs, from `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// SQLite in a directory (no `DATABASE_URL`, or a `sqlite:` one).
    Sqlite,
    /// PostgreSQL at this URL.
    Postgres(String),
    /// MariaDB/MySQL at this URL.
    MySql(String),
}

impl Target {
    /// The target for an optional `DATABASE_URL`.
    ///
    /// # Errors
    ///
    /// A URL of another database.
    ///
    /// ```
    /// use orders_api::Target;
    /// assert_eq!(Target::from_url(None), Ok(Target::Sqlite));
    /// assert!(matches!(Target::from_url(Some("postgres://h/db")), Ok(Target::Postgres(_))));
    /// assert!(Target::from_url(Some("oracle://h")).is_err());
    /// ```
    pub fn from_url(url: Option<&str>) -> Result<Target, String> {
        match url.filter(|u| !u.is_empty()) {
            None => Ok(Target::Sqlite),
            Some(u) if u.starts_with("sqlite:") => Ok(Target::Sqlite),
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Ok(Target::Postgres(u.to_owned()))
            }
            Some(u) if u.starts_with("mysql://") || u.starts_with("mariadb://") => {
                Ok(Target::MySql(u.replacen("mariadb://", "mysql://", 1)))
            }
            Some(u) => Err(format!(
                "DATABASE_URL {u:?}: expected postgres://, mysql://, mariadb:// or sqlite:"
            )),
        }
    }
}

fn checked(name: &str) -> Result<&str, TxError> {
    let ok = !name.is_empty()
        && name.len() <= 60
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(name)
    } else {
        Err(TxError::database(
            Operation::Statement,
            false,
            format!("invalid schema or database name {name:?}: use [a-z][a-z0-9_]*"),
        ))
    }
}

async fn sqlite_pool(file: &Path) -> Result<SqliteTxPool, TxError> {
    let options = SqliteConnectOptions::new()
        .filename(file)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(5)
        .connect_with(options)
        .await?;
    Ok(SqliteTxPool::new(pool))
}

/// The API on two new SQLite databases in `dir`: `orders.db`, and `audit.db` for the audit
/// log (its `RequiresNew` entries need a writer of their own while the order's transaction
/// holds the write lock of `orders.db`).
///
/// # Errors
///
/// The databases cannot be created.
pub async fn sqlite(dir: &Path) -> Result<Api<SqliteTxPool>, TxError> {
    let db = sqlite_pool(&dir.join("orders.db")).await?;
    let audit_db = sqlite_pool(&dir.join("audit.db")).await?;
    schema::create(&db, &audit_db).await?;
    Ok(Api::new(db, audit_db))
}

/// The API on PostgreSQL at `url`, in the schema `schema`, dropped and created anew.
///
/// # Errors
///
/// The server cannot be reached, or `schema` is not a plain name.
pub async fn postgres(url: &str, schema: &str) -> Result<Api<PgTxPool>, TxError> {
    let schema = checked(schema)?;
    drop_postgres_schema(url, schema).await?;
    let options = PgConnectOptions::from_str(url)?;
    let mut admin = PgConnection::connect_with(&options).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let pool = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(Duration::from_secs(20))
        .connect_with(options.options([("search_path", schema)]))
        .await?;
    let db = PgTxPool::new(pool);
    schema::create(&db, &db).await?;
    Ok(Api::new(db.clone(), db))
}

/// Drops the schema [`postgres`] created.
///
/// # Errors
///
/// The server cannot be reached, or `schema` is not a plain name.
pub async fn drop_postgres_schema(url: &str, schema: &str) -> Result<(), TxError> {
    let schema = checked(schema)?;
    let mut admin = PgConnection::connect(url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&mut admin)
    .await?;
    Ok(())
}

/// The API on MariaDB/MySQL at `url`, in the database `database`, dropped and created anew.
///
/// # Errors
///
/// The server cannot be reached, or `database` is not a plain name.
pub async fn mysql(url: &str, database: &str) -> Result<Api<MySqlTxPool>, TxError> {
    let database = checked(database)?;
    drop_mysql_database(url, database).await?;
    let options = MySqlConnectOptions::from_str(url)?;
    let mut admin = MySqlConnection::connect_with(&options).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let pool = MySqlPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(Duration::from_secs(20))
        .connect_with(options.database(database))
        .await?;
    let db = MySqlTxPool::new(pool);
    schema::create(&db, &db).await?;
    Ok(Api::new(db.clone(), db))
}

/// Drops the database [`mysql`] created.
///
/// # Errors
///
/// The server cannot be reached, or `database` is not a plain name.
pub async fn drop_mysql_database(url: &str, database: &str) -> Result<(), TxError> {
    let database = checked(database)?;
    let mut admin = MySqlConnection::connect(url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database}"
    )))
    .execute(&mut admin)
    .await?;
    Ok(())
}
