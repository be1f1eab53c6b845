//! The shop on PostgreSQL, in a schema of its own (every connection of the pool gets it as
//! its `search_path`); the audit log is another connection of the same pool.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use tx_sqlx::{PgTxPool, TxError};

use super::connect::{Backend, POOL_SIZE, check_name};
use super::error::ShopError;

/// The pool (and transaction manager) every service of this module runs on.
pub type Db = PgTxPool;

const BACKEND: Backend = Backend::Postgres;

/// The column definition of an auto-increment key named `id`.
const ID_COLUMN: &str = "id BIGSERIAL PRIMARY KEY";

/// A statement as written (`$1` placeholders).
fn sql(statement: &'static str) -> &'static str {
    statement
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

/// The shop on PostgreSQL at `url`, in the schema `schema`, dropped and created anew.
///
/// # Errors
///
/// [`ShopError::InvalidNamespace`] for a schema name that is not a plain identifier; the
/// database's (an unreachable server, a bad URL, ...).
pub async fn connect(url: &str, schema: &str) -> Result<Shop, ShopError> {
    check_name(schema)?;
    let options = PgConnectOptions::from_str(url)?;
    let mut admin = PgConnection::connect_with(&options).await?;
    for ddl in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&mut admin)
            .await?;
    }
    admin.close().await?;
    let pool = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.options([("search_path", schema)]))
        .await?;
    let db = PgTxPool::new(pool);
    create_schema(&db, &db).await?;
    Ok(Shop::new(db.clone(), db, false))
}

/// Drops the schema [`connect`] created.
///
/// # Errors
///
/// As [`connect`].
pub async fn drop_schema(url: &str, schema: &str) -> Result<(), ShopError> {
    check_name(schema)?;
    let mut admin = PgConnection::connect(url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&mut admin)
    .await?;
    Ok(())
}
