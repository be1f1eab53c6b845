//! Sending what a statement needs first: the deferred `BEGIN`, the rollback of savepoints of
//! cancelled scopes, and the pending `SAVEPOINT`s of the statement's scope.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use super::logical::{Transaction, chain_held_connections, chain_holds_writer};
use super::slot::{Physical, Savepoint, Slot, is_within, remove_with_inner};
use crate::error::{Operation, TxError};
use crate::manager::BeginOptions;
use crate::observe::metrics::HoldTimer;

impl Transaction {
    /// Sends `BEGIN` (if not yet) and the pending `SAVEPOINT`s of scope `frame` and its
    /// enclosing savepoint scopes, so a statement of that scope can run.
    pub(crate) async fn materialize(
        &self,
        slot: &mut Slot,
        frame: Option<u64>,
    ) -> Result<(), TxError> {
        if self.past_deadline() {
            return Err(TxError::Timeout);
        }
        match slot.physical {
            Physical::Active(_) => {}
            Physical::Finished => {
                return Err(TxError::database(
                    Operation::Statement,
                    false,
                    "the transaction has already completed; a statement cannot run in it",
                ));
            }
            Physical::NotBegun => {
                let options = BeginOptions {
                    isolation: self.definition.get_isolation(),
                    read_only: self.definition.is_read_only(),
                    remaining: self.remaining(),
                    suspended_holds_connection: chain_holds_writer(
                        self.enclosing.as_deref(),
                        self.key,
                    ),
                    suspended_connections: chain_held_connections(
                        self.enclosing.as_deref(),
                        self.key,
                    ),
                    name: self.definition.name_cow().clone(),
                };
                tracing::debug!(
                    target: "tx",
                    "Acquired connection for transaction [{}]: sending BEGIN ({})",
                    self.name(),
                    self.manager.backend_name()
                );
                match self.manager.begin(options).await {
                    Ok(physical) => {
                        slot.physical = Physical::Active(physical);
                        slot.hold = HoldTimer::start(self.definition.name_cow());
                        self.begun.store(true, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if e.is_retryable() {
                            self.note_retryable(e.sqlstate());
                        }
                        return Err(e);
                    }
                }
            }
        }
        self.undo_abandoned(slot).await?;
        if let Some(id) = frame
            && !slot.savepoints.iter().any(|sp| sp.id == id)
        {
            return Err(TxError::ConcurrentScopes {
                message: Cow::Owned(format!(
                    "a statement of a Nested scope of transaction [{}] ran after that scope's \
                     savepoint was resolved (its future outlived the enclosing scope); run \
                     the scope's work inside its body",
                    self.name()
                )),
            });
        }
        if let Some(other) = slot
            .savepoints
            .iter()
            .find(|sp| sp.created && !is_within(&slot.savepoints, sp.id, frame))
        {
            return Err(self.concurrent_error(slot, other, frame));
        }
        let Physical::Active(physical) = &mut slot.physical else {
            unreachable!("begun above")
        };
        for i in 0..slot.savepoints.len() {
            let sp = &slot.savepoints[i];
            if sp.created || !is_within(&slot.savepoints, sp.id, frame) {
                continue;
            }
            let name = sp.name();
            tracing::debug!(target: "tx", "Creating savepoint {name} in [{}]", self.name());
            physical.create_savepoint(&name).await?;
            slot.savepoints[i].created = true;
        }
        Ok(())
    }

    pub(super) fn concurrent_error(
        &self,
        slot: &Slot,
        open: &Savepoint,
        frame: Option<u64>,
    ) -> TxError {
        let requester = match frame.and_then(|id| slot.savepoints.iter().find(|sp| sp.id == id)) {
            Some(sp) => format!("the Nested scope [{}]", sp.scope_name),
            None => format!("the transaction [{}] itself", self.name()),
        };
        TxError::ConcurrentScopes {
            message: Cow::Owned(format!(
                "a statement of {requester} was refused: the savepoint of the concurrent Nested \
                 scope [{}] is open on the transaction's connection, and the statement would run \
                 inside it (undone or kept with that scope, not its own). Scopes of one \
                 transaction running at once (join!, select!) cannot keep their savepoints \
                 apart: run Nested scopes one after another, or give concurrent work its own \
                 transaction (RequiresNew, or a spawned task)",
                open.scope_name
            )),
        }
    }

    /// Rolls back to the savepoints of cancelled `Nested` scopes (with anything begun
    /// inside them).
    pub(super) async fn undo_abandoned(&self, slot: &mut Slot) -> Result<(), TxError> {
        while let Some(pos) = slot.savepoints.iter().position(|sp| sp.abandoned) {
            let sp = &slot.savepoints[pos];
            let (id, created, name) = (sp.id, sp.created, sp.name());
            remove_with_inner(&mut slot.savepoints, id);
            if let (true, Physical::Active(physical)) = (created, &mut slot.physical) {
                tracing::debug!(target: "tx", "Rolling back to savepoint {name} of cancelled nested scope");
                physical.rollback_to_savepoint(&name).await?;
                physical.release_savepoint(&name).await?;
            }
        }
        Ok(())
    }
}
