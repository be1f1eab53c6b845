//! The workload on MySQL/MariaDB: each peer in its own database on the bench server.

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use tx_sqlx::MySqlTxPool;

use crate::workload::{Dialect, run_script};

crate::place_order_workload!(MySqlPool, MySqlTxPool, DIALECT);

/// The workload's SQL on MariaDB (`INSERT .. RETURNING` is MariaDB's, from 10.5).
pub const DIALECT: Dialect = Dialect {
    deduct: "UPDATE products SET stock = stock - 1 WHERE id = ? AND stock >= 1",
    create: "INSERT INTO orders (user_id, product_id, qty) VALUES (?, ?, 1) RETURNING id",
    charge: "UPDATE users SET balance = balance - 100 WHERE id = ? AND balance >= 100",
    audit: "INSERT INTO audit (note) VALUES (?)",
    audited: "SELECT count(*) FROM audit",
    schema: [
        "CREATE TABLE products (id int PRIMARY KEY, stock bigint NOT NULL CHECK (stock >= 0))",
        "CREATE TABLE users (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))",
        "CREATE TABLE orders (id bigint AUTO_INCREMENT PRIMARY KEY, user_id int NOT NULL, product_id int NOT NULL, qty int NOT NULL)",
        "CREATE TABLE audit (id bigint AUTO_INCREMENT PRIMARY KEY, note text NOT NULL)",
    ],
    hand_begin: None,
    audit_inside: true,
};

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
