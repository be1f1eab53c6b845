//! Hooks used by the scenarios.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tx_sqlx::{BoxError, Completion, TransactionSynchronization, TxError};

use super::backend::{Backend, eventually};
use super::errors::AppError;

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

/// What an `after_completion` hook must see for work that is (`committed`) or is not in the
/// database.
pub(crate) fn completion_of(committed: bool) -> Completion {
    if committed {
        Completion::Committed
    } else {
        Completion::RolledBack
    }
}

/// Checks that an `after_completion` hook saw exactly `expected`; `Err` says what it saw
/// instead.
pub(crate) fn saw_exactly(seen: &[Completion], expected: Completion) -> Result<(), String> {
    if seen != [expected] {
        return Err(format!(
            "after_completion saw {seen:?}, expected [{expected:?}]"
        ));
    }
    Ok(())
}

/// Waits (up to 2 s) for the `after_completion` hook of a call that failed, then checks it
/// saw exactly `Unknown` (when `unknown`: the outcome could not be known) or `RolledBack`;
/// `Err` says what it saw instead.
pub async fn check_failed_completion(
    completions: &Completions,
    unknown: bool,
) -> Result<(), String> {
    eventually(Duration::from_secs(2), || async {
        !completions.lock().unwrap().is_empty()
    })
    .await;
    let expected = if unknown {
        Completion::Unknown
    } else {
        Completion::RolledBack
    };
    saw_exactly(&completions_of(completions), expected)
}

/// Runs a transaction that inserts `later` into `table`: after a fault, the pool must have
/// recovered.
pub(crate) async fn later_transaction<B: Backend>(b: &B, table: &str) -> Result<(), AppError> {
    b.template()
        .execute(|_| async {
            b.insert(table, "later").await?;
            Ok::<_, AppError>(())
        })
        .await
}
