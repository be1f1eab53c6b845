//! Registering hooks with the current scope (Spring's
//! `TransactionSynchronizationManager.registerSynchronization`): [`register_synchronization`]
//! and its shortcuts for one closure.

use std::future::Future;
use std::sync::Arc;

use crate::closure_hooks::{AfterCompletion, CompletionFn, OnCompletion, OnPhase};
use crate::completion::Completion;
use crate::context;
use crate::error::TxError;
use crate::hook_list::Phase;
use crate::synchronization::TransactionSynchronization;

/// Registers `sync` with the current transactional scope.
///
/// Fails with [`TxError::NoTransaction`] outside every transactional scope.
///
/// ```
/// use tx_core::{TransactionSynchronization, TxError};
/// struct Nothing;
/// impl TransactionSynchronization for Nothing {}
/// assert!(matches!(tx_core::register_synchronization(Nothing), Err(TxError::NoTransaction)));
/// ```
pub fn register_synchronization(sync: impl TransactionSynchronization) -> Result<(), TxError> {
    context::current_sync()?.push(Arc::new(sync));
    Ok(())
}

/// Runs `fut` after the current transaction commits (never if it rolls back).
///
/// ```
/// use tx_core::TxError;
/// // Outside every transactional scope the registration fails.
/// assert!(matches!(tx_core::after_commit(async {}), Err(TxError::NoTransaction)));
/// ```
pub fn after_commit(fut: impl Future<Output = ()> + Send + 'static) -> Result<(), TxError> {
    context::current_sync()?.push(Arc::new(OnPhase {
        runs_in: |phase| matches!(phase, Phase::AfterCommit),
        fut: OnCompletion::new(Box::pin(fut)),
    }));
    Ok(())
}

/// Runs `fut` after the current transaction rolls back (never if it commits).
///
/// ```
/// assert!(tx_core::after_rollback(async {}).is_err());
/// ```
pub fn after_rollback(fut: impl Future<Output = ()> + Send + 'static) -> Result<(), TxError> {
    context::current_sync()?.push(Arc::new(OnPhase {
        runs_in: |phase| matches!(phase, Phase::AfterCompletion(Completion::RolledBack)),
        fut: OnCompletion::new(Box::pin(fut)),
    }));
    Ok(())
}

/// Runs `f(completion)` after the current transaction completes, either way.
///
/// ```
/// use tx_core::Completion;
/// assert!(tx_core::after_completion(|c: Completion| async move { let _ = c; }).is_err());
/// ```
pub fn after_completion<F, Fut>(f: F) -> Result<(), TxError>
where
    F: FnOnce(Completion) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let f: CompletionFn = Box::new(move |c| Box::pin(f(c)));
    context::current_sync()?.push(Arc::new(AfterCompletion(OnCompletion::new(f))));
    Ok(())
}
