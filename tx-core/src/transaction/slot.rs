//! The physical side of a transaction, behind its connection lock: the physical transaction
//! (not begun, active, finished), the stack of savepoint scopes, and who holds the lock.

use std::borrow::Cow;

use crate::error::TxError;
use crate::manager::PhysicalTransaction;
use crate::observe::metrics::HoldTimer;

/// The physical side of a transaction, behind the transaction's async mutex.
pub(crate) struct Slot {
    pub(crate) physical: Physical,
    /// Open savepoint scopes, in the order they began.
    pub(crate) savepoints: Vec<Savepoint>,
    /// How long the active physical transaction has held its connection (metrics).
    pub(super) hold: HoldTimer,
}

/// A physical transaction taken out for completion, with its connection-hold timer (recorded
/// once its connection is back: after `COMMIT`/`ROLLBACK`, or when it is dropped).
pub(crate) struct Finishing {
    pub(super) physical: Box<dyn PhysicalTransaction>,
    pub(super) hold: HoldTimer,
}

impl Finishing {
    pub(crate) async fn commit(self) -> Result<(), TxError> {
        let Finishing { physical, hold } = self;
        let result = physical.commit().await;
        hold.stop();
        result
    }

    pub(crate) async fn rollback(self) -> Result<(), TxError> {
        let Finishing { physical, hold } = self;
        let result = physical.rollback().await;
        hold.stop();
        result
    }
}

pub(crate) enum Physical {
    /// No statement has run yet: nothing sent, no connection held.
    NotBegun,
    Active(Box<dyn PhysicalTransaction>),
    /// Committed or rolled back (or begin failed); no further statement may run in it.
    Finished,
}

pub(crate) struct Savepoint {
    pub(crate) id: u64,
    /// The savepoint scope it began in (`None`: directly in the transaction).
    pub(super) parent: Option<u64>,
    /// Its scope's name, for messages.
    pub(super) scope_name: Cow<'static, str>,
    /// Whether `SAVEPOINT` has been sent (it is sent before the first statement inside it).
    pub(crate) created: bool,
    /// Its scope was dropped mid-way (cancelled): roll back to it before anything else runs.
    pub(crate) abandoned: bool,
    /// A statement inside it failed with a retryable error (its SQLSTATE, if any).
    pub(super) retryable: Option<Retryable>,
}

/// The names of a transaction's first savepoints, which nearly every transaction stays within:
/// borrowed, so that a `SAVEPOINT` and its `RELEASE` format no text.
const FIRST_NAMES: [&str; 9] = [
    "tx_sp_1", "tx_sp_2", "tx_sp_3", "tx_sp_4", "tx_sp_5", "tx_sp_6", "tx_sp_7", "tx_sp_8",
    "tx_sp_9",
];

impl Savepoint {
    pub(crate) fn name(&self) -> Cow<'static, str> {
        let first = usize::try_from(self.id)
            .ok()
            .and_then(|id| FIRST_NAMES.get(id.checked_sub(1)?));
        match first {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(format!("tx_sp_{}", self.id)),
        }
    }
}

/// A retryable failure (serialization failure, deadlock, busy) seen in a transaction.
#[derive(Clone, Debug, Default)]
pub(crate) struct Retryable {
    pub(crate) sqlstate: Option<Box<str>>,
}

/// What holds the connection lock (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Holder {
    /// A statement, or the engine itself: released without user code running.
    Statement = 0,
    /// A fetch stream that handed a row to its consumer and waits for the next poll.
    ParkedStream = 1,
    /// A `TxConnection` guard.
    Connection = 2,
}

/// Why the connection lock is requested (for the refusal message).
#[derive(Clone, Copy)]
pub(crate) enum Request {
    Statement,
    Stream,
    Connection,
    BeginSavepoint,
    EndSavepoint,
}

impl Slot {
    /// Marks the transaction finished and takes its physical transaction out, if active.
    pub(super) fn finish(&mut self) -> Option<Finishing> {
        match std::mem::replace(&mut self.physical, Physical::Finished) {
            Physical::Active(physical) => Some(Finishing {
                physical,
                hold: std::mem::take(&mut self.hold),
            }),
            _ => None,
        }
    }
}

/// How a savepoint scope ends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum SavepointEnd {
    Release,
    RollBack,
    /// See [`Transaction::release_or_roll_back_savepoint`].
    ReleaseOrRollBack,
}

/// `ROLLBACK TO` the savepoint, then `RELEASE` it (`ROLLBACK TO` keeps it) so names do not
/// pile up.
pub(super) async fn roll_back_to(
    physical: &mut Box<dyn PhysicalTransaction>,
    name: &str,
) -> Result<(), TxError> {
    physical.rollback_to_savepoint(name).await?;
    physical.release_savepoint(name).await
}

/// Whether savepoint `id` is scope `frame`'s own or one of its enclosing savepoint scopes.
pub(super) fn is_within(savepoints: &[Savepoint], id: u64, frame: Option<u64>) -> bool {
    let mut at = frame;
    while let Some(f) = at {
        if f == id {
            return true;
        }
        at = savepoints
            .iter()
            .find(|sp| sp.id == f)
            .and_then(|sp| sp.parent);
    }
    false
}

/// Removes savepoint `id` and those begun inside it; true if one of those was still live
/// (neither ended nor abandoned).
pub(super) fn remove_with_inner(savepoints: &mut Vec<Savepoint>, id: u64) -> bool {
    let mut removed = vec![id];
    let mut live_inner = false;
    for sp in savepoints.iter() {
        if sp.parent.is_some_and(|p| removed.contains(&p)) {
            removed.push(sp.id);
            live_inner |= !sp.abandoned;
        }
    }
    savepoints.retain(|sp| !removed.contains(&sp.id));
    live_inner
}

#[cfg(test)]
mod tests {
    use super::Savepoint;

    #[test]
    fn savepoint_names() {
        let name = |id| {
            Savepoint {
                id,
                parent: None,
                scope_name: "s".into(),
                created: false,
                abandoned: false,
                retryable: None,
            }
            .name()
        };
        for id in [1, 2, 9, 10, 11, 12_345] {
            assert_eq!(name(id), format!("tx_sp_{id}"));
        }
    }
}
