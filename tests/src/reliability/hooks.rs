//! Hooks used by the scenarios.

use std::sync::{Arc, Mutex};

use tx_sqlx::{BoxError, Completion, TransactionSynchronization, TxError};

use super::backend::Backend;

/// Shared record of the completions a hook saw.
pub type Completions = Arc<Mutex<Vec<Completion>>>;

pub(crate) fn completions_of(c: &Completions) -> Vec<Completion> {
    c.lock().unwrap().clone()
}

/// Registers an `after_completion` hook that records its outcome into `into`.
pub fn record_completion(into: &Completions) -> Result<(), TxError> {
    let into = into.clone();
    tx_sqlx::after_completion(move |c: Completion| async move {
        into.lock().unwrap().push(c);
    })
}

/// A `before_commit` hook that writes a row into the transaction it completes.
pub(crate) struct InsertBeforeCommit<B: Backend> {
    pub(crate) b: B,
    pub(crate) table: String,
    pub(crate) tag: &'static str,
}

impl<B: Backend> TransactionSynchronization for InsertBeforeCommit<B> {
    async fn before_commit(&self, _read_only: bool) -> Result<(), BoxError> {
        self.b.insert(&self.table, self.tag).await?;
        Ok(())
    }
}
