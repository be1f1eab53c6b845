//! A savepoint scope: `Nested` inside a transaction, or a stand-in of a test transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Instrument;

use super::outcome::{BodyEnd, Finish, name_of};
use super::owned::Owned;
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
use crate::transaction::{Binding, SavepointCompletion, Transaction};
use crate::transaction::{Scope, ScopeKind};

/// A savepoint scope inside the transaction of its owner: `Nested` (failure rolls back to it
/// and the outer transaction goes on), or a stand-in of a test transaction (`completion`).
/// Dropped before it finished (a cancelled call), it rolls the savepoint back and the hooks
/// it owns finish as rolled back.
pub(super) struct SavepointScope<'a> {
    tx: Arc<Transaction>,
    /// The savepoint.
    id: u64,
    scope_id: u64,
    definition: &'a TransactionDefinition,
    completion: SavepointCompletion,
    /// The hook list of the scope (the enclosing owner's when it owns none).
    sync: Arc<SyncScope>,
    /// The enclosing owner's hook list.
    parent_sync: Arc<SyncScope>,
    owns_hooks: bool,
    enclosing: Option<Arc<Binding>>,
    /// Armed until the savepoint is resolved.
    owned: Owned,
    /// Whether the savepoint is still open (its ROLLBACK TO / RELEASE has not returned).
    open: AtomicBool,
    /// Whether the listeners got `before_commit` or `before_rollback` already.
    resolving: AtomicBool,
}

/// A savepoint scope about to be entered: the one entry that awaits (its SAVEPOINT is taken
/// before the body runs), so deciding on it needs no await.
pub(super) struct SavepointEntry<'a> {
    ctx: Context,
    key: ManagerKey,
    owner: Arc<Scope>,
    definition: &'a TransactionDefinition,
    completion: SavepointCompletion,
}

impl<'a> SavepointEntry<'a> {
    pub(super) fn new(
        ctx: Context,
        key: ManagerKey,
        owner: Arc<Scope>,
        definition: &'a TransactionDefinition,
        completion: SavepointCompletion,
    ) -> SavepointEntry<'a> {
        SavepointEntry {
            ctx,
            key,
            owner,
            definition,
            completion,
        }
    }

    /// Takes a savepoint of the owner's transaction, in the scope's span.
    pub(super) async fn enter(self) -> Result<SavepointScope<'a>, TxError> {
        let SavepointEntry {
            ctx,
            key,
            owner,
            definition,
            completion,
        } = self;
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
        let span = trace.enabled_span().cloned();
        let begin = SavepointScope::begin(ctx, key, tx, scope_id, definition, completion, trace);
        match span {
            None => begin.await,
            Some(span) => begin.instrument(span).await,
        }
    }
}

impl<'a> SavepointScope<'a> {
    async fn begin(
        ctx: Context,
        key: ManagerKey,
        tx: Arc<Transaction>,
        scope_id: u64,
        definition: &'a TransactionDefinition,
        completion: SavepointCompletion,
        trace: ScopeTrace,
    ) -> Result<SavepointScope<'a>, TxError> {
        use SavepointCompletion::{Nested, NewTransaction, WithoutTransaction};
        if !tx.manager.supports_savepoints() {
            return Err(TxError::NestedNotSupported);
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
                return Err(e);
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
        let sp_ctx = ctx
            .bind(key, Some(scope.clone()), Some(id))
            .with_scope(TransactionStatus::owner(scope.clone()), sync.clone());
        Ok(SavepointScope {
            tx,
            id,
            scope_id,
            definition,
            completion,
            sync,
            parent_sync,
            owns_hooks,
            enclosing,
            owned: Owned::new(scope, sp_ctx, trace),
            open: AtomicBool::new(true),
            resolving: AtomicBool::new(false),
        })
    }

    pub(super) fn owned(&self) -> &Owned {
        &self.owned
    }

    /// A stand-in of a new transaction keeps its deadline: past it, the scope is marked
    /// rollback-only and its body fails with [`TxError::Timeout`].
    #[cfg(feature = "testing")]
    pub(super) fn stand_in_timeout(&self) -> Option<std::time::Duration> {
        match self.completion {
            SavepointCompletion::NewTransaction => self.definition.get_timeout(),
            _ => None,
        }
    }

    /// The stand-in's body ran past its deadline.
    #[cfg(feature = "testing")]
    pub(super) fn stand_in_timed_out(&self) -> TxError {
        TransactionStatus::owner(self.owned.scope.clone()).set_rollback_only();
        TxError::Timeout
    }

    /// Releases or rolls back the savepoint, in the scope's span.
    pub(super) async fn complete(&mut self, end: BodyEnd) -> Finish {
        match self.owned.trace.enabled_span().cloned() {
            None => self.resolve(end).await,
            Some(span) => self.resolve(end).instrument(span).await,
        }
    }

    async fn resolve(&mut self, end: BodyEnd) -> Finish {
        use SavepointCompletion::{Nested, NewTransaction, WithoutTransaction};
        let (tx, id, definition, completion) =
            (&self.tx, self.id, self.definition, self.completion);
        let (scope, sync, sp_ctx) = (&*self.owned.scope, &*self.sync, &self.owned.ctx);
        let enclosing = self.enclosing.as_ref();
        let exec = || tx.savepoint_execution(definition, self.scope_id);
        // A participant inside that failed marked this scope; that mark belongs to the
        // savepoint and is undone with it (Spring resets it on rollback to savepoint).
        let marked_inside = scope.is_joined_rollback_only();
        let marked = scope.is_local_rollback_only() || marked_inside;
        let cause = match &end {
            BodyEnd::Panicked(_) => Some(RollbackCause::Panic),
            BodyEnd::TimedOut => Some(RollbackCause::Timeout),
            BodyEnd::Err { rolls_back: true } => Some(if tx.past_deadline() {
                RollbackCause::Timeout
            } else {
                RollbackCause::Error
            }),
            BodyEnd::Ok | BodyEnd::Err { .. } => marked.then_some(RollbackCause::RollbackOnly),
        };
        // ROLLBACK TO or RELEASE; a stand-in releases with a fallback that keeps the test
        // transaction usable, and one without a transaction keeps its work either way.
        let rollback = cause.is_some();
        let (open, resolving) = (&self.open, &self.resolving);
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
                    if let Err(e) = tx.release_or_roll_back_savepoint(id).await {
                        tracing::debug!(target: "tx", "scope without transaction on savepoint {id}: {e}");
                    }
                    Ok(())
                }
                NewTransaction if !rollback => tx.release_or_roll_back_savepoint(id).await,
                _ => tx.pop_savepoint(id, rollback).await,
            };
            open.store(false, Ordering::Relaxed);
            r
        };
        // Armed until the savepoint is resolved: a call cancelled during ROLLBACK TO /
        // RELEASE still has its savepoint undone and its hooks completed. `unresolved`: the
        // savepoint's work could be neither undone nor kept; `refused`: a stand-in of a new
        // transaction did not commit after all.
        let (unresolved, refused) = match (completion, rollback) {
            (WithoutTransaction { owns_hooks: false }, _) => {
                let _ = end_savepoint(rollback).await;
                (None, None)
            }
            (_, true) => {
                let mut failure = None;
                sync.rollback(sp_ctx, enclosing, async {
                    failure = end_savepoint(true).await.err();
                })
                .await;
                (failure, None)
            }
            (Nested, false) => match end_savepoint(false).await {
                Ok(()) => {
                    sync.hand_over_to(&self.parent_sync);
                    (None, None)
                }
                Err(e) => {
                    sync.rollback(sp_ctx, enclosing, async {}).await;
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
                        tx.set_global_rollback_only();
                    }
                };
                // Boxed: only test transactions come here, and the future of every scope would
                // otherwise carry this state.
                let (_, r) = Box::pin(sync.commit(
                    sp_ctx,
                    enclosing,
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
        self.owned.disarm();
        let scope = &*self.owned.scope;
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
        self.owned
            .trace
            .close(Some(ending.completion), ending.cause);
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
            return Finish::Fail(e);
        }
        if let Some(e) = refused {
            return Finish::Fail(e);
        }
        match end {
            BodyEnd::Ok if marked_inside && !scope.is_local_rollback_only() => {
                Finish::Fail(TxError::UnexpectedRollback)
            }
            BodyEnd::Ok | BodyEnd::Err { .. } => Finish::Keep,
            BodyEnd::TimedOut => Finish::Fail(TxError::Timeout),
            BodyEnd::Panicked(panic) => Finish::Resume(panic),
        }
    }
}

impl Drop for SavepointScope<'_> {
    fn drop(&mut self) {
        let Some(span) = self.owned.cancelled() else {
            return;
        };
        let _in_span = span.enter();
        let tx = &self.tx;
        if self.open.load(Ordering::Relaxed) {
            tx.abandon_savepoint(self.id);
        }
        let exec = || tx.savepoint_execution(self.definition, self.scope_id);
        if !self.resolving.load(Ordering::Relaxed) {
            listener::notify(Callback::BeforeRollback, exec);
        }
        listener::notify(Callback::AfterRollback(RollbackCause::Cancelled), exec);
        self.owned
            .trace
            .close(Some(Completion::RolledBack), Some(RollbackCause::Cancelled));
        if self.owns_hooks {
            self.sync
                .clone()
                .spawn_finish_cancelled(tx.runtime(), &span, async {}, |_| {});
        }
    }
}
