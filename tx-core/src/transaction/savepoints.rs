//! Opening and resolving savepoint scopes (`RELEASE`, `ROLLBACK TO`), and taking the physical
//! transaction out for completion.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use super::lock::Guarded;
use super::logical::Transaction;
use super::slot::{
    Finishing, Physical, Request, Savepoint, SavepointEnd, remove_with_inner, roll_back_to,
};
use crate::error::TxError;

impl Transaction {
    /// Opens a savepoint scope inside scope `parent` (sent lazily); returns its id.
    pub(crate) async fn push_savepoint(
        &self,
        parent: Option<u64>,
        scope_name: Cow<'static, str>,
    ) -> Result<u64, TxError> {
        let id = self.next_savepoint.fetch_add(1, Ordering::Relaxed);
        let mut slot = Guarded::new(self, self.lock(Request::BeginSavepoint).await?);
        self.undo_abandoned(&mut slot).await?;
        slot.savepoints.push(Savepoint {
            id,
            parent,
            scope_name,
            created: false,
            abandoned: false,
            retryable: None,
        });
        Ok(id)
    }

    /// Marks the savepoint of a dropped `Nested` scope for rollback (a destructor cannot
    /// wait for the lock; the statement that held it was dropped first, so it is free).
    /// When the savepoint cannot be reached, or was being resolved when the scope was
    /// dropped, its work may or may not be undone: the whole transaction must roll back.
    pub(crate) fn abandon_savepoint(&self, id: u64) {
        let marked = self.slot.try_lock().is_ok_and(|mut slot| {
            slot.savepoints
                .iter_mut()
                .find(|sp| sp.id == id)
                .map(|sp| sp.abandoned = true)
                .is_some()
        });
        if !marked {
            self.set_global_rollback_only();
        }
    }

    /// Closes the savepoint scope `id`: `RELEASE` it (when `rollback` is false) or
    /// `ROLLBACK TO` it, if it was ever sent. Savepoints of concurrent sibling scopes stay.
    pub(crate) async fn pop_savepoint(&self, id: u64, rollback: bool) -> Result<(), TxError> {
        let end = if rollback {
            SavepointEnd::RollBack
        } else {
            SavepointEnd::Release
        };
        self.end_savepoint(id, end).await
    }

    /// `RELEASE`s the savepoint scope `id`; when that fails (on PostgreSQL: a statement inside
    /// it failed and aborted the transaction) rolls back to it, so the transaction stays
    /// usable, and returns the release's error. Only when that rollback fails too is the
    /// whole transaction marked rollback-only.
    pub(crate) async fn release_or_roll_back_savepoint(&self, id: u64) -> Result<(), TxError> {
        self.end_savepoint(id, SavepointEnd::ReleaseOrRollBack)
            .await
    }

    pub(super) async fn end_savepoint(&self, id: u64, end: SavepointEnd) -> Result<(), TxError> {
        let mut slot = Guarded::new(self, self.lock(Request::EndSavepoint).await?);
        if end != SavepointEnd::RollBack {
            // A cancelled scope inside this one left its savepoint to be undone: undo it
            // first, or the release would keep its work.
            self.undo_abandoned(&mut slot).await?;
        }
        let Some(pos) = slot.savepoints.iter().position(|sp| sp.id == id) else {
            // Already cleared: the transaction completed.
            return Ok(());
        };
        let sp = &slot.savepoints[pos];
        let (created, parent, name) = (sp.created, sp.parent, sp.name());
        let retryable = sp.retryable.clone();
        if remove_with_inner(&mut slot.savepoints, id) {
            // A scope begun inside this one is still running (its future outlived this
            // scope): its work cannot be kept apart any more.
            self.set_global_rollback_only();
        }
        let slot = &mut *slot;
        let mut rolled_back = end == SavepointEnd::RollBack;
        let result = match (&mut slot.physical, created) {
            (Physical::Active(physical), true) if rolled_back => {
                tracing::debug!(target: "tx", "Rolling back transaction [{}] to savepoint {name}", self.name());
                roll_back_to(physical, &name).await
            }
            (Physical::Active(physical), true) => {
                tracing::debug!(target: "tx", "Releasing savepoint {name} of [{}]", self.name());
                match physical.release_savepoint(&name).await {
                    Err(e) if end == SavepointEnd::ReleaseOrRollBack => {
                        tracing::debug!(target: "tx", "Release of savepoint {name} failed, rolling back to it: {e}");
                        match physical.rollback_to_savepoint(&name).await {
                            Ok(()) => {
                                rolled_back = true;
                                // Only keeps the name from piling up: the work is undone.
                                let _ = physical.release_savepoint(&name).await;
                            }
                            Err(undo) => {
                                tracing::warn!(target: "tx", "rollback to savepoint {name} failed: {undo}");
                                self.set_global_rollback_only();
                            }
                        }
                        Err(e)
                    }
                    r => r,
                }
            }
            _ => Ok(()),
        };
        // A retryable failure undone by the rollback to this savepoint was handled there;
        // otherwise it stays with the enclosing scope.
        if let Some(r) = retryable
            && (result.is_err() || !rolled_back)
        {
            match parent.and_then(|p| slot.savepoints.iter_mut().find(|sp| sp.id == p)) {
                Some(sp) => {
                    sp.retryable.get_or_insert(r);
                }
                None => self.note_retryable_from(r),
            }
        }
        result
    }

    /// Takes the physical transaction out for completion, undoing cancelled savepoints first
    /// when it is to be committed. Later statements fail. The body is done, so a connection
    /// still held belongs to a leaked guard or stream: an error at once, and that holder rolls
    /// the transaction back when it lets go.
    pub(crate) async fn take_physical(
        &self,
        for_commit: bool,
    ) -> Result<Option<Finishing>, TxError> {
        self.finished.store(true, Ordering::Relaxed);
        let mut slot = match self.slot.try_lock() {
            Ok(slot) => slot,
            Err(_) => {
                let holder = self.holder();
                self.leaked.store(true, Ordering::SeqCst);
                // The holder may have let go in between, before it could see `leaked`.
                self.after_release();
                return Err(self.leak_error(holder));
            }
        };
        if for_commit {
            self.undo_abandoned(&mut slot).await?;
        }
        slot.savepoints.clear();
        Ok(slot.finish())
    }

    /// Takes the physical transaction out without waiting (for the drop path); a connection
    /// still held rolls back when its holder lets go.
    pub(crate) fn try_take_physical(&self) -> Option<Finishing> {
        self.finished.store(true, Ordering::Relaxed);
        let Ok(mut slot) = self.slot.try_lock() else {
            self.leaked.store(true, Ordering::SeqCst);
            self.after_release();
            return None;
        };
        slot.finish()
    }
}
