//! A new transaction: begun lazily, committed or rolled back per how its body ended, and
//! completed from a spawned task when the call is cancelled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Instrument;

use super::outcome::{BodyEnd, Finish, RunInfo};
use super::owned::Owned;
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

/// A transaction this scope began (lazily: BEGIN goes out with the first statement).
/// Transactions of the same manager in the enclosing context are suspended while it runs.
/// Dropped before it completed (a cancelled call), it rolls back (unless COMMIT was already
/// sent) and finishes its hooks from where they stopped, in a spawned task (a destructor
/// cannot wait).
pub(super) struct NewTransaction {
    tx: Arc<Transaction>,
    sync: Arc<SyncScope>,
    owned: Owned,
}

impl NewTransaction {
    pub(super) fn enter(
        ctx: Context,
        key: ManagerKey,
        manager: SharedManager,
        definition: &TransactionDefinition,
        attempt: u32,
    ) -> NewTransaction {
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
        let (scope, sync, tx_ctx) = trace.in_scope(|| {
            log_new(&tx.definition);
            listener::notify(Callback::BeforeBegin, || tx.execution());
            let scope = Arc::new(Scope::new(
                ScopeKind::NewTransaction,
                Some(tx.clone()),
                tx.definition.name_cow().clone(),
            ));
            let sync = Arc::new(SyncScope::default());
            let tx_ctx = ctx
                .bind(key, Some(scope.clone()), None)
                .with_scope(TransactionStatus::owner(scope.clone()), sync.clone());
            listener::notify(Callback::AfterBegin(None), || tx.execution());
            (scope, sync, tx_ctx)
        });
        NewTransaction {
            tx,
            sync,
            owned: Owned::new(scope, tx_ctx, trace),
        }
    }

    pub(super) fn owned(&self) -> &Owned {
        &self.owned
    }

    pub(super) fn deadline(&self) -> Option<tokio::time::Instant> {
        self.tx.deadline
    }

    /// Commits or rolls back, in the scope's span, and reports the transaction (also to
    /// `report`, for the retry loop).
    pub(super) async fn complete(&mut self, end: BodyEnd, report: Option<&mut RunInfo>) -> Finish {
        // Decided when the body ended: a body that computed past the deadline without
        // awaiting must not commit, while its own error returned in time stays its error.
        let late = self.tx.past_deadline();
        let (finish, ending) = match self.owned.trace.enabled_span().cloned() {
            None => self.commit_or_roll_back(end, late).await,
            Some(span) => self.commit_or_roll_back(end, late).instrument(span).await,
        };
        self.owned.disarm();
        let _in_span = self.owned.trace.enabled_span().map(tracing::Span::enter);
        self.owned.scope.set_completed();
        finish_transaction(&self.tx, &self.owned.trace, ending);
        let info = RunInfo {
            owned_transaction: true,
            rolled_back: ending.completion == Completion::RolledBack,
            retryable: self.tx.take_retryable(),
            seen_retryable: self.tx.take_seen_retryable(),
        };
        if let Some(report) = report {
            *report = info;
        }
        finish
    }

    /// Commits or rolls back per how the body ended (`late`: past the deadline), and tells
    /// the listeners.
    async fn commit_or_roll_back(&self, end: BodyEnd, late: bool) -> (Finish, Ending) {
        let (tx, sync) = (&self.tx, &*self.sync);
        let (scope, tx_ctx) = (&*self.owned.scope, &self.owned.ctx);
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
        let (finish, cause) = match end {
            BodyEnd::Panicked(panic) => {
                tracing::debug!(target: "tx", "Transactional body of [{}] panicked", tx.name());
                (Finish::Resume(panic), Some(RollbackCause::Panic))
            }
            BodyEnd::TimedOut => {
                tracing::debug!(target: "tx", "Transaction [{}] timed out", tx.name());
                (Finish::Fail(TxError::Timeout), Some(RollbackCause::Timeout))
            }
            BodyEnd::Ok | BodyEnd::Err { .. } if late => {
                // Also a body that failed after the deadline failed because of it (a statement
                // cut by the server's statement timeout, or refused by the engine).
                tracing::debug!(target: "tx", "Transaction [{}] ended past its deadline: rolling back", tx.name());
                (Finish::Fail(TxError::Timeout), Some(RollbackCause::Timeout))
            }
            BodyEnd::Ok => {
                let marked = scope.is_local_rollback_only();
                if marked {
                    tracing::debug!(
                        target: "tx",
                        "Transactional code has requested rollback of [{}]",
                        tx.name()
                    );
                }
                (Finish::Keep, marked.then_some(RollbackCause::RollbackOnly))
            }
            BodyEnd::Err { rolls_back } => {
                let cause = if rolls_back {
                    Some(RollbackCause::Error)
                } else if scope.is_local_rollback_only() {
                    Some(RollbackCause::RollbackOnly)
                } else {
                    None
                };
                (Finish::Keep, cause)
            }
        };
        let (finish, cause) = match cause {
            None if tx.is_global_rollback_only() => {
                tracing::debug!(
                    target: "tx",
                    "Global transaction [{}] is marked as rollback-only but transactional code requested commit",
                    tx.name()
                );
                (
                    Finish::Fail(TxError::UnexpectedRollback),
                    Some(RollbackCause::RollbackOnly),
                )
            }
            cause => (finish, cause),
        };
        if let Some(cause) = cause {
            sync.rollback(tx_ctx, enclosing, rollback()).await;
            let ending = Ending::rolled_back(cause);
            notify_after(tx, ending, None);
            return (finish, ending);
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
                (finish, Ending::COMMITTED)
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
                (Finish::Fail(e), ending)
            }
        }
    }
}

impl Drop for NewTransaction {
    fn drop(&mut self) {
        let Some(span) = self.owned.cancelled() else {
            return;
        };
        let _in_span = span.enter();
        let (tx, trace) = (self.tx.clone(), std::mem::take(&mut self.owned.trace));
        tracing::debug!(target: "tx", "Transactional call [{}] cancelled: rolling back", tx.name());
        let physical = tx.try_take_physical();
        let runtime = tx.runtime().cloned();
        let rolling_back = tx.clone();
        self.sync.clone().spawn_finish_cancelled(
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
