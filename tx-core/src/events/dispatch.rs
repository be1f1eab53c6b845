//! Dispatch of one published event: the listeners that run at once, and the one hook per event
//! that runs the transactional listeners in the phases of the publishing transaction.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;

use super::phase::TransactionPhase;
use super::registry::{AnyEvent, Entry, TypeListeners};
use crate::completion::Completion;
use crate::error::{BoxError, TxError};
use crate::synchronization::{TransactionSynchronization, panic_message};

/// Without a transaction: runs the listeners that asked for it, phase by phase.
pub(super) async fn run_fallback(
    listeners: &TypeListeners,
    event: &AnyEvent,
) -> Result<(), TxError> {
    let mut skipped = 0usize;
    for phase in TransactionPhase::ALL {
        for entry in listeners.list(phase) {
            if !entry.fallback {
                skipped += 1;
                continue;
            }
            if phase == TransactionPhase::BeforeCommit {
                entry.call(event).await.map_err(TxError::Listener)?;
            } else {
                run_logged(entry, phase, listeners.event_type, event).await;
            }
        }
    }
    if skipped > 0 {
        tracing::debug!(
            target: "tx",
            "No transaction is active - skipping {skipped} transactional listener(s) of {}",
            listeners.event_type
        );
    }
    Ok(())
}

/// Runs an after-phase listener; its failure or panic is logged, never returned.
pub(super) async fn run_logged(
    entry: &Entry,
    phase: TransactionPhase,
    event_type: &str,
    event: &AnyEvent,
) {
    match AssertUnwindSafe(async { entry.call(event).await })
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(
            target: "tx",
            "{phase:?} listener of {event_type} failed: {e}; ignored, the transaction outcome stands"
        ),
        Err(panic) => tracing::error!(
            target: "tx",
            "{phase:?} listener of {event_type} {}; ignored, the transaction outcome stands",
            panic_message(&*panic)
        ),
    }
}

/// One published event, waiting for its transaction to complete.
pub(super) struct EventSynchronization {
    pub(super) event: AnyEvent,
    pub(super) listeners: Arc<TypeListeners>,
}

impl EventSynchronization {
    async fn run_phase(&self, phase: TransactionPhase) {
        for entry in self.listeners.list(phase) {
            run_logged(entry, phase, self.listeners.event_type, &self.event).await;
        }
    }
}

impl TransactionSynchronization for EventSynchronization {
    async fn before_commit(&self, _read_only: bool) -> Result<(), BoxError> {
        for entry in self.listeners.list(TransactionPhase::BeforeCommit) {
            if let Err(e) = entry.call(&self.event).await {
                tracing::debug!(
                    target: "tx",
                    "BeforeCommit listener of {} failed: {e}",
                    self.listeners.event_type
                );
                return Err(e);
            }
        }
        Ok(())
    }

    async fn after_commit(&self) {
        self.run_phase(TransactionPhase::AfterCommit).await;
    }

    async fn after_completion(&self, completion: Completion) {
        if completion == Completion::RolledBack {
            self.run_phase(TransactionPhase::AfterRollback).await;
        }
        self.run_phase(TransactionPhase::AfterCompletion).await;
    }
}
