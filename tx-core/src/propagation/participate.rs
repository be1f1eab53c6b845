//! Joining: Required, Supports and Mandatory inside a transaction run in it, and a failure
//! marks it rollback-only for its owner.

use std::future::Future;
use std::panic::{AssertUnwindSafe, resume_unwind};
use std::sync::Arc;

use futures_util::FutureExt;
use tracing::Instrument;

use crate::context::Context;
use crate::definition::{Isolation, TransactionDefinition};
use crate::observe::span::{Fields, ScopeTrace};
use crate::observe::{self, RollbackCause};
use crate::status::TransactionStatus;
use crate::transaction::Scope;

/// Marks the owner scope rollback-only if a participant is dropped before it finished (its
/// writes may be half done).
pub(super) struct ParticipantGuard<'a> {
    owner: Option<&'a Scope>,
    trace: &'a ScopeTrace,
}

impl Drop for ParticipantGuard<'_> {
    fn drop(&mut self) {
        if let Some(owner) = self.owner {
            owner.mark_joined_rollback_only();
            self.trace.close(None, Some(RollbackCause::Cancelled));
        }
    }
}

/// Required/Supports/Mandatory inside a transaction: run in it; a failure marks it
/// rollback-only for its owner.
pub(super) async fn participate<T, E, F, Fut, R>(
    ctx: Context,
    owner: Arc<Scope>,
    definition: &TransactionDefinition,
    rollback_on: R,
    body: F,
) -> Result<T, E>
where
    F: FnOnce(TransactionStatus) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Fn(&E) -> bool,
{
    // The hot path: with no interested subscriber, one callsite check and no-op enters.
    let trace = ScopeTrace::open(false, || {
        let tx = owner.tx.as_deref();
        Fields {
            name: definition.get_name(),
            propagation: definition.get_propagation(),
            isolation: tx.map_or(Isolation::Default, |tx| tx.definition.get_isolation()),
            read_only: tx.is_some_and(|tx| tx.definition.is_read_only()),
            backend: tx.map_or("unknown", |tx| tx.db_system()),
            tx_id: tx.map(|tx| tx.id),
            scope_id: observe::next_id(),
            scope: "participant",
            attempt: tx.map_or(1, |tx| tx.attempt()),
        }
    });
    trace.in_scope(|| {
        tracing::debug!(target: "tx", "Participating in existing transaction [{}]", owner.name());
    });
    let status = TransactionStatus::participant(owner.clone());
    let mut guard = ParticipantGuard {
        owner: Some(&owner),
        trace: &trace,
    };
    // Two awaits rather than one wrapper: without a span the body is polled as before.
    let end = match trace.enabled_span() {
        None => {
            ctx.with_status(status.clone())
                .run(AssertUnwindSafe(body(status)).catch_unwind())
                .await
        }
        Some(span) => {
            ctx.with_status(status.clone())
                .run(AssertUnwindSafe(body(status)).catch_unwind())
                .instrument(span.clone())
                .await
        }
    };
    guard.owner = None;
    match end {
        Ok(Ok(v)) => {
            trace.close(None, None);
            Ok(v)
        }
        Ok(Err(e)) => {
            let marks = rollback_on(&e);
            if marks {
                trace.in_scope(|| {
                    tracing::debug!(
                        target: "tx",
                        "Participating transaction failed - marking existing transaction [{}] as rollback-only",
                        owner.name()
                    );
                });
                owner.mark_joined_rollback_only();
            }
            trace.close(None, marks.then_some(RollbackCause::Error));
            Err(e)
        }
        Err(panic) => {
            owner.mark_joined_rollback_only();
            trace.close(None, Some(RollbackCause::Panic));
            resume_unwind(panic)
        }
    }
}
