//! Scopes without a transaction (Supports, NotSupported, Never): statements in autocommit,
//! hooks still collected and completed by the scope that owns them.

use std::future::Future;
use std::panic::{AssertUnwindSafe, resume_unwind};
use std::sync::Arc;

use futures_util::FutureExt;
use tracing::Instrument;

use super::manager_ref::Resolved;
use super::outcome::{completion_of, name_of};
use crate::completion::Completion;
use crate::context::Context;
use crate::definition::{Isolation, TransactionDefinition};
use crate::error::TxError;
use crate::hook_list::SyncScope;
use crate::manager::ManagerKey;
use crate::observe::span::{Fields, ScopeTrace};
use crate::observe::{self, RollbackCause};
use crate::status::TransactionStatus;
use crate::transaction::{Scope, ScopeKind};

/// Completes the hooks of a cancelled scope without a transaction (when it owns them).
pub(super) struct NoTxCancelGuard<'a> {
    armed: bool,
    sync: Option<(Arc<SyncScope>, Option<tokio::runtime::Handle>)>,
    trace: &'a ScopeTrace,
}

impl Drop for NoTxCancelGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.trace
            .close(Some(Completion::RolledBack), Some(RollbackCause::Cancelled));
        if let Some((sync, runtime)) = self.sync.take() {
            sync.spawn_finish_cancelled(runtime.as_ref(), &self.trace.span(), async {}, |_| {});
        }
    }
}

/// Supports/NotSupported/Never without a transaction: statements run in autocommit. Such a
/// scope still collects hooks and, when it owns them, runs them at its end: as committed if it
/// ended `Ok` and unmarked, else as rolled back. `suspend` is the manager whose transaction
/// NotSupported suspends.
pub(super) async fn without_transaction<T, E, F, Fut, R>(
    ctx: Context,
    manager: &Resolved<'_, '_>,
    suspend: Option<ManagerKey>,
    definition: &TransactionDefinition,
    rollback_on: R,
    body: F,
) -> Result<T, E>
where
    E: From<TxError>,
    F: FnOnce(TransactionStatus) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Fn(&E) -> bool,
{
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
    match trace.enabled_span().cloned() {
        None => run_without(ctx, suspend, definition, &trace, rollback_on, body).await,
        Some(span) => {
            run_without(ctx, suspend, definition, &trace, rollback_on, body)
                .instrument(span)
                .await
        }
    }
}

/// The body and hooks of [`without_transaction`], in its span.
pub(super) async fn run_without<T, E, F, Fut, R>(
    ctx: Context,
    suspend: Option<ManagerKey>,
    definition: &TransactionDefinition,
    trace: &ScopeTrace,
    rollback_on: R,
    body: F,
) -> Result<T, E>
where
    E: From<TxError>,
    F: FnOnce(TransactionStatus) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Fn(&E) -> bool,
{
    let scope = Arc::new(Scope::new(
        ScopeKind::NoTransaction,
        None,
        name_of(definition),
    ));
    let status = TransactionStatus::owner(scope.clone());
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
    .with_scope(status.clone(), sync.clone());

    let mut guard = NoTxCancelGuard {
        armed: true,
        sync: owns_sync.then(|| (sync.clone(), tokio::runtime::Handle::try_current().ok())),
        trace,
    };
    let end = ctx
        .clone()
        .run(AssertUnwindSafe(body(status)).catch_unwind())
        .await;
    scope.set_completed();
    let cause = match &end {
        Err(_) => Some(RollbackCause::Panic),
        Ok(Err(e)) if rollback_on(e) => Some(RollbackCause::Error),
        Ok(_) => scope
            .is_local_rollback_only()
            .then_some(RollbackCause::RollbackOnly),
    };
    if !owns_sync {
        guard.armed = false;
        trace.close(Some(completion_of(cause)), cause);
        return match end {
            Ok(r) => r,
            Err(panic) => resume_unwind(panic),
        };
    }
    // Its hooks run after it, outside it, with the suspended transactions still known.
    let enclosing = ctx.bindings();
    let Some(cause) = cause else {
        let (_, hooks) = sync
            .commit(
                &ctx,
                enclosing.as_ref(),
                definition.is_read_only(),
                None,
                || Ok(()),
                async { Ok(()) },
                async {},
            )
            .await;
        // Armed until the hooks completed: a caller that goes away in any phase of them
        // leaves the rest of the sequence to a spawned task (as for a transaction).
        guard.armed = false;
        return match (end, hooks) {
            (Ok(r), Ok(())) => {
                trace.close(Some(Completion::Committed), None);
                r
            }
            (Ok(_), Err(e)) => {
                trace.close(
                    Some(Completion::RolledBack),
                    Some(RollbackCause::BeforeCommitFailed),
                );
                Err(e.into())
            }
            (Err(_), _) => unreachable!("a panic has a cause"),
        };
    };
    sync.rollback(&ctx, enclosing.as_ref(), async {}).await;
    guard.armed = false;
    trace.close(Some(Completion::RolledBack), Some(cause));
    match end {
        Ok(r) => r,
        Err(panic) => resume_unwind(panic),
    }
}
