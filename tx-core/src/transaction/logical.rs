//! The types that refer to each other: a logical [`Transaction`], the [`Scope`]s that decide
//! outcomes in it, and the per-manager [`Binding`] chain that says which scope statements run
//! in (a transaction keeps the bindings it suspends; a scope keeps its transaction).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

use super::slot::{Holder, Physical, Retryable, Slot};
use crate::definition::TransactionDefinition;
use crate::manager::{ManagerKey, SharedManager};
use crate::observe::metrics::HoldTimer;
use crate::observe::{self, TransactionExecution};

/// A logical transaction (one per new Required/RequiresNew/Nested-without-outer scope).
pub(crate) struct Transaction {
    /// Unique in the process: the `tx_id` of its spans, [`TransactionExecution::id`].
    pub(crate) id: u64,
    pub(crate) manager: SharedManager,
    pub(crate) definition: TransactionDefinition,
    pub(crate) deadline: Option<Instant>,
    pub(super) slot: Arc<Mutex<Slot>>,
    /// What holds `slot` (meaningful while it is locked).
    pub(super) holder: AtomicU8,
    /// Woken whenever `slot` is unlocked by a guard.
    pub(super) released: Notify,
    /// The transaction completed while its connection was held (a leaked guard or stream):
    /// whoever holds it rolls back when letting go.
    pub(super) leaked: AtomicBool,
    /// Set when the whole transaction must roll back: by a participant of the transaction
    /// itself (Spring's global rollback-only), or because a savepoint could not be resolved.
    pub(super) global_rollback_only: AtomicBool,
    /// A retryable failure outside every rolled-back savepoint (which would have handled it).
    pub(super) retryable: std::sync::Mutex<Option<Retryable>>,
    /// The first retryable failure of any statement, `BEGIN` or `COMMIT` of it, also one
    /// undone by rolling back to a savepoint: a call that returns that failure as its error
    /// rolled back because of it.
    pub(super) seen_retryable: std::sync::Mutex<Option<Retryable>>,
    /// Whether `BEGIN` has been sent (read without the lock by RequiresNew on the same manager).
    pub(super) begun: AtomicBool,
    /// Committed or rolled back (or on its way): holds no write lock any more.
    pub(super) finished: AtomicBool,
    pub(crate) key: ManagerKey,
    /// The enclosing scopes' bindings when it was created: the transactions it suspends.
    pub(crate) enclosing: Option<Arc<Binding>>,
    pub(super) next_savepoint: AtomicU64,
    /// Which run of a retried call this is (1-based).
    pub(super) attempt: u32,
    /// The runtime it began on: a future dropped outside any runtime rolls back there.
    pub(super) runtime: Option<tokio::runtime::Handle>,
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

    pub(super) fn retryable(&self) -> std::sync::MutexGuard<'_, Option<Retryable>> {
        self.retryable.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn seen(&self, r: &Retryable) {
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

    pub(super) fn note_retryable_from(&self, r: Retryable) {
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

    /// Time left before the deadline, if the transaction has one.
    pub(crate) fn remaining(&self) -> Option<std::time::Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    pub(crate) fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// What kind of scope a [`Scope`] is.
pub(crate) enum ScopeKind {
    /// Began a new transaction (it owns the commit).
    NewTransaction,
    /// A savepoint inside an existing transaction (`Nested`).
    Savepoint,
    /// A savepoint standing in for a new transaction (inside a test transaction): it reports
    /// as a new transaction, and its participants' marks stay with it, as with a savepoint.
    SavepointAsTransaction,
    /// Runs without a transaction (`Supports`/`NotSupported`/`Never` without one).
    NoTransaction,
}

/// One scope that decides an outcome: a new transaction, a savepoint, or a scope without a
/// transaction. Participants share their owner's.
pub(crate) struct Scope {
    pub(crate) kind: ScopeKind,
    pub(crate) tx: Option<Arc<Transaction>>,
    pub(crate) name: Cow<'static, str>,
    pub(crate) rollback_only: AtomicBool,
    /// A savepoint scope's participant failed or asked for rollback (undone with the
    /// savepoint; the transaction's own participants mark the transaction).
    pub(crate) joined_rollback_only: AtomicBool,
    pub(crate) completed: AtomicBool,
}

impl Scope {
    pub(crate) fn new(
        kind: ScopeKind,
        tx: Option<Arc<Transaction>>,
        name: Cow<'static, str>,
    ) -> Scope {
        Scope {
            kind,
            tx,
            name,
            rollback_only: AtomicBool::new(false),
            joined_rollback_only: AtomicBool::new(false),
            completed: AtomicBool::new(false),
        }
    }

    /// A participant of this scope failed or asked for rollback: a savepoint scope rolls back
    /// to its savepoint; a transaction is marked for its owner.
    pub(crate) fn mark_joined_rollback_only(&self) {
        match (&self.kind, &self.tx) {
            (ScopeKind::Savepoint | ScopeKind::SavepointAsTransaction, _) => {
                self.joined_rollback_only.store(true, Ordering::Relaxed)
            }
            (_, Some(tx)) => tx.set_global_rollback_only(),
            (_, None) => self.rollback_only.store(true, Ordering::Relaxed),
        }
    }

    /// Whether a participant of this savepoint scope marked it.
    pub(crate) fn is_joined_rollback_only(&self) -> bool {
        self.joined_rollback_only.load(Ordering::Relaxed)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn is_local_rollback_only(&self) -> bool {
        self.rollback_only.load(Ordering::Relaxed)
    }

    pub(crate) fn set_completed(&self) {
        self.completed.store(true, Ordering::Relaxed);
    }
}

/// How a savepoint scope completes: as a `Nested` scope, or standing in for a new transaction
/// or for a scope without one (inside a test transaction, which has no other transaction to
/// give them).
#[derive(Clone, Copy)]
#[cfg_attr(not(feature = "testing"), allow(dead_code))] // the stand-ins serve test transactions
pub(crate) enum SavepointCompletion {
    /// `Nested`: released when the scope commits, its hooks then handed to the enclosing
    /// owner; rolled back to when it fails.
    Nested,
    /// A new transaction: released where it would commit, with the commit sequence of its
    /// hooks around the release; rolled back to where it would roll back.
    NewTransaction,
    /// A scope without a transaction: always released (autocommit would have kept every
    /// statement). When it `owns_hooks` they run at its end as committed or rolled back, as
    /// for a scope without a transaction; else they are the enclosing such scope's.
    WithoutTransaction { owns_hooks: bool },
}

/// A link of the per-manager binding chain, innermost first.
pub(crate) struct Binding {
    /// `None`: a barrier suspending every manager (hooks that run after their transaction
    /// completed), which still lets the single-writer check see the transactions behind it.
    pub(crate) key: Option<ManagerKey>,
    /// The scope (new transaction or savepoint) statements of this manager run in; `None`
    /// while a `NotSupported` scope suspends the transaction.
    pub(crate) scope: Option<Arc<Scope>>,
    /// The savepoint of that scope, when it is a `Nested` one.
    pub(crate) frame: Option<u64>,
    pub(crate) parent: Option<Arc<Binding>>,
}

/// Whether a transaction of manager `key` anywhere in `chain` (the bindings of enclosing,
/// suspended scopes) has begun as a writer: a single-writer database would make a second
/// writer of this task wait for a lock this task itself holds.
pub(crate) fn chain_holds_writer(chain: Option<&Binding>, key: ManagerKey) -> bool {
    let mut link = chain;
    while let Some(b) = link {
        if b.key == Some(key)
            && let Some(tx) = b.scope.as_ref().and_then(|s| s.tx.as_ref())
            && tx.holds_write_connection()
        {
            return true;
        }
        link = b.parent.as_deref();
    }
    false
}

/// The distinct transactions of manager `key` in `chain` (the bindings of enclosing,
/// suspended scopes) that have begun, i.e. hold a connection, as opaque identities (a
/// `Nested` scope shares its transaction's, so it is listed once).
pub(crate) fn chain_held_connections(chain: Option<&Binding>, key: ManagerKey) -> Vec<usize> {
    let mut held = Vec::new();
    let mut link = chain;
    while let Some(b) = link {
        if b.key == Some(key)
            && let Some(tx) = b.scope.as_ref().and_then(|s| s.tx.as_ref())
            && tx.is_begun()
        {
            let id = Arc::as_ptr(tx) as usize;
            if !held.contains(&id) {
                held.push(id);
            }
        }
        link = b.parent.as_deref();
    }
    held
}
