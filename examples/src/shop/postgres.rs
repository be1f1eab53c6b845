//! The shop on PostgreSQL, in a schema of its own (every connection of the pool gets it as
//! its `search_path`); the audit log is another connection of the same pool.

use sqlx::Postgres;
use tx_sqlx::{PgTxPool, TxError};

use super::connect::{ACQUIRE, POOL_SIZE, check_name};
use super::error::ShopError;
use crate::per_backend::{drop_namespace, fresh_namespace};

super::shop_backend!(Postgres, PgTxPool, "id BIGSERIAL PRIMARY KEY", numbered);

/// The shop on PostgreSQL at `url`, in the schema `schema`, dropped and created anew.
///
/// # Errors
///
/// [`ShopError::InvalidNamespace`] for a schema name that is not a plain identifier; the
/// database's (an unreachable server, a bad URL, ...).
pub async fn connect(url: &str, schema: &str) -> Result<Shop, ShopError> {
    let db = fresh_namespace(url, check_name(schema)?, POOL_SIZE, ACQUIRE).await?;
    Shop::create(db.clone(), db, false).await
}

/// Drops the schema [`connect`] created.
///
/// # Errors
///
/// As [`connect`].
pub async fn drop_schema(url: &str, schema: &str) -> Result<(), ShopError> {
    Ok(drop_namespace::<Postgres>(url, check_name(schema)?).await?)
}
