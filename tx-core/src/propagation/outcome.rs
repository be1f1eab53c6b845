//! What one run of a scope reports: how its body ended, and what the retry loop needs to know.

use std::borrow::Cow;

use crate::completion::Completion;
use crate::definition::TransactionDefinition;
use crate::observe::RollbackCause;
use crate::transaction::Retryable;

/// What the retry loop needs to know about one run.
#[derive(Clone, Default)]
pub(crate) struct RunInfo {
    /// The run began (and completed) its own transaction.
    pub(crate) owned_transaction: bool,
    /// That transaction rolled back (not committed, not unknown).
    pub(crate) rolled_back: bool,
    /// A statement, `BEGIN` or `COMMIT` of it failed with a serialization failure or
    /// deadlock that no `Nested` scope handled by rolling back to its savepoint.
    pub(crate) retryable: Option<Retryable>,
    /// The first such failure of the transaction, handled by a `Nested` scope or not.
    pub(crate) seen_retryable: Option<Retryable>,
}

/// How a scope's body ended.
pub(super) enum BodyEnd<T, E> {
    Returned(Result<T, E>),
    Panicked(Box<dyn std::any::Any + Send>),
    TimedOut,
}

impl<T, E> BodyEnd<T, E> {
    pub(super) fn from_caught(r: std::thread::Result<Result<T, E>>) -> Self {
        match r {
            Ok(r) => BodyEnd::Returned(r),
            Err(panic) => BodyEnd::Panicked(panic),
        }
    }
}

pub(super) fn completion_of(cause: Option<RollbackCause>) -> Completion {
    match cause {
        None => Completion::Committed,
        Some(_) => Completion::RolledBack,
    }
}

pub(super) fn name_of(definition: &TransactionDefinition) -> Cow<'static, str> {
    definition.name_cow().clone()
}
