//! One logical transaction as the engine tracks it: its manager, its lazily begun physical
//! transaction, its savepoint stack, its rollback-only mark and its deadline.
//!
//! The physical `BEGIN` is deferred to the first statement (see [`crate::connection`]): a
//! transactional call whose body never touches the database costs no round trip and holds no
//! connection. Savepoints are deferred the same way, so a `Nested` scope that runs no statement
//! sends no `SAVEPOINT`.
//!
//! The transaction has one connection, behind an async mutex. Who may wait for it:
//! statements of one task (concurrent futures under `join!`) take turns, each wait bounded by
//! the deadline. A fetch stream between two rows, or a `TxConnection` guard, holds it for user
//! code: a request of the same task would wait for itself, so it is refused at once. When the
//! transaction completes its body is done, so a held connection is a leaked guard or stream:
//! also refused at once, and the transaction is rolled back when that holder lets go.
//!
//! Savepoints of concurrent scopes: SQL savepoints nest, so the savepoints actually sent on
//! the connection always form one chain of enclosing scopes. A statement runs only when every
//! savepoint sent is its own scope's or an enclosing one's; otherwise (a sibling scope's
//! savepoint is open) it is refused with [`TxError::ConcurrentScopes`]. So each savepoint is
//! resolved on its own: rolling one back undoes exactly its scope's work.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use tokio::sync::{Mutex, Notify, OwnedMutexGuard};
use tokio::time::Instant;

use crate::context::{Binding, chain_held_connections, chain_holds_writer};
use crate::definition::TransactionDefinition;
use crate::error::{Operation, TxError};
use crate::manager::{BeginOptions, ManagerKey, PhysicalTransaction, SharedManager};
use crate::observe::metrics::HoldTimer;
use crate::observe::{self, TransactionExecution};

/// The physical side of a transaction, behind the transaction's async mutex.
pub(crate) struct Slot {
    pub(crate) physical: Physical,
    /// Open savepoint scopes, in the order they began.
    pub(crate) savepoints: Vec<Savepoint>,
    /// How long the active physical transaction has held its connection (metrics).
    hold: HoldTimer,
}

/// A physical transaction taken out for completion, with its connection-hold timer (recorded
/// once its connection is back: after `COMMIT`/`ROLLBACK`, or when it is dropped).
pub(crate) struct Finishing {
    physical: Box<dyn PhysicalTransaction>,
    hold: HoldTimer,
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
    parent: Option<u64>,
    /// Its scope's name, for messages.
    scope_name: Cow<'static, str>,
    /// Whether `SAVEPOINT` has been sent (it is sent before the first statement inside it).
    pub(crate) created: bool,
    /// Its scope was dropped mid-way (cancelled): roll back to it before anything else runs.
    pub(crate) abandoned: bool,
    /// A statement inside it failed with a retryable error (its SQLSTATE, if any).
    retryable: Option<Retryable>,
}

impl Savepoint {
    pub(crate) fn name(&self) -> String {
        format!("tx_sp_{}", self.id)
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

/// A logical transaction (one per new Required/RequiresNew/Nested-without-outer scope).
pub(crate) struct Transaction {
    /// Unique in the process: the `tx_id` of its spans, [`TransactionExecution::id`].
    pub(crate) id: u64,
    pub(crate) manager: SharedManager,
    pub(crate) definition: TransactionDefinition,
    pub(crate) deadline: Option<Instant>,
    slot: Arc<Mutex<Slot>>,
    /// What holds `slot` (meaningful while it is locked).
    holder: AtomicU8,
    /// Woken whenever `slot` is unlocked by a guard.
    released: Notify,
    /// The transaction completed while its connection was held (a leaked guard or stream):
    /// whoever holds it rolls back when letting go.
    leaked: AtomicBool,
    /// Set when the whole transaction must roll back: by a participant of the transaction
    /// itself (Spring's global rollback-only), or because a savepoint could not be resolved.
    global_rollback_only: AtomicBool,
    /// A retryable failure outside every rolled-back savepoint (which would have handled it).
    retryable: std::sync::Mutex<Option<Retryable>>,
    /// The first retryable failure of any statement, `BEGIN` or `COMMIT` of it, also one
    /// undone by rolling back to a savepoint: a call that returns that failure as its error
    /// rolled back because of it.
    seen_retryable: std::sync::Mutex<Option<Retryable>>,
    /// Whether `BEGIN` has been sent (read without the lock by RequiresNew on the same manager).
    begun: AtomicBool,
    /// Committed or rolled back (or on its way): holds no write lock any more.
    finished: AtomicBool,
    pub(crate) key: ManagerKey,
    /// The enclosing scopes' bindings when it was created: the transactions it suspends.
    pub(crate) enclosing: Option<Arc<Binding>>,
    next_savepoint: AtomicU64,
    /// Which run of a retried call this is (1-based).
    attempt: u32,
    /// The runtime it began on: a future dropped outside any runtime rolls back there.
    runtime: Option<tokio::runtime::Handle>,
}

impl Transaction {
    pub(crate) fn new(
        manager: SharedManager,
        definition: TransactionDefinition,
        key: ManagerKey,
        enclosing: Option<Arc<Binding>>,
        attempt: u32,
    ) -> Transaction {
        let deadline = definition.get_timeout().map(|t| Instant::now() + t);
        Transaction {
            id: observe::next_id(),
            manager,
            definition,
            deadline,
            slot: Arc::new(Mutex::new(Slot {
                physical: Physical::NotBegun,
                savepoints: Vec::new(),
                hold: HoldTimer::default(),
            })),
            holder: AtomicU8::new(Holder::Statement as u8),
            released: Notify::new(),
            leaked: AtomicBool::new(false),
            global_rollback_only: AtomicBool::new(false),
            retryable: std::sync::Mutex::new(None),
            seen_retryable: std::sync::Mutex::new(None),
            begun: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            key,
            enclosing,
            next_savepoint: AtomicU64::new(1),
            attempt,
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        self.definition.get_name()
    }

    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The backend as `db.system` (`postgresql`, `mysql`, `sqlite`).
    pub(crate) fn db_system(&self) -> &'static str {
        observe::db_system(self.manager.backend_name())
    }

    /// What listeners are told about this transaction.
    pub(crate) fn execution(&self) -> TransactionExecution<'_> {
        TransactionExecution {
            definition: &self.definition,
            id: self.id,
            scope_id: self.id,
            backend: self.db_system(),
            attempt: self.attempt,
            savepoint: false,
            read_only: self.definition.is_read_only(),
        }
    }

    /// What listeners are told about savepoint scope `scope_id` of this transaction, called
    /// with `definition`.
    pub(crate) fn savepoint_execution<'a>(
        &self,
        definition: &'a TransactionDefinition,
        scope_id: u64,
    ) -> TransactionExecution<'a> {
        TransactionExecution {
            definition,
            id: self.id,
            scope_id,
            backend: self.db_system(),
            attempt: self.attempt,
            savepoint: true,
            read_only: self.definition.is_read_only(),
        }
    }

    pub(crate) fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime.as_ref()
    }

    pub(crate) fn set_global_rollback_only(&self) {
        self.global_rollback_only.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_global_rollback_only(&self) -> bool {
        self.global_rollback_only.load(Ordering::Relaxed)
    }

    fn retryable(&self) -> std::sync::MutexGuard<'_, Option<Retryable>> {
        self.retryable.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn seen(&self, r: &Retryable) {
        self.seen_retryable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| r.clone());
    }

    /// Records a retryable failure of the transaction itself (BEGIN, COMMIT, or a statement
    /// outside every savepoint).
    pub(crate) fn note_retryable(&self, sqlstate: Option<&str>) {
        let r = Retryable {
            sqlstate: sqlstate.map(Into::into),
        };
        self.seen(&r);
        self.retryable().get_or_insert(r);
    }

    /// Records a retryable failure of a statement of scope `frame` (kept with its savepoint,
    /// which handles it if rolled back).
    pub(crate) fn note_statement_retryable(
        &self,
        slot: &mut Slot,
        frame: Option<u64>,
        sqlstate: Option<&str>,
    ) {
        let r = Retryable {
            sqlstate: sqlstate.map(Into::into),
        };
        self.seen(&r);
        match frame.and_then(|id| slot.savepoints.iter_mut().find(|sp| sp.id == id)) {
            Some(sp) => {
                sp.retryable.get_or_insert(r);
            }
            None => self.note_retryable_from(r),
        }
    }

    fn note_retryable_from(&self, r: Retryable) {
        self.retryable().get_or_insert(r);
    }

    /// The retryable failure that doomed the transaction, if one did.
    pub(crate) fn take_retryable(&self) -> Option<Retryable> {
        self.retryable().take()
    }

    /// The first retryable failure seen anywhere in the transaction.
    pub(crate) fn take_seen_retryable(&self) -> Option<Retryable> {
        self.seen_retryable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub(crate) fn is_begun(&self) -> bool {
        self.begun.load(Ordering::Relaxed)
    }

    /// Begun, not yet completed and not read-only: may hold write locks (SQLite's single
    /// write lock).
    pub(crate) fn holds_write_connection(&self) -> bool {
        self.is_begun() && !self.finished.load(Ordering::Relaxed) && !self.definition.is_read_only()
    }

    pub(crate) fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    fn holder(&self) -> Holder {
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

    fn would_block(&self, request: Request, holder: Holder) -> TxError {
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

    fn leak_error(&self, holder: Holder) -> TxError {
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

    fn concurrent_error(&self, slot: &Slot, open: &Savepoint, frame: Option<u64>) -> TxError {
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
    async fn undo_abandoned(&self, slot: &mut Slot) -> Result<(), TxError> {
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

    async fn end_savepoint(&self, id: u64, end: SavepointEnd) -> Result<(), TxError> {
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

impl Slot {
    /// Marks the transaction finished and takes its physical transaction out, if active.
    fn finish(&mut self) -> Option<Finishing> {
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
enum SavepointEnd {
    Release,
    RollBack,
    /// See [`Transaction::release_or_roll_back_savepoint`].
    ReleaseOrRollBack,
}

/// `ROLLBACK TO` the savepoint, then `RELEASE` it (`ROLLBACK TO` keeps it) so names do not
/// pile up.
async fn roll_back_to(
    physical: &mut Box<dyn PhysicalTransaction>,
    name: &str,
) -> Result<(), TxError> {
    physical.rollback_to_savepoint(name).await?;
    physical.release_savepoint(name).await
}

/// Whether savepoint `id` is scope `frame`'s own or one of its enclosing savepoint scopes.
fn is_within(savepoints: &[Savepoint], id: u64, frame: Option<u64>) -> bool {
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
fn remove_with_inner(savepoints: &mut Vec<Savepoint>, id: u64) -> bool {
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
