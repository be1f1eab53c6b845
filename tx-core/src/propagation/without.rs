//! Scopes without a transaction (Supports, NotSupported, Never): statements in autocommit,
//! hooks still collected and completed by the scope that owns them.

use std::sync::Arc;

use tracing::Instrument;

use super::manager_ref::Resolved;
use super::outcome::{BodyEnd, Finish, completion_of, name_of};
use super::owned::Owned;
use crate::completion::Completion;
use crate::context::Context;
use crate::definition::{Isolation, TransactionDefinition};
use crate::hook_list::SyncScope;
use crate::manager::ManagerKey;
use crate::observe::span::{Fields, ScopeTrace};
use crate::observe::{self, RollbackCause};
use crate::status::TransactionStatus;
use crate::transaction::{Scope, ScopeKind};

/// Supports/NotSupported/Never without a transaction: statements run in autocommit. Such a
/// scope still collects hooks and, when it owns them, runs them at its end: as committed if it
/// ended `Ok` and unmarked, else as rolled back. Dropped before it completed (a cancelled
/// call), the hooks it owns finish as rolled back.
pub(super) struct WithoutScope<'a> {
    definition: &'a TransactionDefinition,
    sync: Arc<SyncScope>,
    /// The runtime to finish the hooks on when cancelled (`None` when they are not its own).
    owned_sync: Option<Option<tokio::runtime::Handle>>,
    owned: Owned,
}

impl<'a> WithoutScope<'a> {
    /// `suspend` is the manager whose transaction NotSupported suspends.
    pub(super) fn enter(
        ctx: Context,
        manager: &Resolved<'_, '_>,
        suspend: Option<ManagerKey>,
        definition: &'a TransactionDefinition,
    ) -> WithoutScope<'a> {
        let trace = ScopeTrace::open(false, || Fields {
            name: definition.get_name(),
            propagation: definition.get_propagation(),
            isolation: Isolation::Default,
            read_only: false,
            backend: manager.db_system(),
            tx_id: None,
            scope_id: observe::next_id(),
            scope: "no_transaction",
            attempt: 1,
        });
        let scope = Arc::new(Scope::new(
            ScopeKind::NoTransaction,
            None,
            name_of(definition),
        ));
        // A scope without a transaction inside another such scope registers into that one's
        // list.
        let (sync, owns_sync) = match (suspend, ctx.sync()) {
            (None, Some(outer)) => (outer.clone(), false),
            _ => (Arc::new(SyncScope::default()), true),
        };
        let ctx = match suspend {
            Some(key) => ctx.bind(key, None, None),
            None => ctx,
        }
        .with_scope(TransactionStatus::owner(scope.clone()), sync.clone());
        WithoutScope {
            definition,
            sync,
            owned_sync: owns_sync.then(|| tokio::runtime::Handle::try_current().ok()),
            owned: Owned::new(scope, ctx, trace),
        }
    }

    pub(super) fn owned(&self) -> &Owned {
        &self.owned
    }

    /// Runs the hooks it owns, in the scope's span.
    pub(super) async fn complete(&mut self, end: BodyEnd) -> Finish {
        match self.owned.trace.enabled_span().cloned() {
            None => self.run_hooks(end).await,
            Some(span) => self.run_hooks(end).instrument(span).await,
        }
    }

    async fn run_hooks(&mut self, end: BodyEnd) -> Finish {
        let sync = &*self.sync;
        let (scope, ctx) = (&*self.owned.scope, &self.owned.ctx);
        scope.set_completed();
        let (cause, finish) = match end {
            BodyEnd::Panicked(panic) => (Some(RollbackCause::Panic), Finish::Resume(panic)),
            BodyEnd::Err { rolls_back: true } => (Some(RollbackCause::Error), Finish::Keep),
            BodyEnd::Ok | BodyEnd::Err { .. } => (
                scope
                    .is_local_rollback_only()
                    .then_some(RollbackCause::RollbackOnly),
                Finish::Keep,
            ),
            BodyEnd::TimedOut => unreachable!("a scope without a transaction has no deadline"),
        };
        let (completion, cause, finish) = match cause {
            _ if self.owned_sync.is_none() => (completion_of(cause), cause, finish),
            // Its hooks run after it, outside it, with the suspended transactions still known.
            None => {
                let (_, hooks) = sync
                    .commit(
                        ctx,
                        ctx.bindings().as_ref(),
                        self.definition.is_read_only(),
                        None,
                        || Ok(()),
                        async { Ok(()) },
                        async {},
                    )
                    .await;
                match hooks {
                    Ok(()) => (Completion::Committed, None, finish),
                    Err(e) => (
                        Completion::RolledBack,
                        Some(RollbackCause::BeforeCommitFailed),
                        Finish::Fail(e),
                    ),
                }
            }
            Some(cause) => {
                sync.rollback(ctx, ctx.bindings().as_ref(), async {}).await;
                (Completion::RolledBack, Some(cause), finish)
            }
        };
        // Armed until the hooks completed: a caller that goes away in any phase of them
        // leaves the rest of the sequence to a spawned task (as for a transaction).
        self.owned.disarm();
        self.owned.trace.close(Some(completion), cause);
        finish
    }
}

impl Drop for WithoutScope<'_> {
    fn drop(&mut self) {
        let Some(span) = self.owned.cancelled() else {
            return;
        };
        let _in_span = span.enter();
        self.owned
            .trace
            .close(Some(Completion::RolledBack), Some(RollbackCause::Cancelled));
        if let Some(runtime) = self.owned_sync.take() {
            self.sync
                .clone()
                .spawn_finish_cancelled(runtime.as_ref(), &span, async {}, |_| {});
        }
    }
}
