//! The backend contract (Spring's `DataSourceTransactionManager` half): begin, commit, roll
//! back, savepoints. Everything about propagation stays in the engine.

use std::any::Any;
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::definition::Isolation;
use crate::error::TxError;

/// A boxed, `Send` future, as returned by backends.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Identifies the resource a manager hands out transactions for (its pool): two handles on
/// the same pool must return the same key, so a scope on one joins a transaction begun on the
/// other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ManagerKey(usize);

impl ManagerKey {
    /// The key of the resource behind `arc` (its address, stable while it lives).
    #[must_use]
    pub fn of<T: ?Sized>(arc: &Arc<T>) -> ManagerKey {
        ManagerKey(Arc::as_ptr(arc).cast::<()>() as usize)
    }
}

/// What a backend needs to begin a physical transaction.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BeginOptions {
    /// The requested isolation level.
    pub isolation: Isolation,
    /// Whether the transaction is read-only.
    pub read_only: bool,
    /// Time left before the transaction's deadline, to bound server statements.
    pub remaining: Option<Duration>,
    /// True when this task has suspended a begun, writable transaction on the same manager
    /// (RequiresNew inside it): a single-writer backend must fail fast instead of waiting for a
    /// lock its own task holds.
    pub suspended_holds_connection: bool,
    /// The begun transactions of the same manager in the enclosing scopes, suspended while
    /// this one begins (`RequiresNew` inside them): each holds a connection. Empty for a first
    /// transaction. Opaque identities, distinct for every transaction alive at once, so a
    /// pooled backend can count the connections held by tasks that wait for another one (pool
    /// starvation) without counting twice one shared by concurrent scopes.
    pub suspended_connections: Vec<usize>,
    /// The transaction's name, for logs.
    pub name: Cow<'static, str>,
}

/// A transaction manager: hands out physical transactions on its connections.
///
/// Implemented by `tx_sqlx::TxPool`; implement it to put another database under the engine.
/// A backend only begins, commits, rolls back and manages savepoints; the engine decides when.
///
/// ```
/// use std::sync::Arc;
/// use tx_core::manager::{BeginOptions, BoxFuture, ManagerKey, PhysicalTransaction, TransactionManager};
/// use tx_core::TxError;
///
/// /// A manager for a resource without real transactions (for tests and benchmarks).
/// #[derive(Clone, Default)]
/// struct NoopManager(Arc<()>);
///
/// struct NoopTx;
/// impl PhysicalTransaction for NoopTx {
///     fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>> { Box::pin(async { Ok(()) }) }
///     fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>> { Box::pin(async { Ok(()) }) }
///     fn as_any_mut(&mut self) -> &mut dyn std::any::Any { self }
/// }
///
/// impl TransactionManager for NoopManager {
///     fn key(&self) -> ManagerKey { ManagerKey::of(&self.0) }
///     fn begin(&self, _: BeginOptions) -> BoxFuture<'static, Result<Box<dyn PhysicalTransaction>, TxError>> {
///         Box::pin(async { Ok(Box::new(NoopTx) as Box<dyn PhysicalTransaction>) })
///     }
/// }
/// ```
pub trait TransactionManager: Send + Sync + 'static {
    /// The identity of the underlying resource.
    fn key(&self) -> ManagerKey;

    /// Takes a connection and begins a transaction on it with `options`.
    ///
    /// # Errors
    ///
    /// The backend's failure to get a connection or to begin, as a [`TxError`]
    /// (`TxError::Database` with the driver error as its source, `TxError::PoolClosed`, or
    /// `TxError::WouldBlock` when waiting could only end at a timeout).
    ///
    /// # Cancel safety
    ///
    /// The engine may drop the future (a cancelled call, the deadline): a connection taken
    /// by then must go back to the pool, or be closed, with no transaction left open.
    fn begin(
        &self,
        options: BeginOptions,
    ) -> BoxFuture<'static, Result<Box<dyn PhysicalTransaction>, TxError>>;

    /// Whether [`PhysicalTransaction`]s of this manager support savepoints (`Nested`).
    fn supports_savepoints(&self) -> bool {
        true
    }

    /// A short name of the backend for logs (`"postgres"`).
    fn backend_name(&self) -> &'static str {
        "custom"
    }
}

/// One open physical transaction on one connection.
///
/// Dropping it without `commit` or `rollback` (a cancelled call) must roll the transaction
/// back and return (or close) its connection without blocking.
pub trait PhysicalTransaction: Send + 'static {
    /// `COMMIT`.
    ///
    /// # Errors
    ///
    /// The server refusing the commit (the transaction is then rolled back), as
    /// `TxError::Database` (`retryable` for serialization failures and deadlocks); a lost
    /// connection while the commit is in flight must be [`TxError::CommitOutcomeUnknown`].
    ///
    /// # Cancel safety
    ///
    /// The engine does not drop a commit it started except with the whole task; a backend
    /// dropped mid-commit closes the connection (the outcome is then unknown).
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>>;

    /// `ROLLBACK`, and the connection goes back clean.
    ///
    /// # Errors
    ///
    /// A failed `ROLLBACK` (the engine logs it; the connection must then be closed rather
    /// than returned).
    ///
    /// # Cancel safety
    ///
    /// Dropped mid-way, the connection must be closed or rolled back before reuse.
    fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>>;

    /// `SAVEPOINT name` (names are generated by the engine, never user input).
    ///
    /// # Errors
    ///
    /// [`TxError::NestedNotSupported`] by default; the server's refusal as
    /// `TxError::Database`.
    ///
    /// # Cancel safety
    ///
    /// The three savepoint operations run under the transaction's lock; dropped mid-way they
    /// leave the connection out of sync, and the backend must not reuse it unchecked.
    fn create_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<(), TxError>> {
        let _ = name;
        Box::pin(async { Err(TxError::NestedNotSupported) })
    }

    /// `ROLLBACK TO SAVEPOINT name`.
    ///
    /// # Errors
    ///
    /// As [`create_savepoint`](Self::create_savepoint).
    ///
    /// # Cancel safety
    ///
    /// As [`create_savepoint`](Self::create_savepoint).
    fn rollback_to_savepoint<'a>(
        &'a mut self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), TxError>> {
        let _ = name;
        Box::pin(async { Err(TxError::NestedNotSupported) })
    }

    /// `RELEASE SAVEPOINT name`.
    ///
    /// # Errors
    ///
    /// As [`create_savepoint`](Self::create_savepoint).
    ///
    /// # Cancel safety
    ///
    /// As [`create_savepoint`](Self::create_savepoint).
    fn release_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<(), TxError>> {
        let _ = name;
        Box::pin(async { Err(TxError::NestedNotSupported) })
    }

    /// The backend's own connection type, for its executor to downcast.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<M: TransactionManager + ?Sized> TransactionManager for Arc<M> {
    fn key(&self) -> ManagerKey {
        (**self).key()
    }
    fn begin(
        &self,
        options: BeginOptions,
    ) -> BoxFuture<'static, Result<Box<dyn PhysicalTransaction>, TxError>> {
        (**self).begin(options)
    }
    fn supports_savepoints(&self) -> bool {
        (**self).supports_savepoints()
    }
    fn backend_name(&self) -> &'static str {
        (**self).backend_name()
    }
}

/// A manager as the engine keeps it.
pub type SharedManager = Arc<dyn TransactionManager>;

/// A manager that can be turned into a [`SharedManager`] when a transaction begins
/// (blanket-implemented for every `Clone` manager; `TxPool` is one).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a transaction manager",
    label = "`manager = ...` must name a `TxPool` (or another `Clone` type implementing `TransactionManager`), or a reference to one",
    note = "use `manager = self.db` where `db: PgTxPool`, or a registered name: `manager = \"orders\"`"
)]
pub trait ShareManager: TransactionManager {
    /// An owned handle on the same resource.
    fn share(&self) -> SharedManager;
}

impl<M: TransactionManager + Clone> ShareManager for M {
    fn share(&self) -> SharedManager {
        Arc::new(self.clone())
    }
}
