//! The API on MariaDB/MySQL, in a database of its own; the audit log is in the same database.

use sqlx::MySql;
use tx_examples::per_backend::{drop_namespace, fresh_namespace};
use tx_sqlx::{MySqlTxPool, TxError};

use crate::setup::{ACQUIRE, POOL_SIZE, checked};

crate::setup::api_backend!(
    mysql,
    MySqlTxPool,
    "id BIGINT AUTO_INCREMENT PRIMARY KEY",
    question_marks
);

/// The API on MariaDB/MySQL at `url`, in the database `database`, dropped and created anew,
/// with the seed data.
///
/// # Errors
///
/// The server cannot be reached, or `database` is not a plain lower-case name.
pub async fn connect(url: &str, database: &str) -> Result<Api, TxError> {
    let db = fresh_namespace(url, checked(database)?, POOL_SIZE, ACQUIRE).await?;
    Api::create(db.clone(), db).await
}

/// Drops the database [`connect`] created.
///
/// # Errors
///
/// The server cannot be reached, or `database` is not a plain lower-case name.
pub async fn drop_database(url: &str, database: &str) -> Result<(), TxError> {
    Ok(drop_namespace::<MySql>(url, checked(database)?).await?)
}
