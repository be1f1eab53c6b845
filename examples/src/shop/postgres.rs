//! The shop on PostgreSQL, in a schema of its own (every connection of the pool gets it as
//! its `search_path`); the audit log is another connection of the same pool.

use tx_sqlx::TxError;

use super::error::ShopError;

super::shop_backend!(
    Postgres,
    "id BIGSERIAL PRIMARY KEY",
    numbered,
    server: "schema",
    drop_schema
);
