//! The engine's log lines and the listener and metrics reports of a completed transaction.

use crate::completion::Completion;
use crate::definition::TransactionDefinition;
use crate::error::TxError;
use crate::observe::Ending;
use crate::observe::listener::{self, Callback};
use crate::observe::metrics as tx_metrics;
use crate::observe::span::ScopeTrace;
use crate::transaction::Scope;
use crate::transaction::Transaction;

/// `suspended` makes way for a new transaction, or (`!new`) for a scope without one.
pub(super) fn log_suspend(suspended: &Scope, definition: &TransactionDefinition, new: bool) {
    let (current, inner) = (suspended.name(), definition.get_name());
    if new {
        tracing::debug!(target: "tx", "Suspending current transaction [{current}], creating new transaction with name [{inner}]");
    } else {
        tracing::debug!(target: "tx", "Suspending current transaction [{current}] for non-transactional scope [{inner}]");
    }
}

pub(super) fn log_resume(suspended: &Scope) {
    tracing::debug!(
        target: "tx",
        "Resuming suspended transaction [{}] after completion of inner scope",
        suspended.name()
    );
}

pub(super) fn log_new(definition: &TransactionDefinition) {
    tracing::debug!(
        target: "tx",
        "Creating new transaction with name [{}]: {},{}{}{}",
        definition.get_name(),
        definition.get_propagation().spring_name(),
        definition.get_isolation().spring_name(),
        if definition.is_read_only() { ",readOnly" } else { "" },
        definition
            .get_timeout()
            .map(|t| format!(",timeout_{}ms", t.as_millis()))
            .unwrap_or_default(),
    );
}

/// The listeners' `after_commit` or `after_rollback` for a transaction that ended so
/// (`failure`: the error of a commit whose outcome is unknown).
pub(super) fn notify_after(tx: &Transaction, ending: Ending, failure: Option<&TxError>) {
    match ending.cause {
        Some(cause) => listener::notify(Callback::AfterRollback(cause), || tx.execution()),
        None if ending.completion == Completion::Unknown && failure.is_none() => {
            let cancelled = TxError::CommitOutcomeUnknown(
                "the call was cancelled while COMMIT was in flight".into(),
            );
            listener::notify(Callback::AfterCommit(Some(&cancelled)), || tx.execution());
        }
        None => listener::notify(Callback::AfterCommit(failure), || tx.execution()),
    }
}

/// Reports a completed transaction: the log line, its span's outcome, the metrics.
pub(super) fn finish_transaction(tx: &Transaction, trace: &ScopeTrace, ending: Ending) {
    // Recorded first, so that the line shows them in its span's fields.
    trace.close(Some(ending.completion), ending.cause);
    tracing::debug!(target: "tx", "Completed transaction [{}]: {ending}", tx.name());
    tx_metrics::transaction_completed(tx.definition.name_cow(), ending, trace.elapsed());
}
