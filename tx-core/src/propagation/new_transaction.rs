//! A new transaction: begun lazily, its body run under its deadline, then committed or rolled
//! back, and completed from a spawned task when the call is cancelled.

use std::future::Future;
use std::panic::{AssertUnwindSafe, resume_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::FutureExt;
use tracing::Instrument;

use super::outcome::{BodyEnd, RunInfo};
use super::trace::{finish_transaction, log_new, notify_after};
use crate::completion::Completion;
use crate::context::Context;
use crate::definition::TransactionDefinition;
use crate::error::TxError;
use crate::hook_list::SyncScope;
use crate::manager::{ManagerKey, SharedManager};
use crate::observe::listener::{self, Callback};
use crate::observe::span::{Fields, ScopeTrace};
use crate::observe::{Ending, RollbackCause};
use crate::status::TransactionStatus;
use crate::transaction::Transaction;
use crate::transaction::{Scope, ScopeKind};

/// Completes a cancelled new transaction: rolls back (unless COMMIT was already sent) and
/// finishes its hooks from where they stopped, in a spawned task (a destructor cannot wait).
pub(super) struct CancelGuard {
    armed: Option<(Arc<Transaction>, Arc<SyncScope>, ScopeTrace)>,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let Some((tx, sync, trace)) = self.armed.take() else {
            return;
        };
        tracing::debug!(target: "tx", "Transactional call [{}] cancelled: rolling back", tx.name());
        let physical = tx.try_take_physical();
        let runtime = tx.runtime().cloned();
        let span = trace.span();
        let rolling_back = tx.clone();
        sync.spawn_finish_cancelled(
            runtime.as_ref(),
            &span,
            async move {
                listener::notify(Callback::BeforeRollback, || rolling_back.execution());
                if let Some(p) = physical
                    && let Err(e) = p.rollback().await
                {
                    tracing::warn!(target: "tx", "rollback of cancelled transaction failed: {e}");
                }
            },
            move |completion| {
                let ending = match completion {
                    Completion::Committed => Ending::COMMITTED,
                    Completion::Unknown => Ending::UNKNOWN,
                    Completion::RolledBack => Ending::rolled_back(RollbackCause::Cancelled),
                };
                notify_after(&tx, ending, None);
                finish_transaction(&tx, &trace, ending);
            },
        );
    }
}

/// Begins a transaction (lazily: BEGIN goes out with the first statement), runs the body in
/// it and commits or rolls back. Transactions of the same manager in `ctx` are suspended.
pub(super) async fn new_transaction<T, E, F, Fut, R>(
    ctx: Context,
    key: ManagerKey,
    manager: SharedManager,
    definition: &TransactionDefinition,
    rollback_on: R,
    body: F,
    attempt: u32,
) -> (Result<T, E>, RunInfo)
where
    E: From<TxError>,
    F: FnOnce(TransactionStatus) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Fn(&E) -> bool,
{
    let tx = Arc::new(Transaction::new(
        manager,
        definition.clone(),
        key,
        ctx.bindings(),
        attempt,
    ));
    // Timed also without a span when the duration histogram wants it.
    let trace = ScopeTrace::open(cfg!(feature = "metrics"), || Fields {
        name: tx.name(),
        propagation: tx.definition.get_propagation(),
        isolation: tx.definition.get_isolation(),
        read_only: tx.definition.is_read_only(),
        backend: tx.db_system(),
        tx_id: Some(tx.id),
        scope_id: tx.id,
        scope: "new_transaction",
        attempt,
    });
    // Built where it is awaited (a wrapper would copy the whole future), wrapped only for a
    // span.
    match trace.enabled_span().cloned() {
        None => run_transaction(ctx, key, tx, trace, rollback_on, body).await,
        Some(span) => {
            run_transaction(ctx, key, tx, trace, rollback_on, body)
                .instrument(span)
                .await
        }
    }
}

/// The body and completion of [`new_transaction`], in its span.
pub(super) async fn run_transaction<T, E, F, Fut, R>(
    ctx: Context,
    key: ManagerKey,
    tx: Arc<Transaction>,
    trace: ScopeTrace,
    rollback_on: R,
    body: F,
) -> (Result<T, E>, RunInfo)
where
    E: From<TxError>,
    F: FnOnce(TransactionStatus) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Fn(&E) -> bool,
{
    log_new(&tx.definition);
    listener::notify(Callback::BeforeBegin, || tx.execution());
    let scope = Arc::new(Scope::new(
        ScopeKind::NewTransaction,
        Some(tx.clone()),
        tx.definition.name_cow().clone(),
    ));
    let sync = Arc::new(SyncScope::default());
    let status = TransactionStatus::owner(scope.clone());
    let tx_ctx = ctx
        .bind(key, Some(scope.clone()), None)
        .with_scope(status.clone(), sync.clone());
    listener::notify(Callback::AfterBegin(None), || tx.execution());

    let mut cancel = CancelGuard {
        armed: Some((tx.clone(), sync.clone(), trace)),
    };
    let end = {
        let run = tx_ctx
            .clone()
            .run(AssertUnwindSafe(body(status)).catch_unwind());
        match tx.deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, run).await {
                Ok(r) => BodyEnd::from_caught(r),
                Err(_) => BodyEnd::TimedOut,
            },
            None => BodyEnd::from_caught(run.await),
        }
    };
    // Decided when the body ended: a body that computed past the deadline without
    // awaiting must not commit, while its own error returned in time stays its error.
    let late = tx.past_deadline();

    let (result, ending) =
        complete_transaction(&tx, &scope, &sync, &tx_ctx, end, late, &rollback_on).await;
    let Some((_, _, trace)) = cancel.armed.take() else {
        unreachable!("disarmed only here")
    };
    scope.set_completed();
    finish_transaction(&tx, &trace, ending);
    let info = RunInfo {
        owned_transaction: true,
        rolled_back: ending.completion == Completion::RolledBack,
        retryable: tx.take_retryable(),
        seen_retryable: tx.take_seen_retryable(),
    };
    match result {
        Ok(r) => (r, info),
        Err(panic) => resume_unwind(panic),
    }
}

/// Commits or rolls back a transaction this scope began, per how its body ended (`late`:
/// past the deadline), and tells the listeners. `Err` carries a panic to resume once
/// everything is cleaned up.
#[allow(clippy::type_complexity)]
pub(super) async fn complete_transaction<T, E, R>(
    tx: &Arc<Transaction>,
    scope: &Scope,
    sync: &SyncScope,
    tx_ctx: &Context,
    end: BodyEnd<T, E>,
    late: bool,
    rollback_on: &R,
) -> (Result<Result<T, E>, Box<dyn std::any::Any + Send>>, Ending)
where
    E: From<TxError>,
    R: Fn(&E) -> bool,
{
    let enclosing = tx.enclosing.as_ref();
    let rollback = || async {
        tracing::debug!(target: "tx", "Initiating transaction rollback [{}]", tx.name());
        listener::notify(Callback::BeforeRollback, || tx.execution());
        match tx.take_physical(false).await {
            Ok(Some(p)) => {
                if let Err(e) = p.rollback().await {
                    tracing::warn!(target: "tx", "rollback of [{}] failed: {e}", tx.name());
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(target: "tx", "{e}"),
        }
    };
    // What the call returns, and why it must roll back (`None`: try to commit).
    let (outcome, cause) = match end {
        BodyEnd::Panicked(panic) => {
            tracing::debug!(target: "tx", "Transactional body of [{}] panicked", tx.name());
            (Err(panic), Some(RollbackCause::Panic))
        }
        BodyEnd::TimedOut => {
            tracing::debug!(target: "tx", "Transaction [{}] timed out", tx.name());
            (
                Ok(Err(TxError::Timeout.into())),
                Some(RollbackCause::Timeout),
            )
        }
        BodyEnd::Returned(_) if late => {
            // Also a body that failed after the deadline failed because of it (a statement
            // cut by the server's statement timeout, or refused by the engine).
            tracing::debug!(target: "tx", "Transaction [{}] ended past its deadline: rolling back", tx.name());
            (
                Ok(Err(TxError::Timeout.into())),
                Some(RollbackCause::Timeout),
            )
        }
        BodyEnd::Returned(Ok(v)) => {
            let marked = scope.is_local_rollback_only();
            if marked {
                tracing::debug!(
                    target: "tx",
                    "Transactional code has requested rollback of [{}]",
                    tx.name()
                );
            }
            (Ok(Ok(v)), marked.then_some(RollbackCause::RollbackOnly))
        }
        BodyEnd::Returned(Err(e)) => {
            let cause = if rollback_on(&e) {
                Some(RollbackCause::Error)
            } else if scope.is_local_rollback_only() {
                Some(RollbackCause::RollbackOnly)
            } else {
                None
            };
            (Ok(Err(e)), cause)
        }
    };
    let (outcome, cause) = match cause {
        None if tx.is_global_rollback_only() => {
            tracing::debug!(
                target: "tx",
                "Global transaction [{}] is marked as rollback-only but transactional code requested commit",
                tx.name()
            );
            (
                Ok(Err(TxError::UnexpectedRollback.into())),
                Some(RollbackCause::RollbackOnly),
            )
        }
        cause => (outcome, cause),
    };
    if let Some(cause) = cause {
        sync.rollback(tx_ctx, enclosing, rollback()).await;
        let ending = Ending::rolled_back(cause);
        notify_after(tx, ending, None);
        return (outcome, ending);
    }
    // Right before COMMIT, after every before_commit and before_completion hook: a hook may
    // have run past the deadline, or marked the transaction (a participant it called failed,
    // or it called set_rollback_only()).
    let check = || {
        if tx.past_deadline() {
            tracing::debug!(target: "tx", "Transaction [{}] reached its deadline before COMMIT", tx.name());
            Err(TxError::Timeout)
        } else if tx.is_global_rollback_only() || scope.is_local_rollback_only() {
            tracing::debug!(
                target: "tx",
                "Transaction [{}] was marked rollback-only by a synchronization before COMMIT",
                tx.name()
            );
            Err(TxError::UnexpectedRollback)
        } else {
            Ok(())
        }
    };
    // Whether COMMIT was attempted (a failure then is the commit's, not a hook's or check's).
    let committing = AtomicBool::new(false);
    let commit_physical = async {
        tracing::debug!(target: "tx", "Initiating transaction commit [{}]", tx.name());
        committing.store(true, Ordering::Relaxed);
        listener::notify(Callback::BeforeCommit, || tx.execution());
        match tx.take_physical(true).await {
            Ok(Some(p)) => p.commit().await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        }
    };
    let (completion, r) = sync
        .commit(
            tx_ctx,
            enclosing,
            tx.definition.is_read_only(),
            tx.deadline,
            check,
            commit_physical,
            rollback(),
        )
        .await;
    match r {
        Ok(()) => {
            notify_after(tx, Ending::COMMITTED, None);
            (outcome, Ending::COMMITTED)
        }
        Err(e) => {
            if e.is_retryable() {
                tx.note_retryable(e.sqlstate());
            }
            let ending = match completion {
                Completion::Unknown => Ending::UNKNOWN,
                _ if committing.load(Ordering::Relaxed) => {
                    Ending::rolled_back(RollbackCause::CommitFailed)
                }
                _ => Ending::rolled_back(match e {
                    TxError::Timeout => RollbackCause::Timeout,
                    TxError::UnexpectedRollback => RollbackCause::RollbackOnly,
                    _ => RollbackCause::BeforeCommitFailed,
                }),
            };
            if completion == Completion::RolledBack {
                tracing::debug!(target: "tx", "Commit of [{}] failed: {e}", tx.name());
            }
            notify_after(tx, ending, Some(&e));
            (Ok(Err(e.into())), ending)
        }
    }
}
