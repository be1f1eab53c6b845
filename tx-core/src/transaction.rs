//! One logical transaction as the engine tracks it: its manager, its lazily begun physical
//! transaction, its savepoint stack, its rollback-only mark and its deadline.
//!
//! The physical `BEGIN` is deferred to the first statement (see [`crate::connection`]): a
//! transactional call whose body never touches the database costs no round trip and holds no
//! connection. Savepoints are deferred the same way, so a `Nested` scope that runs no statement
//! sends no `SAVEPOINT`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::context::{Binding, chain_held_connections, chain_holds_writer};
use crate::definition::TransactionDefinition;
use crate::error::{Operation, TxError};
use crate::manager::{BeginOptions, ManagerKey, PhysicalTransaction, SharedManager};

/// The physical side of a transaction, behind the transaction's async mutex.
pub(crate) struct Slot {
    pub(crate) physical: Physical,
    /// Open savepoint scopes, outermost first.
    pub(crate) savepoints: Vec<Savepoint>,
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
    /// Whether `SAVEPOINT` has been sent (it is sent before the first statement inside it).
    pub(crate) created: bool,
    /// Its scope was dropped mid-way (cancelled): roll back to it before anything else runs.
    pub(crate) abandoned: bool,
}

impl Savepoint {
    pub(crate) fn name(&self) -> String {
        format!("tx_sp_{}", self.id)
    }
}

/// A logical transaction (one per new Required/RequiresNew/Nested-without-outer scope).
pub(crate) struct Transaction {
    pub(crate) manager: SharedManager,
    pub(crate) definition: TransactionDefinition,
    pub(crate) deadline: Option<Instant>,
    pub(crate) slot: Arc<Mutex<Slot>>,
    /// Set by participants (Spring's global rollback-only on the resource holder).
    global_rollback_only: AtomicBool,
    /// A statement or commit failed with a serialization failure / deadlock.
    saw_retryable: AtomicBool,
    /// Whether `BEGIN` has been sent (read without the lock by RequiresNew on the same manager).
    begun: AtomicBool,
    pub(crate) key: ManagerKey,
    /// The enclosing scopes' bindings when it was created: the transactions it suspends.
    enclosing: Option<Arc<Binding>>,
    next_savepoint: AtomicU64,
}

impl Transaction {
    pub(crate) fn new(
        manager: SharedManager,
        definition: TransactionDefinition,
        key: ManagerKey,
        enclosing: Option<Arc<Binding>>,
    ) -> Transaction {
        let deadline = definition.get_timeout().map(|t| Instant::now() + t);
        Transaction {
            manager,
            definition,
            deadline,
            slot: Arc::new(Mutex::new(Slot {
                physical: Physical::NotBegun,
                savepoints: Vec::new(),
            })),
            global_rollback_only: AtomicBool::new(false),
            saw_retryable: AtomicBool::new(false),
            begun: AtomicBool::new(false),
            key,
            enclosing,
            next_savepoint: AtomicU64::new(1),
        }
    }

    pub(crate) fn name(&self) -> &str {
        self.definition.get_name()
    }

    pub(crate) fn set_global_rollback_only(&self) {
        self.global_rollback_only.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_global_rollback_only(&self) -> bool {
        self.global_rollback_only.load(Ordering::Relaxed)
    }

    pub(crate) fn restore_global_rollback_only(&self, value: bool) {
        self.global_rollback_only.store(value, Ordering::Relaxed);
    }

    pub(crate) fn note_retryable(&self) {
        self.saw_retryable.store(true, Ordering::Relaxed);
    }

    pub(crate) fn saw_retryable(&self) -> bool {
        self.saw_retryable.load(Ordering::Relaxed)
    }

    pub(crate) fn is_begun(&self) -> bool {
        self.begun.load(Ordering::Relaxed)
    }

    /// Begun and not read-only: may hold write locks (SQLite's single write lock).
    pub(crate) fn holds_write_connection(&self) -> bool {
        self.is_begun() && !self.definition.is_read_only()
    }

    pub(crate) fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Sends `BEGIN` (if not yet) and every pending `SAVEPOINT`, so a statement can run.
    pub(crate) async fn materialize(&self, slot: &mut Slot) -> Result<(), TxError> {
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
                    remaining: self
                        .deadline
                        .map(|d| d.saturating_duration_since(Instant::now())),
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
                        self.begun.store(true, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if e.is_retryable() {
                            self.note_retryable();
                        }
                        return Err(e);
                    }
                }
            }
        }
        self.undo_abandoned(slot).await?;
        let Physical::Active(physical) = &mut slot.physical else {
            unreachable!("begun above")
        };
        for sp in slot.savepoints.iter_mut().filter(|sp| !sp.created) {
            tracing::debug!(target: "tx", "Creating savepoint {} in [{}]", sp.name(), self.name());
            physical.create_savepoint(&sp.name()).await?;
            sp.created = true;
        }
        Ok(())
    }

    /// Rolls back to the savepoints of cancelled `Nested` scopes (always the innermost ones).
    async fn undo_abandoned(&self, slot: &mut Slot) -> Result<(), TxError> {
        while slot.savepoints.last().is_some_and(|sp| sp.abandoned) {
            let sp = slot.savepoints.pop().expect("checked");
            if let (true, Physical::Active(physical)) = (sp.created, &mut slot.physical) {
                let name = sp.name();
                tracing::debug!(target: "tx", "Rolling back to savepoint {name} of cancelled nested scope");
                physical.rollback_to_savepoint(&name).await?;
                physical.release_savepoint(&name).await?;
            }
        }
        Ok(())
    }

    /// Opens a savepoint scope (sent lazily); returns its id.
    pub(crate) async fn push_savepoint(&self) -> Result<u64, TxError> {
        let id = self.next_savepoint.fetch_add(1, Ordering::Relaxed);
        let mut slot = self.slot.lock().await;
        self.undo_abandoned(&mut slot).await?;
        slot.savepoints.push(Savepoint {
            id,
            created: false,
            abandoned: false,
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

    /// Takes the physical transaction out for COMMIT, first undoing cancelled savepoints.
    pub(crate) async fn take_physical_for_commit(
        &self,
    ) -> Result<Option<Box<dyn PhysicalTransaction>>, TxError> {
        let mut slot = self.slot.lock().await;
        self.undo_abandoned(&mut slot).await?;
        slot.savepoints.clear();
        Ok(
            match std::mem::replace(&mut slot.physical, Physical::Finished) {
                Physical::Active(p) => Some(p),
                _ => None,
            },
        )
    }

    /// Closes the savepoint scope `id`: `RELEASE` it (when `rollback` is false) or
    /// `ROLLBACK TO` it, if it was ever sent.
    pub(crate) async fn pop_savepoint(&self, id: u64, rollback: bool) -> Result<(), TxError> {
        let mut slot = self.slot.lock().await;
        let Some(pos) = slot.savepoints.iter().position(|sp| sp.id == id) else {
            return Ok(());
        };
        // Savepoints opened inside this one have ended already; drop any left by a cancelled
        // inner scope along with this one.
        let sp = slot.savepoints.drain(pos..).next().expect("position found");
        if !sp.created {
            return Ok(());
        }
        let name = sp.name();
        let Physical::Active(physical) = &mut slot.physical else {
            return Ok(());
        };
        if rollback {
            tracing::debug!(target: "tx", "Rolling back transaction [{}] to savepoint {name}", self.name());
            physical.rollback_to_savepoint(&name).await?;
            // ROLLBACK TO keeps the savepoint; release it so names do not pile up.
            physical.release_savepoint(&name).await
        } else {
            tracing::debug!(target: "tx", "Releasing savepoint {name} of [{}]", self.name());
            physical.release_savepoint(&name).await
        }
    }

    /// Takes the physical transaction out for completion; later statements fail.
    pub(crate) async fn take_physical(&self) -> Option<Box<dyn PhysicalTransaction>> {
        let mut slot = self.slot.lock().await;
        slot.savepoints.clear();
        match std::mem::replace(&mut slot.physical, Physical::Finished) {
            Physical::Active(p) => Some(p),
            _ => None,
        }
    }

    /// Takes the physical transaction out without waiting (for the drop path).
    pub(crate) fn try_take_physical(&self) -> Option<Box<dyn PhysicalTransaction>> {
        let mut slot = self.slot.try_lock().ok()?;
        match std::mem::replace(&mut slot.physical, Physical::Finished) {
            Physical::Active(p) => Some(p),
            _ => None,
        }
    }
}
