//! The shop on MariaDB/MySQL, in a database of its own; the audit log is another connection
//! of the same pool.

use sqlx::MySql;
use tx_sqlx::{MySqlTxPool, TxError};

use super::connect::{ACQUIRE, POOL_SIZE, check_name};
use super::error::ShopError;
use crate::per_backend::{drop_namespace, fresh_namespace};

super::shop_backend!(
    MySql,
    MySqlTxPool,
    "id BIGINT AUTO_INCREMENT PRIMARY KEY",
    question_marks
);

/// The shop on MariaDB/MySQL at `url`, in the database `database`, dropped and created anew.
///
/// # Errors
///
/// [`ShopError::InvalidNamespace`] for a database name that is not a plain identifier; the
/// database's (an unreachable server, a bad URL, ...).
pub async fn connect(url: &str, database: &str) -> Result<Shop, ShopError> {
    let db = fresh_namespace(url, check_name(database)?, POOL_SIZE, ACQUIRE).await?;
    Shop::create(db.clone(), db, false).await
}

/// Drops the database [`connect`] created.
///
/// # Errors
///
/// As [`connect`].
pub async fn drop_database(url: &str, database: &str) -> Result<(), ShopError> {
    Ok(drop_namespace::<MySql>(url, check_name(database)?).await?)
}
