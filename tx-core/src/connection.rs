//! How a backend's executor reaches the transaction bound to the current task.
//!
//! A transaction-aware executor (`&TxPool`) calls [`bound_transaction`] with its manager key:
//! `None` means "no transaction here, run in autocommit on a pooled connection" (no scope, or a
//! `Supports`/`NotSupported`/`Never` scope); `Some` gives the transaction, whose
//! [`BoundTransaction::lock`] sends the deferred `BEGIN` and `SAVEPOINT`s and hands out the
//! connection for one statement or stream.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

use crate::context;
use crate::error::TxError;
use crate::manager::{ManagerKey, PhysicalTransaction};
use crate::transaction::{Physical, Slot, Transaction};

/// The transaction bound to the current task for one manager.
#[derive(Clone)]
pub struct BoundTransaction(Arc<Transaction>);

/// The transaction of manager `key` that the current task's innermost scope runs in, if any.
///
/// ```
/// use std::sync::Arc;
/// use tx_core::manager::ManagerKey;
/// // Outside every transactional scope there is none.
/// assert!(tx_core::connection::bound_transaction(ManagerKey::of(&Arc::new(()))).is_none());
/// ```
#[must_use]
pub fn bound_transaction(key: ManagerKey) -> Option<BoundTransaction> {
    context::bound(key).map(BoundTransaction)
}

/// True when the current task runs outside a transaction of manager `key` (a
/// `NotSupported` scope) while a suspended transaction of the same manager holds a
/// connection. A single-writer backend uses it to fail fast instead of waiting for a lock its
/// own task holds.
#[must_use]
pub fn suspended_holds_connection(key: ManagerKey) -> bool {
    context::suspended_holds_connection(key)
}

impl BoundTransaction {
    /// Locks the transaction's connection for one statement or stream, first sending `BEGIN`
    /// and pending `SAVEPOINT`s.
    ///
    /// # Errors
    ///
    /// [`TxError::Timeout`] past the deadline; the backend's failure to begin the transaction
    /// or create a savepoint; an error once the transaction is finished.
    ///
    /// # Cancel safety
    ///
    /// Dropped while it waits for the lock, nothing happened. Dropped while the deferred
    /// `BEGIN` is in flight, the transaction stays not begun (the backend gives up the
    /// connection it was beginning on) and the next statement begins it. Dropped while a
    /// `SAVEPOINT` is in flight, the physical transaction stays with its scope, which rolls
    /// it back if it cannot finish cleanly.
    pub async fn lock(&self) -> Result<TransactionGuard, TxError> {
        let mut slot = self.0.slot.clone().lock_owned().await;
        self.0.materialize(&mut slot).await?;
        Ok(TransactionGuard {
            tx: self.0.clone(),
            slot,
        })
    }

    /// Time left before the deadline, if the transaction has one.
    #[must_use]
    pub fn remaining(&self) -> Option<Duration> {
        self.0
            .deadline
            .map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
    }

    /// Whether the transaction is read-only.
    #[must_use]
    pub fn is_read_only(&self) -> bool {
        self.0.definition.is_read_only()
    }
}

/// Exclusive use of the bound transaction's connection.
pub struct TransactionGuard {
    tx: Arc<Transaction>,
    slot: OwnedMutexGuard<Slot>,
}

impl TransactionGuard {
    /// The open physical transaction; the backend downcasts it with
    /// [`PhysicalTransaction::as_any_mut`].
    pub fn physical(&mut self) -> &mut dyn PhysicalTransaction {
        match &mut self.slot.physical {
            Physical::Active(p) => p.as_mut(),
            _ => unreachable!("TransactionGuard exists only for an active transaction"),
        }
    }

    /// Records that a statement failed with a retryable error (serialization failure,
    /// deadlock), so `retry` re-runs the transaction even when user code wrapped the error.
    pub fn note_retryable_error(&self) {
        self.tx.note_retryable();
    }

    /// Time left before the deadline, if any.
    #[must_use]
    pub fn remaining(&self) -> Option<Duration> {
        self.tx
            .deadline
            .map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
    }
}
