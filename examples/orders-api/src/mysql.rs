//! The API on MariaDB/MySQL, in a database of its own; the audit log is in the same database.

use std::str::FromStr;
use std::time::Duration;

use sqlx::MySql;
use sqlx::mysql::MySqlConnectOptions;
use tx_examples::per_backend::{on_admin_connection, server_pool};
use tx_sqlx::{MySqlTxPool, TxError};

use crate::setup::{POOL_SIZE, checked};

crate::setup::api_backend!(
    MySqlTxPool,
    "id BIGINT AUTO_INCREMENT PRIMARY KEY",
    question_marks
);

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
    on_admin_connection::<MySql>(&options, &[format!("CREATE DATABASE {database}")]).await?;
    let scoped = options.database(database);
    let db: Db = server_pool(POOL_SIZE, Duration::from_secs(20), scoped).await?;
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
    let options = MySqlConnectOptions::from_str(url)?;
    on_admin_connection::<MySql>(&options, &[format!("DROP DATABASE IF EXISTS {database}")])
        .await?;
    Ok(())
}
