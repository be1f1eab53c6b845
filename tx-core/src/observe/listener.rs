//! Process-wide transaction listeners (Spring 6.1's `TransactionExecutionListener`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;

use crate::definition::TransactionDefinition;
use crate::error::{BoxError, TxError};
use crate::synchronization::panic_message;

/// Why a transaction or savepoint rolled back: the `cause` field of its span, the `cause`
/// label of `tx_rollbacks_total`, and what [`TransactionListener::after_rollback`] gets.
///
/// ```
/// use tx_core::RollbackCause;
/// assert_eq!(RollbackCause::RollbackOnly.as_str(), "rollback_only");
/// assert_eq!(RollbackCause::Timeout.to_string(), "timeout");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RollbackCause {
    /// The body returned an `Err` that the rollback rules roll back for.
    Error,
    /// The scope, or a participant of its transaction, was marked rollback-only (for a
    /// participant's mark the owner's call returns `TxError::UnexpectedRollback`).
    RollbackOnly,
    /// The deadline passed (`TxError::Timeout`).
    Timeout,
    /// The body panicked (the panic continues after the rollback).
    Panic,
    /// The call's future was dropped before it completed.
    Cancelled,
    /// A synchronization's `before_commit` failed or panicked (`TxError::BeforeCommit`).
    BeforeCommitFailed,
    /// `COMMIT` (or a savepoint's `RELEASE`) failed and the server rolled back.
    CommitFailed,
}

impl RollbackCause {
    /// The label: `error`, `rollback_only`, `timeout`, `panic`, `cancelled`,
    /// `before_commit_failed`, `commit_failed`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            RollbackCause::Error => "error",
            RollbackCause::RollbackOnly => "rollback_only",
            RollbackCause::Timeout => "timeout",
            RollbackCause::Panic => "panic",
            RollbackCause::Cancelled => "cancelled",
            RollbackCause::BeforeCommitFailed => "before_commit_failed",
            RollbackCause::CommitFailed => "commit_failed",
        }
    }
}

impl std::fmt::Display for RollbackCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The transaction (or savepoint) a [`TransactionListener`] callback is about (Spring's
/// `TransactionExecution`).
#[derive(Debug, Clone, Copy)]
pub struct TransactionExecution<'a> {
    pub(crate) definition: &'a TransactionDefinition,
    pub(crate) id: u64,
    pub(crate) scope_id: u64,
    pub(crate) backend: &'static str,
    pub(crate) attempt: u32,
    pub(crate) savepoint: bool,
    pub(crate) read_only: bool,
}

impl<'a> TransactionExecution<'a> {
    /// The scope's name (for a savepoint, the `Nested` scope's own).
    #[must_use]
    pub fn name(&self) -> &'a str {
        self.definition.get_name()
    }

    /// The definition the scope was called with (for a savepoint, the `Nested` scope's own;
    /// it runs with its transaction's isolation and read-only setting).
    pub fn definition(&self) -> &'a TransactionDefinition {
        self.definition
    }

    /// The id of the transaction, unique in the process: the `tx_id` field of its spans.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The id of this scope: equal to [`id`](Self::id) for a transaction, its own for a
    /// savepoint (the `scope_id` field of its span).
    #[must_use]
    pub fn scope_id(&self) -> u64 {
        self.scope_id
    }

    /// The backend, as OpenTelemetry's `db.system`: `postgresql`, `mysql` or `sqlite`
    /// (another backend's own name).
    #[must_use]
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Which run of a retried call this is, from 1.
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// True for a `Nested` scope's savepoint, false for a transaction (Spring's `isNested`).
    #[must_use]
    pub fn is_savepoint(&self) -> bool {
        self.savepoint
    }

    /// Whether the transaction is read-only.
    #[must_use]
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }
}

/// Declares each callback with its docs, the transaction and its own arguments, and the
/// default that does nothing: every callback is optional and they all return the same.
macro_rules! optional_callbacks {
    ($($(#[$doc:meta])* fn $callback:ident($($arg:ident: $ty:ty)?);)*) => {
        $($(#[$doc])*
        fn $callback(&self, tx: &TransactionExecution<'_> $(, $arg: $ty)?) -> Result<(), BoxError> {
            Ok(())
        })*
    };
}

/// Process-wide callbacks around the begin, commit and rollback of every transaction and
/// savepoint (Spring 6.1's `TransactionExecutionListener`), registered with
/// [`add_transaction_listener`]. Every method is optional.
///
/// For each transaction a scope begins, and each savepoint of a `Nested` scope:
/// `before_begin`, `after_begin`, then either `before_commit` and `after_commit`, or
/// `before_rollback` and `after_rollback` with the cause. The begin is the scope's: `BEGIN`
/// itself goes out with the first statement. `before_commit` comes after the
/// synchronizations' `before_commit` and `before_completion`, right before `COMMIT`;
/// `after_commit` and `after_rollback` after every hook has run. When `COMMIT` fails and the
/// server rolled back, `before_commit` is followed by `after_rollback(CommitFailed)`; when
/// the outcome is unknown, by `after_commit` with the error. A cancelled call's rollback is
/// reported from the task that finishes it. Participants (joined calls) and scopes without a
/// transaction get no callbacks.
///
/// Callbacks run inline on the engine's path: keep them short (count, log, record). One that
/// returns an `Err` or panics is logged (target `"tx"`) and never changes the outcome.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use tx_core::{BoxError, RollbackCause, TransactionExecution, TransactionListener};
///
/// #[derive(Default)]
/// struct Rollbacks(AtomicU64);
///
/// impl TransactionListener for &'static Rollbacks {
///     fn after_rollback(&self, tx: &TransactionExecution<'_>, cause: RollbackCause) -> Result<(), BoxError> {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         eprintln!("transaction {} [{}] on {} rolled back: {cause}", tx.id(), tx.name(), tx.backend());
///         Ok(())
///     }
/// }
///
/// static ROLLBACKS: std::sync::LazyLock<Rollbacks> = std::sync::LazyLock::new(Rollbacks::default);
/// tx_core::add_transaction_listener(&*ROLLBACKS);
/// ```
#[allow(unused_variables)] // the defaults ignore their arguments
pub trait TransactionListener: Send + Sync + 'static {
    optional_callbacks! {
        /// Before a transaction or savepoint begins.
        ///
        /// # Errors
        ///
        /// An `Err` is logged and ignored.
        fn before_begin();

        /// After it began; `failure` when a savepoint could not be opened (the call then fails
        /// with that error and gets no further callback).
        ///
        /// # Errors
        ///
        /// An `Err` is logged and ignored.
        fn after_begin(failure: Option<&TxError>);

        /// Right before `COMMIT` (or a savepoint's `RELEASE`).
        ///
        /// # Errors
        ///
        /// An `Err` is logged and ignored: it does not veto the commit (a synchronization's
        /// `before_commit` does).
        fn before_commit();

        /// After the commit and its hooks: `failure` is `None` when it committed, the error
        /// (`TxError::CommitOutcomeUnknown`) when the outcome is unknown.
        ///
        /// # Errors
        ///
        /// An `Err` is logged and ignored.
        fn after_commit(failure: Option<&TxError>);

        /// Right before `ROLLBACK` (or `ROLLBACK TO SAVEPOINT`).
        ///
        /// # Errors
        ///
        /// An `Err` is logged and ignored.
        fn before_rollback();

        /// After the rollback and its hooks, with why it rolled back.
        ///
        /// # Errors
        ///
        /// An `Err` is logged and ignored.
        fn after_rollback(cause: RollbackCause);
    }
}

type Listeners = Vec<Arc<dyn TransactionListener>>;

static LISTENERS: ArcSwapOption<Listeners> = ArcSwapOption::const_empty();
/// Set once a listener is registered: the engine's only cost while none is.
static ANY: AtomicBool = AtomicBool::new(false);

/// Registers `listener` for every transaction of the process, from now on (listeners are
/// called in registration order and cannot be removed).
///
/// ```
/// use tx_core::{BoxError, TransactionExecution, TransactionListener};
///
/// struct LogCommits;
/// impl TransactionListener for LogCommits {
///     fn after_commit(&self, tx: &TransactionExecution<'_>, failure: Option<&tx_core::TxError>) -> Result<(), BoxError> {
///         if failure.is_none() {
///             eprintln!("committed transaction {} [{}]", tx.id(), tx.name());
///         }
///         Ok(())
///     }
/// }
/// tx_core::add_transaction_listener(LogCommits);
/// ```
pub fn add_transaction_listener(listener: impl TransactionListener) {
    let listener: Arc<dyn TransactionListener> = Arc::new(listener);
    LISTENERS.rcu(|current| {
        let mut list = current.as_deref().cloned().unwrap_or_default();
        list.push(listener.clone());
        Some(Arc::new(list))
    });
    ANY.store(true, Ordering::Release);
}

/// One callback, with its argument.
#[derive(Clone, Copy)]
pub(crate) enum Callback<'e> {
    BeforeBegin,
    AfterBegin(Option<&'e TxError>),
    BeforeCommit,
    AfterCommit(Option<&'e TxError>),
    BeforeRollback,
    AfterRollback(RollbackCause),
}

impl Callback<'_> {
    fn name(self) -> &'static str {
        match self {
            Callback::BeforeBegin => "before_begin",
            Callback::AfterBegin(_) => "after_begin",
            Callback::BeforeCommit => "before_commit",
            Callback::AfterCommit(_) => "after_commit",
            Callback::BeforeRollback => "before_rollback",
            Callback::AfterRollback(_) => "after_rollback",
        }
    }

    fn call(
        self,
        l: &dyn TransactionListener,
        tx: &TransactionExecution<'_>,
    ) -> Result<(), BoxError> {
        match self {
            Callback::BeforeBegin => l.before_begin(tx),
            Callback::AfterBegin(f) => l.after_begin(tx, f),
            Callback::BeforeCommit => l.before_commit(tx),
            Callback::AfterCommit(f) => l.after_commit(tx, f),
            Callback::BeforeRollback => l.before_rollback(tx),
            Callback::AfterRollback(c) => l.after_rollback(tx, c),
        }
    }
}

/// Calls `callback` on every listener, with the execution `exec` builds (only built when a
/// listener is registered).
#[inline]
pub(crate) fn notify<'a>(callback: Callback<'_>, exec: impl FnOnce() -> TransactionExecution<'a>) {
    if ANY.load(Ordering::Acquire) {
        notify_all(callback, &exec());
    }
}

fn notify_all(callback: Callback<'_>, exec: &TransactionExecution<'_>) {
    let Some(listeners) = LISTENERS.load_full() else {
        return;
    };
    for listener in listeners.iter() {
        match catch_unwind(AssertUnwindSafe(|| callback.call(&**listener, exec))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                target: "tx",
                "transaction listener failed in {} of transaction {} [{}]: {e}; ignored, the transaction goes on",
                callback.name(),
                exec.id,
                exec.name()
            ),
            Err(panic) => tracing::error!(
                target: "tx",
                "transaction listener {} in {} of transaction {} [{}]; ignored, the transaction goes on",
                panic_message(&*panic),
                callback.name(),
                exec.id,
                exec.name()
            ),
        }
    }
}
