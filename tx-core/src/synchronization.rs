//! Transaction synchronization as the user writes it: the [`TransactionSynchronization`]
//! trait, and the hooks behind [`after_commit`](crate::after_commit),
//! [`after_rollback`](crate::after_rollback) and [`after_completion`](crate::after_completion).
//! This layer knows nothing of transactions; the hook list runs the hooks
//! ([`crate::hook_list`]) and the engine decides when ([`crate::propagation`]).

use std::future::Future;

use crate::completion::Completion;
use crate::error::BoxError;

/// Callbacks around the completion of the current transaction (Spring's
/// `TransactionSynchronization`). Every method is optional; write them as `async fn`.
///
/// Registered with [`register_synchronization`](crate::register_synchronization) inside a transactional scope, a hook runs when
/// the transaction that owns the physical work completes (for a `Nested` savepoint that rolls
/// back: right then, as rolled back).
///
/// ```
/// use tx_core::{BoxError, Completion, TransactionSynchronization};
///
/// struct Outbox;
///
/// impl TransactionSynchronization for Outbox {
///     async fn before_commit(&self, read_only: bool) -> Result<(), BoxError> {
///         // e.g. flush pending writes; an Err here rolls the transaction back
///         let _ = read_only;
///         Ok(())
///     }
///     async fn after_commit(&self) {
///         // e.g. publish the message, now that the order is really there
///     }
///     async fn after_completion(&self, completion: Completion) {
///         let _ = completion;
///     }
/// }
/// ```
pub trait TransactionSynchronization: Send + Sync + 'static {
    /// Before COMMIT, inside the transaction (statements still run in it).
    ///
    /// # Errors
    ///
    /// An `Err` (or a panic) vetoes the commit: the transaction rolls back, the hooks after
    /// this one get no `before_commit`, and the committing call returns
    /// [`TxError::BeforeCommit`](crate::TxError::BeforeCommit) carrying the error.
    ///
    /// # Cancel safety
    ///
    /// When the transactional call is dropped while this runs, this future is dropped with
    /// it, the transaction rolls back (never commits) and every hook still gets
    /// `after_completion(RolledBack)`, from a spawned task.
    fn before_commit(&self, read_only: bool) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = read_only;
        async { Ok(()) }
    }

    /// Before COMMIT or ROLLBACK, after every `before_commit`.
    ///
    /// # Errors
    ///
    /// None: it cannot change the outcome. A panic is caught and logged (target `"tx"`), and
    /// the next hook runs.
    ///
    /// # Cancel safety
    ///
    /// As for `before_commit`: dropped with a cancelled call, which then rolls back.
    fn before_completion(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// After a successful COMMIT, outside the transaction.
    ///
    /// # Errors
    ///
    /// None: the commit cannot be undone. A panic is caught and logged (target `"tx"`), and
    /// the next hook runs.
    ///
    /// # Cancel safety
    ///
    /// When the call is dropped after COMMIT succeeded, the hooks whose `after_commit` had
    /// not run yet do not get it; every hook still gets `after_completion(Committed)`. Keep
    /// work that must happen in `after_completion`, or in an outbox row written before the
    /// commit.
    fn after_commit(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// After COMMIT or ROLLBACK, with the outcome ([`Completion::Unknown`] when the
    /// connection was lost while COMMIT was in flight).
    ///
    /// # Errors
    ///
    /// None: the outcome stands. A panic is caught and logged (target `"tx"`), and the next
    /// hook runs.
    ///
    /// # Cancel safety
    ///
    /// Runs once per hook, also for a cancelled call (then from a spawned task, with the
    /// outcome the call reached). A hook interrupted while running it is not called again.
    fn after_completion(&self, completion: Completion) -> impl Future<Output = ()> + Send {
        let _ = completion;
        async {}
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_owned()
    }
}
