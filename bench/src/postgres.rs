//! The workload on PostgreSQL: each peer in its own schema of the bench database.

use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use tx_sqlx::PgTxPool;

use crate::workload::{Dialect, Statements, Writers, run_script, schema};

crate::place_order_workload!(PgPool, PgTxPool, DIALECT);

/// The workload's SQL on PostgreSQL.
pub const DIALECT: Dialect = Dialect::new(Statements::NUMBERED, SCHEMA, Writers::Many);

/// The tables in its types.
const SCHEMA: [&str; 4] = schema!("int", "bigint", "bigserial PRIMARY KEY", "text");

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
