//! The API on PostgreSQL, in a schema of its own; the audit log is in the same schema.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Postgres;
use sqlx::postgres::PgConnectOptions;
use tx_examples::per_backend::{on_admin_connection, server_pool};
use tx_sqlx::{PgTxPool, TxError};

use crate::setup::{POOL_SIZE, checked};

crate::setup::api_backend!(PgTxPool, "id BIGSERIAL PRIMARY KEY", numbered);

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
    on_admin_connection::<Postgres>(&options, &[format!("CREATE SCHEMA {schema}")]).await?;
    let scoped = options.options([("search_path", schema)]);
    let db: Db = server_pool(POOL_SIZE, Duration::from_secs(20), scoped).await?;
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
    let options = PgConnectOptions::from_str(url)?;
    on_admin_connection::<Postgres>(
        &options,
        &[format!("DROP SCHEMA IF EXISTS {schema} CASCADE")],
    )
    .await?;
    Ok(())
}
