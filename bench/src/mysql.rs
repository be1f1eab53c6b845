//! The workload on MySQL/MariaDB: each peer in its own database on the bench server.

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use tx_sqlx::MySqlTxPool;

use crate::workload::{Dialect, Statements, Writers, run_script, schema};

crate::place_order_workload!(MySqlPool, MySqlTxPool, DIALECT);

/// The workload's SQL on MariaDB.
pub const DIALECT: Dialect = Dialect::new(Statements::QUESTION_MARKS, SCHEMA, Writers::Many);

/// The tables in its types.
const SCHEMA: [&str; 4] = schema!("int", "bigint", "bigint AUTO_INCREMENT PRIMARY KEY", "text");

/// Creates the database `database` afresh (tables filled) and returns a pool on it.
pub async fn pool(
    options: MySqlConnectOptions,
    database: &str,
    pool: MySqlPoolOptions,
) -> MySqlPool {
    let prelude =
        format!("DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database}; USE {database};");
    let admin: MySqlConnection = run_script(&options, DIALECT.setup_sql(&prelude)).await;
    let _ = sqlx::Connection::close(admin).await;
    pool.connect_with(options.database(database))
        .await
        .expect("pool")
}
