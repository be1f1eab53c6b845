//! Joining: Required, Supports and Mandatory inside a transaction run in it, and a failure
//! marks it rollback-only for its owner.

use std::sync::Arc;

use super::outcome::{BodyEnd, Finish};
use crate::context::Context;
use crate::definition::{Isolation, TransactionDefinition};
use crate::observe::span::{Fields, ScopeTrace};
use crate::observe::{self, RollbackCause};
use crate::status::TransactionStatus;
use crate::transaction::Scope;

/// A participant in the transaction of `owner`. Dropped before its body ended (a cancelled
/// call), it marks the owner rollback-only: its writes may be half done.
pub(super) struct Join {
    owner: Arc<Scope>,
    /// The context the body runs in (handed over once).
    ctx: Context,
    trace: ScopeTrace,
    running: bool,
}

impl Join {
    /// Required/Supports/Mandatory inside a transaction: run in it.
    pub(super) fn enter(
        ctx: Context,
        owner: Arc<Scope>,
        definition: &TransactionDefinition,
    ) -> Join {
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
        Join {
            owner,
            ctx,
            trace,
            running: true,
        }
    }

    /// The body's context and status.
    pub(super) fn body(&mut self) -> (Context, TransactionStatus) {
        let status = TransactionStatus::participant(self.owner.clone());
        let ctx = std::mem::take(&mut self.ctx).with_status(status.clone());
        (ctx, status)
    }

    pub(super) fn trace(&self) -> &ScopeTrace {
        &self.trace
    }

    /// A failure marks the owner rollback-only; the participant completes nothing.
    pub(super) fn complete(&mut self, end: BodyEnd) -> Finish {
        self.running = false;
        match end {
            BodyEnd::Ok => {
                self.trace.close(None, None);
                Finish::Keep
            }
            BodyEnd::Err { rolls_back } => {
                if rolls_back {
                    self.trace.in_scope(|| {
                        tracing::debug!(
                            target: "tx",
                            "Participating transaction failed - marking existing transaction [{}] as rollback-only",
                            self.owner.name()
                        );
                    });
                    self.owner.mark_joined_rollback_only();
                }
                self.trace
                    .close(None, rolls_back.then_some(RollbackCause::Error));
                Finish::Keep
            }
            BodyEnd::Panicked(panic) => {
                self.owner.mark_joined_rollback_only();
                self.trace.close(None, Some(RollbackCause::Panic));
                Finish::Resume(panic)
            }
            BodyEnd::TimedOut => unreachable!("a participant has no deadline of its own"),
        }
    }
}

impl Drop for Join {
    fn drop(&mut self) {
        if self.running {
            self.owner.mark_joined_rollback_only();
            self.trace.close(None, Some(RollbackCause::Cancelled));
        }
    }
}
