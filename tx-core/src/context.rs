//! The task-local transaction context: which transaction each manager is bound to in the
//! current task, the innermost scope's status, and where hooks register.
//!
//! Each scope runs its body under a new context value (`task_local!` scope); leaving the scope
//! restores the previous value, which is how a suspended transaction is resumed, also when the
//! body panics or is cancelled. The value is a few `Arc`s stored inline in the scope's future,
//! so entering a joined scope allocates nothing.

use std::future::Future;
use std::sync::Arc;

use crate::error::TxError;
use crate::hook_list::SyncScope;
use crate::manager::ManagerKey;
use crate::status::TransactionStatus;
use crate::transaction::{Binding, Scope, Transaction, chain_holds_writer};

tokio::task_local! {
    static CONTEXT: Context;
}

/// One task's view of its transactions.
#[derive(Clone, Default)]
pub(crate) struct Context {
    /// The innermost scope.
    status: Option<TransactionStatus>,
    /// Per manager, the scope whose transaction statements run in (`None`: suspended).
    bindings: Option<Arc<Binding>>,
    /// The hook list of the scope that owns synchronization here.
    sync: Option<Arc<SyncScope>>,
}

impl Context {
    /// The current task's context (empty outside every scope).
    pub(crate) fn current() -> Context {
        CONTEXT.try_with(Context::clone).unwrap_or_default()
    }

    /// The scope that manager `key`'s statements run in, if it has a transaction here.
    pub(crate) fn bound_scope(&self, key: ManagerKey) -> Option<&Arc<Scope>> {
        self.binding(key).and_then(|b| b.scope.as_ref())
    }

    /// The savepoint scope that manager `key`'s statements run in (`None`: the transaction
    /// itself, or no transaction).
    pub(crate) fn bound_frame(&self, key: ManagerKey) -> Option<u64> {
        self.binding(key).and_then(|b| b.frame)
    }

    fn binding(&self, key: ManagerKey) -> Option<&Binding> {
        let mut link = self.bindings.as_deref();
        while let Some(b) = link {
            match b.key {
                Some(k) if k == key => return Some(b),
                Some(_) => {}
                None => return None,
            }
            link = b.parent.as_deref();
        }
        None
    }

    /// A context outside every transaction of `bindings` (for hooks that run after their
    /// scope completed), which still knows which transactions this task holds.
    pub(crate) fn suspended(bindings: Option<&Arc<Binding>>) -> Context {
        Context {
            status: None,
            sync: None,
            bindings: bindings.map(|parent| {
                Arc::new(Binding {
                    key: None,
                    scope: None,
                    frame: None,
                    parent: Some(parent.clone()),
                })
            }),
        }
    }

    pub(crate) fn sync(&self) -> Option<&Arc<SyncScope>> {
        self.sync.as_ref()
    }

    /// This context, with `status` as the innermost scope (a participant).
    pub(crate) fn with_status(mut self, status: TransactionStatus) -> Context {
        self.status = Some(status);
        self
    }

    /// This context with `status` innermost and hooks going to `sync`.
    pub(crate) fn with_scope(mut self, status: TransactionStatus, sync: Arc<SyncScope>) -> Context {
        self.status = Some(status);
        self.sync = Some(sync);
        self
    }

    /// The binding chain (enclosing scopes' transactions per manager).
    pub(crate) fn bindings(&self) -> Option<Arc<Binding>> {
        self.bindings.clone()
    }

    /// This context with manager `key` bound to `scope` (`None`: suspended), whose savepoint
    /// is `frame` for a `Nested` scope.
    pub(crate) fn bind(
        mut self,
        key: ManagerKey,
        scope: Option<Arc<Scope>>,
        frame: Option<u64>,
    ) -> Context {
        self.bindings = Some(Arc::new(Binding {
            key: Some(key),
            scope,
            frame,
            parent: self.bindings.take(),
        }));
        self
    }

    /// Runs `fut` with this context as the task's.
    pub(crate) fn run<F: Future>(
        self,
        fut: F,
    ) -> tokio::task::futures::TaskLocalFuture<Context, F> {
        CONTEXT.scope(self, fut)
    }
}

/// The transaction manager `key`'s statements run in for the current task, and the savepoint
/// scope they run in.
pub(crate) fn bound(key: ManagerKey) -> Option<(Arc<Transaction>, Option<u64>)> {
    CONTEXT
        .try_with(|c| {
            let b = c.binding(key)?;
            Some((b.scope.as_ref()?.tx.clone()?, b.frame))
        })
        .ok()
        .flatten()
}

/// See [`crate::connection::suspended_holds_connection`].
pub(crate) fn suspended_holds_connection(key: ManagerKey) -> bool {
    CONTEXT
        .try_with(|c| {
            c.bound_scope(key).is_none() && chain_holds_writer(c.bindings.as_deref(), key)
        })
        .unwrap_or(false)
}

/// Runs `f` on the innermost scope's status, if any.
fn with_current<R>(f: impl FnOnce(&TransactionStatus) -> R) -> Option<R> {
    CONTEXT
        .try_with(|c| c.status.as_ref().map(f))
        .ok()
        .flatten()
}

/// The hook list of the current task's synchronization owner.
pub(crate) fn current_sync() -> Result<Arc<SyncScope>, TxError> {
    CONTEXT
        .try_with(|c| c.sync.clone())
        .ok()
        .flatten()
        .ok_or(TxError::NoTransaction)
}

/// The status of the innermost transactional scope of the current task, if any.
///
/// ```
/// assert!(tx_core::current_status().is_none());
/// ```
#[must_use]
pub fn current_status() -> Option<TransactionStatus> {
    with_current(TransactionStatus::clone)
}

/// Marks the innermost transactional scope rollback-only
/// (see [`TransactionStatus::set_rollback_only`]).
///
/// ```
/// use tx_core::TxError;
/// // Outside every scope there is nothing to mark.
/// assert!(matches!(tx_core::set_rollback_only(), Err(TxError::NoTransaction)));
/// ```
pub fn set_rollback_only() -> Result<(), TxError> {
    with_current(TransactionStatus::set_rollback_only).ok_or(TxError::NoTransaction)
}

/// Whether the innermost scope of the current task runs in an actual transaction (false
/// outside every scope and in `Supports`/`NotSupported`/`Never` scopes without one).
///
/// ```
/// assert!(!tx_core::is_actual_transaction_active());
/// ```
#[must_use]
pub fn is_actual_transaction_active() -> bool {
    with_current(TransactionStatus::is_transaction_active).unwrap_or(false)
}
