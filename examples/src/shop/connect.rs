//! Setting the shop up on each backend: a fresh namespace (SQLite files in a directory, a
//! PostgreSQL schema, a MariaDB database), the pools, the tables and the seed data.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tx_sqlx::{MySqlTxPool, PgTxPool, SqliteTxPool, TxError};

use super::cases::{DemoReport, Shop};
use super::error::ShopError;
use super::model::create_schema;

/// Connections per pool: enough for a RequiresNew beside its suspended transaction and two
/// concurrent buyers.
const POOL_SIZE: u32 = 5;

/// Opens (creating) the SQLite database `file` in WAL mode.
async fn sqlite_pool(file: &Path) -> Result<SqliteTxPool, ShopError> {
    let options = SqliteConnectOptions::new()
        .filename(file)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(POOL_SIZE)
        .connect_with(options)
        .await
        .map_err(TxError::from)?;
    Ok(SqliteTxPool::new(pool))
}

/// The shop on two new SQLite databases in `dir`: `shop.db`, and `audit.db` for the audit
/// log (a RequiresNew on the database whose write lock the order holds would fail fast with
/// `TxError::WouldBlock`; a second database with its own `TxPool` is a second manager).
pub async fn sqlite(dir: &Path) -> Result<Shop<SqliteTxPool>, ShopError> {
    let db = sqlite_pool(&dir.join("shop.db")).await?;
    let audit_db = sqlite_pool(&dir.join("audit.db")).await?;
    create_schema(&db, &audit_db).await?;
    Ok(Shop::new(db, audit_db, true))
}

fn check_name(name: &str) -> Result<(), ShopError> {
    let ok = !name.is_empty()
        && name.len() <= 60
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(TxError::database(
            tx_sqlx::Operation::Statement,
            false,
            format!("invalid schema/database name {name:?}"),
        )
        .into())
    }
}

/// The shop on PostgreSQL at `url`, in the schema `schema`, dropped and created anew (every
/// connection of the pool gets `search_path` = `schema`).
pub async fn postgres(url: &str, schema: &str) -> Result<Shop<PgTxPool>, ShopError> {
    check_name(schema)?;
    let options = PgConnectOptions::from_str(url).map_err(TxError::from)?;
    let mut admin = PgConnection::connect_with(&options)
        .await
        .map_err(TxError::from)?;
    for ddl in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&mut admin)
            .await
            .map_err(TxError::from)?;
    }
    admin.close().await.map_err(TxError::from)?;
    let pool = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.options([("search_path", schema)]))
        .await
        .map_err(TxError::from)?;
    let db = PgTxPool::new(pool);
    create_schema(&db, &db).await?;
    Ok(Shop::new(db.clone(), db, false))
}

/// Drops the schema [`postgres`] created.
pub async fn drop_postgres_schema(url: &str, schema: &str) -> Result<(), ShopError> {
    check_name(schema)?;
    let mut admin = PgConnection::connect(url).await.map_err(TxError::from)?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&mut admin)
    .await
    .map_err(TxError::from)?;
    Ok(())
}

/// The shop on MariaDB/MySQL at `url`, in the database `database`, dropped and created anew.
pub async fn mysql(url: &str, database: &str) -> Result<Shop<MySqlTxPool>, ShopError> {
    check_name(database)?;
    let options = MySqlConnectOptions::from_str(url).map_err(TxError::from)?;
    let mut admin = MySqlConnection::connect_with(&options)
        .await
        .map_err(TxError::from)?;
    for ddl in [
        format!("DROP DATABASE IF EXISTS {database}"),
        format!("CREATE DATABASE {database}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&mut admin)
            .await
            .map_err(TxError::from)?;
    }
    admin.close().await.map_err(TxError::from)?;
    let pool = MySqlPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.database(database))
        .await
        .map_err(TxError::from)?;
    let db = MySqlTxPool::new(pool);
    create_schema(&db, &db).await?;
    Ok(Shop::new(db.clone(), db, false))
}

/// Drops the database [`mysql`] created.
pub async fn drop_mysql_database(url: &str, database: &str) -> Result<(), ShopError> {
    check_name(database)?;
    let mut admin = MySqlConnection::connect(url).await.map_err(TxError::from)?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database}"
    )))
    .execute(&mut admin)
    .await
    .map_err(TxError::from)?;
    Ok(())
}

/// Where the demo runs: chosen from `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Embedded SQLite in a temporary directory (no `DATABASE_URL`).
    Sqlite,
    /// PostgreSQL at this URL (`postgres://` or `postgresql://`).
    Postgres(String),
    /// MariaDB/MySQL at this URL (`mysql://` or `mariadb://`).
    MySql(String),
}

impl Target {
    /// The target for an optional `DATABASE_URL`; `None` for a URL of another database.
    ///
    /// ```
    /// use tx_examples::shop::Target;
    /// assert_eq!(Target::from_url(None), Some(Target::Sqlite));
    /// assert!(matches!(Target::from_url(Some("postgres://localhost/x")), Some(Target::Postgres(_))));
    /// assert_eq!(Target::from_url(Some("oracle://x")), None);
    /// ```
    #[must_use]
    pub fn from_url(url: Option<&str>) -> Option<Target> {
        let Some(url) = url.filter(|u| !u.is_empty()) else {
            return Some(Target::Sqlite);
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Target::Postgres(url.to_owned()))
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            Some(Target::MySql(url.replacen("mariadb://", "mysql://", 1)))
        } else if url.starts_with("sqlite:") {
            Some(Target::Sqlite)
        } else {
            None
        }
    }
}

/// The schema (PostgreSQL) or database (MariaDB) the demo binary uses, left in place
/// afterwards for inspection.
pub const DEMO_NAMESPACE: &str = "tx_shop_demo";

/// Sets the shop up on `target` and runs every case. SQLite databases live in `sqlite_dir`.
pub async fn run_demo(target: &Target, sqlite_dir: &Path) -> Result<DemoReport, ShopError> {
    match target {
        Target::Sqlite => sqlite(sqlite_dir).await?.run_all().await,
        Target::Postgres(url) => postgres(url, DEMO_NAMESPACE).await?.run_all().await,
        Target::MySql(url) => mysql(url, DEMO_NAMESPACE).await?.run_all().await,
    }
}
