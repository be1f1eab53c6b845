//! The API on MariaDB/MySQL, in a database of its own; the audit log is in the same database.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPoolOptions};
use tx_sqlx::{MySqlTxPool, TxError};

use crate::setup::{POOL_SIZE, checked};

/// The pool (and transaction manager) the services of this module run on.
pub type Db = MySqlTxPool;

/// The column definition of an auto-increment key named `id`.
const ID_COLUMN: &str = "id BIGINT AUTO_INCREMENT PRIMARY KEY";

/// The statement with MySQL's `?` placeholders instead of `$1`, `$2`, ... (the services
/// number them in binding order and use each once).
fn sql(statement: &'static str) -> sqlx::AssertSqlSafe<String> {
    let mut out = String::with_capacity(statement.len());
    let mut chars = statement.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    sqlx::AssertSqlSafe(out)
}

mod services {
    use super::*;
    include!("app/services.rs");
}

mod routes {
    use super::*;
    include!("app/routes.rs");
}

mod tables {
    use super::*;
    include!("app/tables.rs");
}

pub use routes::{Api, router};
pub use services::{AuditService, OrderService, PointsService, TransferService};

/// The API on MariaDB/MySQL at `url`, in the database `database`, dropped and created anew,
/// with the seed data.
///
/// # Errors
///
/// The server cannot be reached, or `database` is not a plain lower-case name.
pub async fn connect(url: &str, database: &str) -> Result<Api, TxError> {
    drop_database(url, database).await?;
    let database = checked(database)?;
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
    tables::create(&db, &db).await?;
    Ok(Api::new(db.clone(), db))
}

/// Drops the database [`connect`] created.
///
/// # Errors
///
/// The server cannot be reached, or `database` is not a plain lower-case name.
pub async fn drop_database(url: &str, database: &str) -> Result<(), TxError> {
    let database = checked(database)?;
    let mut admin = MySqlConnection::connect(url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database}"
    )))
    .execute(&mut admin)
    .await?;
    Ok(())
}
