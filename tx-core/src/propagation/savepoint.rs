//! A savepoint scope: `Nested` inside a transaction, or a stand-in of a test transaction.

use std::future::Future;
use std::panic::{AssertUnwindSafe, resume_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::FutureExt;
use tracing::Instrument;

use super::outcome::{BodyEnd, name_of};
use crate::completion::Completion;
use crate::context::Context;
use crate::definition::TransactionDefinition;
use crate::error::TxError;
use crate::hook_list::SyncScope;
use crate::manager::ManagerKey;
use crate::observe::listener::{self, Callback};
use crate::observe::span::{Fields, ScopeTrace};
use crate::observe::{self, Ending, RollbackCause};
use crate::status::TransactionStatus;
use crate::transaction::{SavepointCompletion, Transaction};
use crate::transaction::{Scope, ScopeKind};

/// Rolls the savepoint back if a savepoint scope is dropped before it finished; the hooks it
/// owns finish as rolled back.
pub(super) struct SavepointGuard<'a> {
    armed: Option<(Arc<Transaction>, u64, Option<Arc<SyncScope>>)>,
    /// Whether the savepoint is still open (its ROLLBACK TO / RELEASE has not returned).
    open: AtomicBool,
    /// Whether the listeners got `before_commit` or `before_rollback` already.
    resolving: AtomicBool,
    definition: &'a TransactionDefinition,
    scope_id: u64,
    trace: &'a ScopeTrace,
}

impl Drop for SavepointGuard<'_> {
    fn drop(&mut self) {
        if let Some((tx, id, sync)) = self.armed.take() {
            if self.open.load(Ordering::Relaxed) {
                tx.abandon_savepoint(id);
            }
            let exec = || tx.savepoint_execution(self.definition, self.scope_id);
            if !self.resolving.load(Ordering::Relaxed) {
                listener::notify(Callback::BeforeRollback, exec);
            }
            listener::notify(Callback::AfterRollback(RollbackCause::Cancelled), exec);
            self.trace
                .close(Some(Completion::RolledBack), Some(RollbackCause::Cancelled));
            if let Some(sync) = sync {
                sync.spawn_finish_cancelled(tx.runtime(), &self.trace.span(), async {}, |_| {});
            }
        }
    }
}

/// A savepoint scope inside the transaction of `owner`: `Nested` (failure rolls back to it and
/// the outer transaction goes on), or a stand-in of a test transaction (`completion`).
pub(crate) async fn savepoint<T, E, F, Fut, R>(
    ctx: Context,
    key: ManagerKey,
    owner: Arc<Scope>,
    definition: &TransactionDefinition,
    completion: SavepointCompletion,
    rollback_on: R,
    body: F,
) -> Result<T, E>
where
    E: From<TxError>,
    F: FnOnce(TransactionStatus) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Fn(&E) -> bool,
{
    let tx = owner.tx.clone().expect("a bound scope has a transaction");
    let scope_id = observe::next_id();
    let trace = ScopeTrace::open(false, || Fields {
        name: definition.get_name(),
        propagation: definition.get_propagation(),
        isolation: tx.definition.get_isolation(),
        read_only: tx.definition.is_read_only(),
        backend: tx.db_system(),
        tx_id: Some(tx.id),
        scope_id,
        scope: "savepoint",
        attempt: tx.attempt(),
    });
    let run = SavepointRun {
        ctx,
        key,
        completion,
        tx,
        scope_id,
        definition,
        trace: &trace,
    };
    match trace.enabled_span().cloned() {
        None => run_savepoint(run, rollback_on, body).await,
        Some(span) => run_savepoint(run, rollback_on, body).instrument(span).await,
    }
}

/// What [`run_savepoint`] runs in.
pub(super) struct SavepointRun<'a> {
    ctx: Context,
    key: ManagerKey,
    completion: SavepointCompletion,
    tx: Arc<Transaction>,
    scope_id: u64,
    definition: &'a TransactionDefinition,
    trace: &'a ScopeTrace,
}

/// The body and completion of [`savepoint`], in its span.
pub(super) async fn run_savepoint<T, E, F, Fut, R>(
    run: SavepointRun<'_>,
    rollback_on: R,
    body: F,
) -> Result<T, E>
where
    E: From<TxError>,
    F: FnOnce(TransactionStatus) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Fn(&E) -> bool,
{
    use SavepointCompletion::{Nested, NewTransaction, WithoutTransaction};
    let SavepointRun {
        ctx,
        key,
        completion,
        tx,
        scope_id,
        definition,
        trace,
    } = run;
    if !tx.manager.supports_savepoints() {
        return Err(TxError::NestedNotSupported.into());
    }
    let Some(parent_sync) = ctx.sync().cloned() else {
        unreachable!("a scope with a transaction owns or joins a hook list")
    };
    tracing::debug!(
        target: "tx",
        "Creating nested transaction with name [{}] in [{}]",
        definition.get_name(),
        tx.name()
    );
    let exec = || tx.savepoint_execution(definition, scope_id);
    listener::notify(Callback::BeforeBegin, exec);
    let id = match tx
        .push_savepoint(ctx.bound_frame(key), name_of(definition))
        .await
    {
        Ok(id) => id,
        Err(e) => {
            listener::notify(Callback::AfterBegin(Some(&e)), exec);
            return Err(e.into());
        }
    };
    listener::notify(Callback::AfterBegin(None), exec);
    let enclosing = ctx.bindings();
    let kind = match completion {
        Nested => ScopeKind::Savepoint,
        NewTransaction => ScopeKind::SavepointAsTransaction,
        WithoutTransaction { .. } => ScopeKind::NoTransaction,
    };
    let scope = Arc::new(Scope::new(kind, Some(tx.clone()), name_of(definition)));
    let owns_hooks = !matches!(completion, WithoutTransaction { owns_hooks: false });
    let sync = if owns_hooks {
        Arc::new(SyncScope::default())
    } else {
        parent_sync.clone()
    };
    let status = TransactionStatus::owner(scope.clone());
    let sp_ctx = ctx
        .bind(key, Some(scope.clone()), Some(id))
        .with_scope(status.clone(), sync.clone());

    let mut guard = SavepointGuard {
        armed: Some((tx.clone(), id, owns_hooks.then(|| sync.clone()))),
        open: AtomicBool::new(true),
        resolving: AtomicBool::new(false),
        definition,
        scope_id,
        trace,
    };
    let end = BodyEnd::from_caught(
        sp_ctx
            .clone()
            .run(AssertUnwindSafe(body(status)).catch_unwind())
            .await,
    );

    // A participant inside that failed marked this scope; that mark belongs to the
    // savepoint and is undone with it (Spring resets it on rollback to savepoint).
    let marked_inside = scope.is_joined_rollback_only();
    let marked = scope.is_local_rollback_only() || marked_inside;
    let cause = match &end {
        BodyEnd::Panicked(_) => Some(RollbackCause::Panic),
        BodyEnd::TimedOut => Some(RollbackCause::Timeout),
        BodyEnd::Returned(Err(e)) if rollback_on(e) => Some(if tx.past_deadline() {
            RollbackCause::Timeout
        } else {
            RollbackCause::Error
        }),
        BodyEnd::Returned(_) => marked.then_some(RollbackCause::RollbackOnly),
    };
    // ROLLBACK TO or RELEASE; a stand-in releases with a fallback that keeps the test
    // transaction usable, and one without a transaction keeps its work either way.
    let rollback = cause.is_some();
    let (tx_ref, open, resolving) = (&tx, &guard.open, &guard.resolving);
    let end_savepoint = move |rollback: bool| async move {
        if !resolving.swap(true, Ordering::Relaxed) {
            let callback = if rollback {
                Callback::BeforeRollback
            } else {
                Callback::BeforeCommit
            };
            listener::notify(callback, exec);
        }
        let r = match completion {
            WithoutTransaction { .. } => {
                if let Err(e) = tx_ref.release_or_roll_back_savepoint(id).await {
                    tracing::debug!(target: "tx", "scope without transaction on savepoint {id}: {e}");
                }
                Ok(())
            }
            NewTransaction if !rollback => tx_ref.release_or_roll_back_savepoint(id).await,
            _ => tx_ref.pop_savepoint(id, rollback).await,
        };
        open.store(false, Ordering::Relaxed);
        r
    };
    // The guard stays armed until the savepoint is resolved: a call cancelled during
    // ROLLBACK TO / RELEASE still has its savepoint undone and its hooks completed.
    // `unresolved`: the savepoint's work could be neither undone nor kept; `refused`: a
    // stand-in of a new transaction did not commit after all.
    let (unresolved, refused) = match (completion, rollback) {
        (WithoutTransaction { owns_hooks: false }, _) => {
            let _ = end_savepoint(rollback).await;
            (None, None)
        }
        (_, true) => {
            let mut failure = None;
            sync.rollback(&sp_ctx, enclosing.as_ref(), async {
                failure = end_savepoint(true).await.err();
            })
            .await;
            (failure, None)
        }
        (Nested, false) => match end_savepoint(false).await {
            Ok(()) => {
                sync.hand_over_to(&parent_sync);
                (None, None)
            }
            Err(e) => {
                sync.rollback(&sp_ctx, enclosing.as_ref(), async {}).await;
                (Some(e), None)
            }
        },
        (NewTransaction | WithoutTransaction { .. }, false) => {
            // A hook may have marked the scope.
            let check = || {
                if scope.is_local_rollback_only() || scope.is_joined_rollback_only() {
                    Err(TxError::UnexpectedRollback)
                } else {
                    Ok(())
                }
            };
            let undo = async {
                if let Err(e) = end_savepoint(true).await {
                    tracing::warn!(target: "tx", "rollback to savepoint of [{}] failed: {e}", scope.name());
                    tx_ref.set_global_rollback_only();
                }
            };
            // Boxed: only test transactions come here, and the future of every scope would
            // otherwise carry this state.
            let (_, r) = Box::pin(sync.commit(
                &sp_ctx,
                enclosing.as_ref(),
                definition.is_read_only(),
                None,
                check,
                end_savepoint(false),
                undo,
            ))
            .await;
            (None, r.err())
        }
    };
    guard.armed = None;
    scope.set_completed();
    let ending = match (cause, &unresolved, &refused) {
        (Some(cause), _, _) => Ending::rolled_back(cause),
        (None, Some(_), _) => Ending::rolled_back(RollbackCause::CommitFailed),
        (None, None, Some(_)) => Ending::rolled_back(RollbackCause::BeforeCommitFailed),
        (None, None, None) => Ending::COMMITTED,
    };
    match ending.cause {
        Some(cause) => listener::notify(Callback::AfterRollback(cause), exec),
        None => listener::notify(Callback::AfterCommit(None), exec),
    }
    trace.close(Some(ending.completion), ending.cause);
    tracing::debug!(
        target: "tx",
        "Completed nested transaction [{}] in [{}]: {}",
        definition.get_name(),
        tx.name(),
        match ending.cause {
            None => "savepoint released".to_owned(),
            Some(cause) => format!("rolled back to savepoint ({cause})"),
        }
    );
    if let Some(e) = unresolved {
        // The savepoint's work could not be undone or kept: the whole transaction must go.
        tx.set_global_rollback_only();
        return Err(e.into());
    }
    if let Some(e) = refused {
        return Err(e.into());
    }
    match end {
        BodyEnd::Returned(Ok(_)) if marked_inside && !scope.is_local_rollback_only() => {
            Err(TxError::UnexpectedRollback.into())
        }
        BodyEnd::Returned(r) => r,
        BodyEnd::TimedOut => Err(TxError::Timeout.into()),
        BodyEnd::Panicked(panic) => resume_unwind(panic),
    }
}
