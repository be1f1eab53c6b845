//! What a scope is told about its body, and what it reports back: how the body ended (the
//! body's value stays with the caller), what the call returns instead, and what the retry loop
//! needs to know.

use std::any::Any;
use std::borrow::Cow;

use crate::completion::Completion;
use crate::definition::TransactionDefinition;
use crate::error::TxError;
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

/// How a scope's body ended, as the engine sees it: the body's value is not needed to
/// complete the scope, only whether it was an `Err` that rolls back.
pub(crate) enum BodyEnd {
    /// Returned `Ok`.
    Ok,
    /// Returned `Err`; `rolls_back`: the rollback rules select it.
    Err { rolls_back: bool },
    /// Panicked, with this payload.
    Panicked(Box<dyn Any + Send>),
    /// Ran past its transaction's deadline (and was dropped there).
    TimedOut,
}

/// What a completed scope's call returns.
pub(crate) enum Finish {
    /// What the body returned.
    Keep,
    /// This error instead.
    Fail(TxError),
    /// The body's panic, resumed once the scope is completed.
    Resume(Box<dyn Any + Send>),
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
