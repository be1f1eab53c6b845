//! The shop on PostgreSQL, in a schema of its own (every connection of the pool gets it as
//! its `search_path`); the audit log is another connection of the same pool.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Postgres;
use sqlx::postgres::PgConnectOptions;
use tx_sqlx::{PgTxPool, TxError};

use super::connect::{Backend, POOL_SIZE, check_name};
use super::error::ShopError;
use crate::per_backend::{on_admin_connection, server_pool};

const BACKEND: Backend = Backend::Postgres;

super::shop_backend!(PgTxPool, "id BIGSERIAL PRIMARY KEY", numbered);

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
    let ddl = [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ];
    on_admin_connection::<Postgres>(&options, &ddl).await?;
    let scoped = options.options([("search_path", schema)]);
    let db: Db = server_pool(POOL_SIZE, Duration::from_secs(10), scoped).await?;
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
    let options = PgConnectOptions::from_str(url)?;
    on_admin_connection::<Postgres>(
        &options,
        &[format!("DROP SCHEMA IF EXISTS {schema} CASCADE")],
    )
    .await?;
    Ok(())
}
