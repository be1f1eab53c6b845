//! The handle a transactional body gets on its scope (Spring's `TransactionStatus`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::definition::Isolation;
use crate::transaction::{Scope, ScopeKind};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The body of the scope itself.
    Owner,
    /// A joined Required/Supports/Mandatory call inside it.
    Participant,
}

/// The state of the transactional scope a body runs in: query it, or mark it rollback-only.
///
/// Cheap to clone. A body gets its own as the closure argument of
/// [`TransactionTemplate::execute`](crate::TransactionTemplate::execute); anywhere inside a
/// scope, [`current_status`](crate::current_status) returns the innermost one.
///
/// ```
/// # use tx_core::{Isolation, TransactionTemplate, TxError};
/// # use tx_core::testing::NoopManager;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let template = TransactionTemplate::new(NoopManager::default())
///     .name("report")
///     .isolation(Isolation::RepeatableRead)
///     .read_only(true);
/// let r: Result<(), TxError> = template
///     .execute(|status| async move {
///         assert!(status.is_new_transaction());
///         assert_eq!(status.name(), "report");
///         assert!(status.is_read_only());
///         assert_eq!(status.isolation(), Isolation::RepeatableRead);
///         status.set_rollback_only(); // rolled back, but returns Ok: the owner decided
///         assert!(status.is_rollback_only());
///         Ok(())
///     })
///     .await;
/// assert!(r.is_ok());
/// # }
/// ```
#[derive(Clone)]
pub struct TransactionStatus {
    scope: Arc<Scope>,
    role: Role,
}

impl std::fmt::Debug for TransactionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionStatus")
            .field("name", &self.name())
            .field("new_transaction", &self.is_new_transaction())
            .field("savepoint", &self.has_savepoint())
            .field("read_only", &self.is_read_only())
            .field("isolation", &self.isolation())
            .field("rollback_only", &self.is_rollback_only())
            .field("completed", &self.is_completed())
            .finish()
    }
}

impl TransactionStatus {
    pub(crate) fn owner(scope: Arc<Scope>) -> TransactionStatus {
        TransactionStatus {
            scope,
            role: Role::Owner,
        }
    }

    pub(crate) fn participant(scope: Arc<Scope>) -> TransactionStatus {
        TransactionStatus {
            scope,
            role: Role::Participant,
        }
    }

    /// Marks the scope so that it rolls back instead of committing.
    ///
    /// In a scope that began the transaction (or a `Nested` savepoint, or a scope without a
    /// transaction) this decides the outcome of that scope only, and the call still returns
    /// its own result. In a participant it marks the whole transaction: its owner will roll
    /// back and return [`TxError::UnexpectedRollback`](crate::TxError::UnexpectedRollback).
    pub fn set_rollback_only(&self) {
        match (self.role, &self.scope.tx) {
            (Role::Participant, Some(_)) => self.scope.mark_joined_rollback_only(),
            _ => self.scope.rollback_only.store(true, Ordering::Relaxed),
        }
    }

    /// Whether the scope, or for a transaction any participant of it, asked for a rollback.
    #[must_use]
    pub fn is_rollback_only(&self) -> bool {
        let global = self
            .scope
            .tx
            .as_ref()
            .is_some_and(|tx| tx.is_global_rollback_only());
        global
            || self.scope.is_joined_rollback_only()
            || (self.role == Role::Owner && self.scope.is_local_rollback_only())
    }

    /// True in the scope that began the transaction (not in a participant, a savepoint, or a
    /// scope without a transaction).
    #[must_use]
    pub fn is_new_transaction(&self) -> bool {
        self.role == Role::Owner
            && matches!(
                self.scope.kind,
                ScopeKind::NewTransaction | ScopeKind::SavepointAsTransaction
            )
    }

    /// True in a `Nested` scope that runs on a savepoint of an enclosing transaction.
    #[must_use]
    pub fn has_savepoint(&self) -> bool {
        self.role == Role::Owner && matches!(self.scope.kind, ScopeKind::Savepoint)
    }

    /// True once the scope's transaction (or savepoint) has committed or rolled back.
    #[must_use]
    pub fn is_completed(&self) -> bool {
        self.scope.completed.load(Ordering::Relaxed)
    }

    /// The scope's name: the transaction's name, or for `#[transactional]` the function's
    /// path by default.
    #[must_use]
    pub fn name(&self) -> &str {
        self.scope.name()
    }

    /// Whether the transaction this scope runs in is read-only: the setting of the scope that
    /// began it (a participant or a `Nested` savepoint runs with its owner's). `false` in a
    /// scope without a transaction.
    #[must_use]
    pub fn is_read_only(&self) -> bool {
        self.scope
            .tx
            .as_ref()
            .is_some_and(|tx| tx.definition.is_read_only())
    }

    /// The isolation level the transaction this scope runs in was begun with, as asked for
    /// by the scope that began it (a participant or a `Nested` savepoint runs with its
    /// owner's; see the backend's documentation for the level each database really applies).
    /// [`Isolation::Default`] in a scope without a transaction.
    #[must_use]
    pub fn isolation(&self) -> Isolation {
        self.scope
            .tx
            .as_ref()
            .map_or(Isolation::Default, |tx| tx.definition.get_isolation())
    }

    /// Which run of a retried call (`retry = n`) this scope belongs to, from 1: the attempt of
    /// the transaction it runs in, 1 without a transaction.
    ///
    /// ```
    /// # use tx_core::{TransactionTemplate, TxError};
    /// # use tx_core::testing::NoopManager;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let r: Result<u32, TxError> = TransactionTemplate::new(NoopManager::default())
    ///     .execute(|status| async move { Ok(status.attempt()) })
    ///     .await;
    /// assert_eq!(r.unwrap(), 1);
    /// # }
    /// ```
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.scope.tx.as_ref().map_or(1, |tx| tx.attempt())
    }

    /// Whether the scope runs in an actual transaction.
    pub(crate) fn is_transaction_active(&self) -> bool {
        self.scope.tx.is_some()
    }
}
