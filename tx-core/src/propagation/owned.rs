//! What every scope that decides an outcome holds (a new transaction, a savepoint, a scope
//! without a transaction): the scope its body sees, the context the body runs in, its trace,
//! and whether it still has to complete.

use std::sync::Arc;

use tracing::Span;

use crate::context::Context;
use crate::observe::span::ScopeTrace;
use crate::status::TransactionStatus;
use crate::transaction::Scope;

pub(super) struct Owned {
    pub(super) scope: Arc<Scope>,
    pub(super) ctx: Context,
    pub(super) trace: ScopeTrace,
    /// Not completed yet: dropped so, the scope completes as cancelled.
    armed: bool,
}

impl Owned {
    pub(super) fn new(scope: Arc<Scope>, ctx: Context, trace: ScopeTrace) -> Owned {
        Owned {
            scope,
            ctx,
            trace,
            armed: true,
        }
    }

    /// The body's context and status.
    pub(super) fn body(&self) -> (Context, TransactionStatus) {
        (
            self.ctx.clone(),
            TransactionStatus::owner(self.scope.clone()),
        )
    }

    /// The scope completed: dropping it is no cancellation any more.
    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }

    /// In a destructor: the scope's span (to complete it as cancelled in), unless it completed.
    pub(super) fn cancelled(&self) -> Option<Span> {
        self.armed.then(|| self.trace.span())
    }
}
