//! The shop on MariaDB/MySQL, in a database of its own; the audit log is another connection
//! of the same pool.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPoolOptions};
use tx_sqlx::{MySqlTxPool, TxError};

use super::connect::{Backend, POOL_SIZE, check_name};
use super::error::ShopError;

/// The pool (and transaction manager) every service of this module runs on.
pub type Db = MySqlTxPool;

const BACKEND: Backend = Backend::MySql;

/// The column definition of an auto-increment key named `id`.
const ID_COLUMN: &str = "id BIGINT AUTO_INCREMENT PRIMARY KEY";

/// The statement with MySQL's `?` placeholders instead of `$1`, `$2`, ... (the services
/// number them in binding order and use each once).
fn sql(statement: &'static str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(question_marks(statement))
}

fn question_marks(statement: &str) -> String {
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
    out
}

mod services {
    use super::*;
    include!("app/services.rs");
}

mod queries {
    use super::*;
    include!("app/queries.rs");
}

mod cases {
    use super::*;
    include!("app/shop.rs");
}

pub use cases::Shop;
pub use queries::{Queries, create_schema};
pub use services::*;

/// The shop on MariaDB/MySQL at `url`, in the database `database`, dropped and created anew.
///
/// # Errors
///
/// [`ShopError::InvalidNamespace`] for a database name that is not a plain identifier; the
/// database's (an unreachable server, a bad URL, ...).
pub async fn connect(url: &str, database: &str) -> Result<Shop, ShopError> {
    check_name(database)?;
    let options = MySqlConnectOptions::from_str(url)?;
    let mut admin = MySqlConnection::connect_with(&options).await?;
    for ddl in [
        format!("DROP DATABASE IF EXISTS {database}"),
        format!("CREATE DATABASE {database}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&mut admin)
            .await?;
    }
    admin.close().await?;
    let pool = MySqlPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.database(database))
        .await?;
    let db = MySqlTxPool::new(pool);
    create_schema(&db, &db).await?;
    Ok(Shop::new(db.clone(), db, false))
}

/// Drops the database [`connect`] created.
///
/// # Errors
///
/// As [`connect`].
pub async fn drop_database(url: &str, database: &str) -> Result<(), ShopError> {
    check_name(database)?;
    let mut admin = MySqlConnection::connect(url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database}"
    )))
    .execute(&mut admin)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_become_question_marks() {
        assert_eq!(
            super::question_marks("UPDATE t SET a = $1 WHERE id = $2 AND b >= $10"),
            "UPDATE t SET a = ? WHERE id = ? AND b >= ?"
        );
        assert_eq!(super::question_marks("SELECT '$' || x"), "SELECT '$' || x");
    }
}
