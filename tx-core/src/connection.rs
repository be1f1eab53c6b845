//! How a backend's executor reaches the transaction bound to the current task.
//!
//! A transaction-aware executor (`&TxPool`) calls [`bound_transaction`] with its manager key:
//! `None` means "no transaction here, run in autocommit on a pooled connection" (no scope, or a
//! `Supports`/`NotSupported`/`Never` scope); `Some` gives the transaction, whose
//! [`BoundTransaction::lock`] sends the deferred `BEGIN` and `SAVEPOINT`s and hands out the
//! connection for one statement or stream.
//!
//! The transaction has one connection. Statements of one task (concurrent futures under
//! `join!`) take turns on it, each wait bounded by the transaction's deadline. A stream between
//! two rows ([`StreamState::set_parked`]) or a connection guard ([`LockPurpose::Connection`])
//! holds it while user code runs: another request of the task would wait for itself, so it
//! fails at once with [`TxError::WouldBlock`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

use crate::context;
use crate::error::TxError;
use crate::manager::{ManagerKey, PhysicalTransaction};
use crate::transaction::{Holder, Physical, Request, Slot, Transaction};

/// The transaction bound to the current task for one manager, as seen from the innermost
/// scope (its own savepoint, if it is a `Nested` scope).
#[derive(Clone)]
pub struct BoundTransaction {
    tx: Arc<Transaction>,
    /// The savepoint scope statements run in (`None`: the transaction itself).
    frame: Option<u64>,
}

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
    context::bound(key).map(|(tx, frame)| BoundTransaction { tx, frame })
}

/// True when the current task runs outside a transaction of manager `key` (a
/// `NotSupported` scope, or a hook after its transaction completed) while a transaction of the
/// same manager that this task suspended, or is completing a scope of, holds a connection. A
/// single-writer backend uses it to fail fast instead of waiting for a lock its own task holds.
#[must_use]
pub fn suspended_holds_connection(key: ManagerKey) -> bool {
    context::suspended_holds_connection(key)
}

/// What a [`TransactionGuard`] is taken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockPurpose {
    /// One statement: released when it completes.
    Statement,
    /// A stream of rows: it marks itself parked while its consumer holds a row
    /// ([`StreamState::set_parked`]).
    Stream,
    /// A connection guard handed to user code (`TxPool::acquire`).
    Connection,
}

impl BoundTransaction {
    /// Locks the transaction's connection for one statement, first sending `BEGIN` and
    /// pending `SAVEPOINT`s.
    ///
    /// # Errors
    /// [`TxError::Timeout`] past the deadline (also while waiting for another statement of
    /// this task); [`TxError::WouldBlock`] at once when a stream or connection guard of this
    /// task holds the connection; [`TxError::ConcurrentScopes`] when the savepoint of a
    /// concurrent sibling scope is open; the backend's error if `BEGIN` fails.
    ///
    /// # Cancel safety
    /// Dropping the future before it completes leaves the transaction usable.
    pub async fn lock(&self) -> Result<TransactionGuard, TxError> {
        self.lock_for(LockPurpose::Statement).await
    }

    /// Like [`lock`](Self::lock), for a stream or a connection guard.
    ///
    /// # Errors
    /// As for [`lock`](Self::lock).
    ///
    /// # Cancel safety
    /// As for [`lock`](Self::lock).
    pub async fn lock_for(&self, purpose: LockPurpose) -> Result<TransactionGuard, TxError> {
        let request = match purpose {
            LockPurpose::Statement => Request::Statement,
            LockPurpose::Stream => Request::Stream,
            LockPurpose::Connection => Request::Connection,
        };
        let slot = self.tx.lock(request).await?;
        let mut guard = TransactionGuard {
            tx: self.tx.clone(),
            frame: self.frame,
            slot: Some(slot),
        };
        let slot = guard.slot.as_deref_mut().expect("held until drop");
        self.tx.materialize(slot, self.frame).await?;
        if purpose == LockPurpose::Connection {
            self.tx.set_holder(Holder::Connection);
        }
        Ok(guard)
    }

    /// Time left before the deadline, if the transaction has one.
    #[must_use]
    pub fn remaining(&self) -> Option<Duration> {
        self.tx.remaining()
    }

    /// Whether the transaction is read-only.
    #[must_use]
    pub fn is_read_only(&self) -> bool {
        self.tx.definition.is_read_only()
    }
}

/// Exclusive use of the bound transaction's connection.
pub struct TransactionGuard {
    tx: Arc<Transaction>,
    frame: Option<u64>,
    slot: Option<OwnedMutexGuard<Slot>>,
}

impl TransactionGuard {
    fn slot(&mut self) -> &mut Slot {
        self.slot.as_deref_mut().expect("held until drop")
    }

    /// The open physical transaction; the backend downcasts it with
    /// [`PhysicalTransaction::as_any_mut`].
    pub fn physical(&mut self) -> &mut dyn PhysicalTransaction {
        match &mut self.slot().physical {
            Physical::Active(p) => p.as_mut(),
            _ => unreachable!("TransactionGuard exists only for an active transaction"),
        }
    }

    /// Records that a statement failed with a retryable error (serialization failure,
    /// deadlock; `sqlstate` is the driver's code), so `retry` re-runs the transaction even
    /// when user code wrapped the error, unless a `Nested` scope rolled back to its savepoint
    /// handles it.
    pub fn note_retryable_error(&mut self, sqlstate: Option<&str>) {
        let (tx, frame) = (self.tx.clone(), self.frame);
        tx.note_statement_retryable(self.slot(), frame, sqlstate);
    }

    /// Time left before the deadline, if any.
    #[must_use]
    pub fn remaining(&self) -> Option<Duration> {
        self.tx.remaining()
    }

    /// A handle for a stream to say when it waits on its consumer.
    #[must_use]
    pub fn stream_state(&self) -> StreamState {
        StreamState(self.tx.clone())
    }
}

impl Drop for TransactionGuard {
    fn drop(&mut self) {
        self.tx.set_holder(Holder::Statement);
        drop(self.slot.take());
        self.tx.after_release();
    }
}

/// Lets a stream holding a [`TransactionGuard`] say whether it is parked at a row handed to
/// its consumer (user code runs, so a request of the same task must not wait for it) or
/// working (waiting on the server: others may wait their turn).
pub struct StreamState(Arc<Transaction>);

impl StreamState {
    /// `true` before handing a row to the consumer, `false` when polled again.
    pub fn set_parked(&self, parked: bool) {
        self.0.set_holder(if parked {
            Holder::ParkedStream
        } else {
            Holder::Statement
        });
    }
}
