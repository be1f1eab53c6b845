//! The order of the hook phases around COMMIT and ROLLBACK (Spring's
//! `AbstractPlatformTransactionManager.processCommit`), run by every scope that owns hooks.
//!
//! Commit: every `before_commit`, every `before_completion`, COMMIT, every `after_commit`,
//! every `after_completion(Committed)`. Rollback: every `before_completion`, ROLLBACK, every
//! `after_completion(RolledBack)`. Each phase runs over all hooks in registration order.
//! `before_commit` may veto the commit; later phases cannot undo anything, so their failures
//! and panics are logged and the next hook still runs.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::Instrument;

use crate::completion::Completion;
use crate::context::Context as TxContext;
use crate::error::TxError;
use crate::hook_list::{Stage, SyncScope};
use crate::transaction::Binding;

impl SyncScope {
    /// The context hooks run in once their scope completed: outside every transaction, still
    /// knowing which transactions this task holds (a single-writer backend fails fast there).
    fn after_context(&self, enclosing: Option<&Arc<Binding>>) -> TxContext {
        if self.is_empty() {
            TxContext::default()
        } else {
            TxContext::suspended(enclosing)
        }
    }

    /// Every `after_completion(completion)`, then the sequence is finished.
    async fn complete(&self, enclosing: Option<&Arc<Binding>>, completion: Completion) {
        self.set_completion(completion);
        self.begin_phase(Stage::AfterCompletion);
        self.after_context(enclosing).run(self.drive()).await;
        self.set_stage(Stage::Finished);
    }

    /// The commit sequence around `commit` (the physical COMMIT, or nothing for a scope
    /// without a transaction). The phases before COMMIT run in `tx_ctx` (statements still go
    /// into the transaction), `before_commit` bounded by `deadline`; `check` then decides
    /// whether COMMIT may still go out (a hook may have marked the transaction, or run past
    /// its deadline). The phases after it run outside the transaction (`enclosing`: the
    /// bindings of the scopes around it).
    ///
    /// Returns how it ended, and the error when it did not commit.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn commit<C, F, R>(
        &self,
        tx_ctx: &TxContext,
        enclosing: Option<&Arc<Binding>>,
        read_only: bool,
        deadline: Option<Instant>,
        check: C,
        commit: F,
        rollback: R,
    ) -> (Completion, Result<(), TxError>)
    where
        C: FnOnce() -> Result<(), TxError>,
        F: Future<Output = Result<(), TxError>>,
        R: Future<Output = ()>,
    {
        self.set_stage(Stage::BeforeCommit);
        let before = tx_ctx.clone().run(self.before_commit(read_only));
        let before = match deadline {
            Some(d) => tokio::time::timeout_at(d, before)
                .await
                .unwrap_or(Err(TxError::Timeout)),
            None => before.await,
        };
        let checked = match before {
            // A hook that failed past the deadline failed because of it.
            Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => Err(TxError::Timeout),
            Err(e) => Err(e),
            Ok(()) => {
                self.begin_phase(Stage::BeforeCompletion);
                tx_ctx.clone().run(self.drive()).await;
                check()
            }
        };
        if let Err(e) = checked {
            tracing::debug!(target: "tx", "not committing, rolling back: {e}");
            self.rollback(tx_ctx, enclosing, rollback).await;
            return (Completion::RolledBack, Err(e));
        }
        self.set_stage(Stage::CommitSent);
        let (completion, result) = match commit.await {
            Ok(()) => {
                self.begin_phase(Stage::AfterCommit);
                self.after_context(enclosing).run(self.drive()).await;
                (Completion::Committed, Ok(()))
            }
            Err(e @ TxError::CommitOutcomeUnknown(_)) => (Completion::Unknown, Err(e)),
            Err(e) => (Completion::RolledBack, Err(e)),
        };
        self.complete(enclosing, completion).await;
        (completion, result)
    }

    /// The rollback sequence around `rollback` (the physical ROLLBACK or ROLLBACK TO).
    pub(crate) async fn rollback(
        &self,
        tx_ctx: &TxContext,
        enclosing: Option<&Arc<Binding>>,
        rollback: impl Future<Output = ()>,
    ) {
        if self.stage() < Stage::BeforeCompletion {
            self.begin_phase(Stage::BeforeCompletion);
        }
        if self.stage() == Stage::BeforeCompletion {
            tx_ctx.clone().run(self.drive()).await;
        }
        self.set_stage(Stage::RollbackSent);
        rollback.await;
        self.complete(enclosing, Completion::RolledBack).await;
    }

    /// Finishes the sequence of a scope dropped before it completed (a cancelled call), from
    /// where it stopped, a hook call in progress included: before COMMIT was sent it rolls back
    /// (`rollback`); with COMMIT in flight the outcome is unknown; after it, the remaining
    /// `after_commit` calls run, then every `after_completion(Committed)`.
    ///
    /// Returns the outcome the sequence reached.
    pub(crate) async fn finish_cancelled(&self, rollback: impl Future<Output = ()>) -> Completion {
        let ctx = TxContext::default();
        match self.stage() {
            Stage::Open | Stage::BeforeCommit | Stage::BeforeCompletion => {
                self.rollback(&ctx, None, rollback).await;
            }
            Stage::RollbackSent => self.complete(None, Completion::RolledBack).await,
            Stage::CommitSent => self.complete(None, Completion::Unknown).await,
            Stage::AfterCommit => {
                ctx.run(self.drive()).await;
                self.complete(None, Completion::Committed).await;
            }
            Stage::AfterCompletion => {
                ctx.run(self.drive()).await;
                self.set_stage(Stage::Finished);
            }
            Stage::Finished => {}
        }
        self.completion()
    }

    /// Spawns [`finish_cancelled`](Self::finish_cancelled) (a destructor cannot wait) on the
    /// current runtime, or outside any on `runtime` (the one the scope began on), in `span`
    /// (the cancelled scope's), then calls `done` with the outcome. Without either runtime,
    /// `rollback` is dropped, which drops the physical transaction and so rolls it back.
    pub(crate) fn spawn_finish_cancelled(
        self: Arc<Self>,
        runtime: Option<&tokio::runtime::Handle>,
        span: &tracing::Span,
        rollback: impl Future<Output = ()> + Send + 'static,
        done: impl FnOnce(Completion) + Send + 'static,
    ) {
        let finish =
            async move { done(self.finish_cancelled(rollback).await) }.instrument(span.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(finish);
            }
            Err(_) => match runtime {
                Some(rt) => {
                    rt.spawn(finish);
                }
                None => {
                    tracing::warn!(
                        target: "tx",
                        "transactional scope dropped outside a tokio runtime: rolled back, hooks not run"
                    );
                    let dropped = std::panic::catch_unwind(AssertUnwindSafe(move || drop(finish)));
                    if dropped.is_err() {
                        tracing::warn!(target: "tx", "dropping a cancelled scope outside a tokio runtime panicked");
                    }
                }
            },
        }
    }
}
