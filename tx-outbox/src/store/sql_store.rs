//! The backend-side state of one outbox (or inbox) on one pool.

use std::sync::Arc;

use tx_sqlx::TxPool;

use super::sql::Sql;

/// The backend-side state of one outbox (or inbox) on one pool.
pub(crate) struct SqlStore<DB: sqlx::Database> {
    pub db: TxPool<DB>,
    pub sql: Arc<Sql>,
    /// MySQL: the relays' own session for partition claims, with a short lock wait; detached
    /// from the pool, so it takes no place there.
    pub claim_conn: tokio::sync::Mutex<Option<DB::Connection>>,
}

impl<DB: sqlx::Database> SqlStore<DB> {
    pub(crate) fn new(db: TxPool<DB>, sql: Sql) -> Self {
        SqlStore {
            db,
            sql: Arc::new(sql),
            claim_conn: tokio::sync::Mutex::new(None),
        }
    }
}
