//! The transaction's connection lock: who may wait for it (statements of one task, in turns,
//! until the deadline), who is refused at once (user code holding it), and the engine's own
//! guard on it.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use tokio::sync::OwnedMutexGuard;

use super::logical::Transaction;
use super::slot::{Holder, Request, Slot};
use crate::error::TxError;

impl Transaction {
    pub(super) fn holder(&self) -> Holder {
        match self.holder.load(Ordering::Relaxed) {
            1 => Holder::ParkedStream,
            2 => Holder::Connection,
            _ => Holder::Statement,
        }
    }

    pub(crate) fn set_holder(&self, holder: Holder) {
        self.holder.store(holder as u8, Ordering::Relaxed);
        if holder != Holder::Statement {
            // Waiters re-check: they must not wait for user code of their own task.
            self.released.notify_waiters();
        }
    }

    /// Locks the connection for `request` (see the module docs): waits for a statement of
    /// this task (until the deadline), refuses at once when user code holds it.
    pub(crate) async fn lock(&self, request: Request) -> Result<OwnedMutexGuard<Slot>, TxError> {
        if let Ok(slot) = self.slot.clone().try_lock_owned() {
            self.set_holder(Holder::Statement);
            return Ok(slot);
        }
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before trying again, so a release in between is not missed.
            released.as_mut().enable();
            if let Ok(slot) = self.slot.clone().try_lock_owned() {
                self.set_holder(Holder::Statement);
                return Ok(slot);
            }
            let holder = self.holder();
            if holder != Holder::Statement {
                return Err(self.would_block(request, holder));
            }
            match self.deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, released).await.is_err() {
                        return Err(TxError::Timeout);
                    }
                }
                None => released.await,
            }
        }
    }

    /// Called by a guard after it unlocked the connection.
    pub(crate) fn after_release(&self) {
        self.released.notify_waiters();
        if self.leaked.load(Ordering::SeqCst) {
            // The transaction completed while this guard held the connection: roll it back
            // now (dropping the physical transaction rolls it back without blocking).
            let physical = self.slot.try_lock().ok().and_then(|mut slot| {
                slot.savepoints.clear();
                slot.finish()
            });
            if let Some(p) = physical {
                tracing::debug!(target: "tx", "Rolling back [{}] now that its leaked connection guard is gone", self.name());
                self.drop_on_runtime(p);
            }
        }
    }

    /// Drops `value` where a runtime is available (dropping a physical transaction returns its
    /// connection, which needs the runtime), never panicking outside one.
    pub(crate) fn drop_on_runtime<T: Send + 'static>(&self, value: T) {
        if tokio::runtime::Handle::try_current().is_ok() {
            drop(value);
        } else if let Some(rt) = &self.runtime {
            let _entered = rt.enter();
            drop(value);
        } else {
            let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(value)));
            if dropped.is_err() {
                tracing::warn!(target: "tx", "dropping transaction [{}] outside a tokio runtime panicked", self.name());
            }
        }
    }

    pub(super) fn would_block(&self, request: Request, holder: Holder) -> TxError {
        let held = match holder {
            Holder::ParkedStream => {
                "a fetch stream of this transaction is open (between two rows it holds the \
                 transaction's only connection until it ends or is dropped)"
            }
            _ => {
                "a TxConnection guard of this transaction (TxPool::acquire) is alive (it holds \
                 the transaction's only connection until it is dropped)"
            }
        };
        let (what, fix) = match request {
            Request::Statement | Request::Stream => (
                "A statement on the TxPool",
                "Finish or drop the stream first (or read all rows with fetch_all), or run the \
                 statement on the guard's own connection (&mut *conn)",
            ),
            Request::Connection => (
                "TxPool::acquire()",
                "Drop the stream or the other guard first, or keep using that one",
            ),
            Request::BeginSavepoint => (
                "Beginning a Nested scope",
                "Drop the guard or finish the stream before calling the Nested scope",
            ),
            Request::EndSavepoint => (
                "Ending a Nested scope",
                "Drop guards and streams inside the scope's body; never return them out of it",
            ),
        };
        TxError::WouldBlock {
            message: Cow::Owned(format!(
                "{what} in transaction [{}] would wait forever: {held}, and that is held by \
                 this same task. {fix}.",
                self.name()
            )),
        }
    }

    pub(super) fn leak_error(&self, holder: Holder) -> TxError {
        let held = match holder {
            Holder::ParkedStream => "a fetch stream",
            Holder::Connection => "a TxConnection guard (TxPool::acquire)",
            Holder::Statement => "a statement future",
        };
        TxError::WouldBlock {
            message: Cow::Owned(format!(
                "transaction [{}] cannot complete: {held} of it is still alive after its body \
                 returned (returned out of the body, stored, or leaked), and it holds the \
                 transaction's connection. Nothing was committed; the transaction rolls back \
                 when it is dropped. Drop guards and streams inside the transactional body.",
                self.name()
            )),
        }
    }
}

/// The engine's own hold on the connection: releasing it wakes waiters.
pub(crate) struct Guarded<'a> {
    tx: &'a Transaction,
    slot: Option<OwnedMutexGuard<Slot>>,
}

impl<'a> Guarded<'a> {
    pub(crate) fn new(tx: &'a Transaction, slot: OwnedMutexGuard<Slot>) -> Self {
        Guarded {
            tx,
            slot: Some(slot),
        }
    }
}

impl std::ops::Deref for Guarded<'_> {
    type Target = Slot;
    fn deref(&self) -> &Slot {
        self.slot.as_ref().expect("held until drop")
    }
}

impl std::ops::DerefMut for Guarded<'_> {
    fn deref_mut(&mut self) -> &mut Slot {
        self.slot.as_mut().expect("held until drop")
    }
}

impl Drop for Guarded<'_> {
    fn drop(&mut self) {
        drop(self.slot.take());
        self.tx.after_release();
    }
}
