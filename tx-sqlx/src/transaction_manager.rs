//! The transaction manager of a pool (Spring's `DataSourceTransactionManager`): one generic
//! impl, the backend deciding how to begin.

use std::sync::Arc;
use std::sync::atomic::AtomicU8;

use tx_core::TxError;
use tx_core::manager::{
    BeginOptions, BoxFuture, ManagerKey, PhysicalTransaction, TransactionManager,
};

use crate::backend::{Backend, WATCHDOG_ACTIVE};
use crate::physical::SqlxTransaction;
use crate::pool::TxPool;

/// Begins a transaction of `db`: takes a connection, sends the backend's begin statement,
/// installs its watchdog.
async fn begin<DB: Backend>(
    db: TxPool<DB>,
    options: BeginOptions,
) -> Result<SqlxTransaction<DB>, TxError> {
    DB::check_begin(&options)?;
    let leased = db.connection_for_begin(&options).await?;
    let mut tx = SqlxTransaction::new(leased);
    let begin = DB::begin_statement(tx.raw_connection(), &db.inner.facts, &options).await?;
    if let Some(reset) = begin.reset {
        tx.set_reset(reset);
    }
    tx.begin(begin.sql).await?;
    if DB::WATCHDOG
        && let Some(remaining) = options.remaining
    {
        let state = Arc::new(AtomicU8::new(WATCHDOG_ACTIVE));
        tx.set_watchdog(Arc::clone(&state));
        DB::install_watchdog(tx.raw_connection(), state, remaining).await?;
    }
    Ok(tx)
}

/// The transaction manager of a pool.
impl<DB: Backend> TransactionManager for TxPool<DB> {
    fn key(&self) -> ManagerKey {
        self.manager_key()
    }

    fn begin(
        &self,
        options: BeginOptions,
    ) -> BoxFuture<'static, Result<Box<dyn PhysicalTransaction>, TxError>> {
        let db = self.clone();
        Box::pin(
            async move { Ok(Box::new(begin(db, options).await?) as Box<dyn PhysicalTransaction>) },
        )
    }

    fn backend_name(&self) -> &'static str {
        DB::BACKEND_NAME
    }
}
