//! The API on PostgreSQL, in a schema of its own; the audit log is in the same schema.

use sqlx::Postgres;
use tx_examples::per_backend::{drop_namespace, fresh_namespace};
use tx_sqlx::{PgTxPool, TxError};

use crate::setup::{ACQUIRE, POOL_SIZE, checked};

crate::setup::api_backend!(postgres, PgTxPool, "id BIGSERIAL PRIMARY KEY", numbered);

/// The API on PostgreSQL at `url`, in the schema `schema`, dropped and created anew, with
/// the seed data.
///
/// # Errors
///
/// The server cannot be reached, or `schema` is not a plain lower-case name.
pub async fn connect(url: &str, schema: &str) -> Result<Api, TxError> {
    let db = fresh_namespace(url, checked(schema)?, POOL_SIZE, ACQUIRE).await?;
    Api::create(db.clone(), db).await
}

/// Drops the schema [`connect`] created.
///
/// # Errors
///
/// The server cannot be reached, or `schema` is not a plain lower-case name.
pub async fn drop_schema(url: &str, schema: &str) -> Result<(), TxError> {
    Ok(drop_namespace::<Postgres>(url, checked(schema)?).await?)
}
