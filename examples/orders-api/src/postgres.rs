//! The API on PostgreSQL, in a schema of its own; the audit log is in the same schema.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use tx_sqlx::{PgTxPool, TxError};

use crate::setup::{POOL_SIZE, checked};

/// The pool (and transaction manager) the services of this module run on.
pub type Db = PgTxPool;

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

/// The API on PostgreSQL at `url`, in the schema `schema`, dropped and created anew, with
/// the seed data.
///
/// # Errors
///
/// The server cannot be reached, or `schema` is not a plain lower-case name.
pub async fn connect(url: &str, schema: &str) -> Result<Api, TxError> {
    drop_schema(url, schema).await?;
    let schema = checked(schema)?;
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
    tables::create(&db, &db).await?;
    Ok(Api::new(db.clone(), db))
}

/// Drops the schema [`connect`] created.
///
/// # Errors
///
/// The server cannot be reached, or `schema` is not a plain lower-case name.
pub async fn drop_schema(url: &str, schema: &str) -> Result<(), TxError> {
    let schema = checked(schema)?;
    let mut admin = PgConnection::connect(url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&mut admin)
    .await?;
    Ok(())
}
