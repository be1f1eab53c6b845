//! The workload on PostgreSQL: each peer in its own schema of the bench database.

use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use tx_sqlx::PgTxPool;

use crate::workload::{Dialect, run_script};

crate::place_order_workload!(PgPool, PgTxPool, DIALECT);

/// The workload's SQL on PostgreSQL.
pub const DIALECT: Dialect = Dialect {
    deduct: "UPDATE products SET stock = stock - 1 WHERE id = $1 AND stock >= 1",
    create: "INSERT INTO orders (user_id, product_id, qty) VALUES ($1, $2, 1) RETURNING id",
    charge: "UPDATE users SET balance = balance - 100 WHERE id = $1 AND balance >= 100",
    audit: "INSERT INTO audit (note) VALUES ($1)",
    audited: "SELECT count(*) FROM audit",
    schema: [
        "CREATE TABLE products (id int PRIMARY KEY, stock bigint NOT NULL CHECK (stock >= 0))",
        "CREATE TABLE users (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))",
        "CREATE TABLE orders (id bigserial PRIMARY KEY, user_id int NOT NULL, product_id int NOT NULL, qty int NOT NULL)",
        "CREATE TABLE audit (id bigserial PRIMARY KEY, note text NOT NULL)",
    ],
    hand_begin: None,
    audit_inside: true,
};

/// Creates the schema `schema` afresh (tables filled and vacuumed) and returns a pool whose
/// connections use it (as their `search_path`, a startup parameter: no statement is sent).
pub async fn pool(options: PgConnectOptions, schema: &str, pool: PgPoolOptions) -> PgPool {
    let prelude = format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path TO {schema};"
    );
    let mut admin: PgConnection = run_script(&options, DIALECT.setup_sql(&prelude)).await;
    // Settle the freshly loaded tables so the first timed runs don't pay for it (one
    // statement at a time: VACUUM cannot run in a multi-statement query's implicit transaction).
    for sql in [
        "VACUUM ANALYZE products",
        "VACUUM ANALYZE users",
        "CHECKPOINT",
    ] {
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .expect("vacuum");
    }
    let _ = sqlx::Connection::close(admin).await;
    pool.connect_with(options.options([("search_path", schema)]))
        .await
        .expect("pool")
}
