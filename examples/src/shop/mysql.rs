//! The shop on MariaDB/MySQL, in a database of its own; the audit log is another connection
//! of the same pool.

use std::str::FromStr;
use std::time::Duration;

use sqlx::MySql;
use sqlx::mysql::MySqlConnectOptions;
use tx_sqlx::{MySqlTxPool, TxError};

use super::connect::{Backend, POOL_SIZE, check_name};
use super::error::ShopError;
use crate::per_backend::{on_admin_connection, server_pool};

const BACKEND: Backend = Backend::MySql;

super::shop_backend!(
    MySqlTxPool,
    "id BIGINT AUTO_INCREMENT PRIMARY KEY",
    question_marks
);

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
    let ddl = [
        format!("DROP DATABASE IF EXISTS {database}"),
        format!("CREATE DATABASE {database}"),
    ];
    on_admin_connection::<MySql>(&options, &ddl).await?;
    let scoped = options.database(database);
    let db: Db = server_pool(POOL_SIZE, Duration::from_secs(10), scoped).await?;
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
    let options = MySqlConnectOptions::from_str(url)?;
    on_admin_connection::<MySql>(&options, &[format!("DROP DATABASE IF EXISTS {database}")])
        .await?;
    Ok(())
}
