//! The hooks of one closure ([`after_commit`](crate::after_commit),
//! [`after_rollback`](crate::after_rollback), [`after_completion`](crate::after_completion)):
//! each runs in one phase only, so it implements the object-safe hook directly and skips the
//! other phases with futures of size zero (boxing those allocates nothing), where a
//! [`TransactionSynchronization`](crate::TransactionSynchronization) would box a call of
//! every phase, empty or not.

use std::sync::{Arc, Mutex};

use crate::completion::Completion;
use crate::error::BoxError;
use crate::hook_list::{Accepted, DynSynchronization, Phase, Skipped, caught};
use crate::manager::BoxFuture;

/// The closure (or future) of a hook, taken by its one call.
pub(crate) struct OnCompletion<F>(pub(crate) Mutex<Option<F>>);

impl<F> OnCompletion<F> {
    pub(crate) fn new(f: F) -> Self {
        OnCompletion(Mutex::new(Some(f)))
    }

    fn take(&self) -> Option<F> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Runs its future in the one phase `runs_in` accepts (after COMMIT, or after ROLLBACK).
pub(crate) struct OnPhase {
    pub(crate) runs_in: fn(Phase) -> bool,
    pub(crate) fut: OnCompletion<BoxFuture<'static, ()>>,
}

impl DynSynchronization for OnPhase {
    fn before_commit(&self, _read_only: bool) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(Accepted)
    }

    fn call(self: Arc<Self>, phase: Phase) -> BoxFuture<'static, ()> {
        if !(self.runs_in)(phase) {
            return Box::pin(Skipped);
        }
        caught(phase, async move {
            if let Some(fut) = self.fut.take() {
                fut.await;
            }
        })
    }
}

/// A closure called with the outcome, building the future run after completion.
pub(crate) type CompletionFn = Box<dyn FnOnce(Completion) -> BoxFuture<'static, ()> + Send>;

/// Runs its closure after COMMIT or ROLLBACK, with the outcome.
pub(crate) struct AfterCompletion(pub(crate) OnCompletion<CompletionFn>);

impl DynSynchronization for AfterCompletion {
    fn before_commit(&self, _read_only: bool) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(Accepted)
    }

    fn call(self: Arc<Self>, phase: Phase) -> BoxFuture<'static, ()> {
        match phase {
            Phase::AfterCompletion(completion) => caught(phase, async move {
                if let Some(f) = self.0.take() {
                    f(completion).await;
                }
            }),
            Phase::BeforeCompletion | Phase::AfterCommit => Box::pin(Skipped),
        }
    }
}
