//! # tx-sqlx: Spring-style declarative transactions on sqlx
//!
//! The sqlx backend of [tx](crate): [`TxPool`] wraps a `sqlx::Pool` and is both
//!
//! * the **transaction manager** for that pool (Spring's `DataSourceTransactionManager`): it
//!   begins, commits and rolls back physical transactions and manages their savepoints, while
//!   the propagation engine of tx-core decides when; and
//! * a **transaction-aware executor**: `&TxPool` runs each query on the transaction bound to
//!   this pool in the current task, or on a pooled connection in autocommit when there is
//!   none. Queries are written exactly as with a plain `&Pool`.
//!
//! The public names of `tx-core` are re-exported at this crate's root, and [`prelude`] brings
//! the usual names in, so a service depends on `tx-sqlx` alone, with the driver it uses:
//!
//! ```toml
//! [dependencies]
//! tx-sqlx = { version = "0.1", default-features = false, features = ["postgres"] }
//! sqlx = { version = "0.9", default-features = false, features = ["runtime-tokio", "postgres"] }
//! ```
//!
//! ```no_run
//! use tx_sqlx::prelude::*;
//! use tx_sqlx::PgTxPool;
//!
//! #[derive(Debug, thiserror::Error)]
//! pub enum AppError {
//!     #[error("item {0} is out of stock")]
//!     OutOfStock(i64),
//!     /// Every database and transaction failure: a timeout, a serialization failure, a
//!     /// constraint violation, an unexpected rollback, ...
//!     #[error(transparent)]
//!     Tx(#[from] TxError),
//! }
//!
//! // `?` on a sqlx call goes through TxError: a deadline hit inside a statement arrives as
//! // TxError::Timeout, a serialization failure stays is_retryable().
//! impl From<sqlx::Error> for AppError {
//!     fn from(e: sqlx::Error) -> Self {
//!         AppError::Tx(e.into())
//!     }
//! }
//!
//! pub struct OrderService {
//!     db: PgTxPool,
//! }
//!
//! impl OrderService {
//!     #[transactional(manager = self.db, timeout = 5)]
//!     pub async fn place_order(&self, item: i64) -> Result<i64, AppError> {
//!         let stock: i64 = sqlx::query_scalar("SELECT stock FROM items WHERE id = $1 FOR UPDATE")
//!             .bind(item)
//!             .fetch_one(&self.db)
//!             .await?;
//!         if stock == 0 {
//!             return Err(AppError::OutOfStock(item)); // rolled back
//!         }
//!         sqlx::query("UPDATE items SET stock = stock - 1 WHERE id = $1")
//!             .bind(item)
//!             .execute(&self.db)
//!             .await?;
//!         let id = sqlx::query_scalar("INSERT INTO orders (item) VALUES ($1) RETURNING id")
//!             .bind(item)
//!             .fetch_one(&self.db)
//!             .await?;
//!         Ok(id) // committed
//!     }
//!
//!     /// The programmatic form: the closure runs in the transaction; `retry(3)` runs it
//!     /// again after a serialization failure.
//!     pub async fn restock(&self, item: i64, units: i64) -> Result<(), AppError> {
//!         TransactionTemplate::new(self.db.clone())
//!             .isolation(Isolation::Serializable)
//!             .retry(3)
//!             .execute(|_status| async move {
//!                 sqlx::query("UPDATE items SET stock = stock + $1 WHERE id = $2")
//!                     .bind(units)
//!                     .bind(item)
//!                     .execute(&self.db)
//!                     .await?;
//!                 Ok(())
//!             })
//!             .await
//!     }
//! }
//!
//! /// What a caller can tell from the error.
//! async fn place(service: &OrderService) -> &'static str {
//!     match service.place_order(1).await {
//!         Ok(_) => "201 created",
//!         Err(AppError::OutOfStock(_)) => "409 out of stock",
//!         Err(AppError::Tx(TxError::Timeout)) => "503 timed out, nothing was written",
//!         Err(AppError::Tx(e)) if e.is_retryable() => "503 conflict, try again",
//!         Err(AppError::Tx(e)) if e.sqlstate() == Some("23505") => "409 duplicate",
//!         Err(AppError::Tx(_)) => "500",
//!     }
//! }
//! ```
//!
//! ## Errors
//!
//! One story, the one above: the application's error type has a `Tx(TxError)` variant for
//! everything the database and the engine report, and its `From<sqlx::Error>` goes through
//! [`TxError`]'s. Then nothing is lost on the way out of a statement:
//!
//! * a deadline that cut a statement, or refused to start one, is [`TxError::Timeout`],
//!   exactly as when the engine itself rolls back at the deadline;
//! * a serialization failure or deadlock is a [`TxError::Database`] whose
//!   [`is_retryable`](TxError::is_retryable) is true, also when `retry(n)` ran out of
//!   attempts (the last attempt's error is returned);
//! * the database's own code is [`TxError::sqlstate`] (`"23505"` unique violation, ...), and
//!   the driver's `sqlx::Error` is the `source()` of [`TxError::Database`].
//!
//! Code that keeps a `sqlx::Error` (an error type with a `Db(sqlx::Error)` variant, a helper
//! returning `Result<T, sqlx::Error>`) asks it the same questions through [`SqlxErrorExt`]:
//! `e.tx_error()`, `e.is_timeout()`, `e.is_retryable()`, `e.sqlstate()`.
//!
//! ## Backends
//!
//! Enabled by the cargo features `postgres`, `mysql` and `sqlite` (all on by default). The
//! transaction is begun lazily, by the first statement of the scope, in one round trip where
//! the server allows it.
//!
//! | | PostgreSQL ([`PgTxPool`]) | MySQL / MariaDB ([`MySqlTxPool`]) | SQLite ([`SqliteTxPool`]) |
//! |---|---|---|---|
//! | begin | `BEGIN ISOLATION LEVEL <level> READ ONLY\|READ WRITE` (one statement) | `SET TRANSACTION ISOLATION LEVEL <level>; START TRANSACTION READ ONLY\|READ WRITE` (one round trip) | writer: `BEGIN IMMEDIATE`; read-only: `PRAGMA query_only = ON; BEGIN DEFERRED` |
//! | `Isolation::Default` | the server's default (`default_transaction_isolation`, normally READ COMMITTED) | the session's level (normally REPEATABLE READ) | SERIALIZABLE |
//! | `ReadUncommitted` | `READ UNCOMMITTED` (PostgreSQL runs it as READ COMMITTED) | `READ UNCOMMITTED` | SERIALIZABLE |
//! | `ReadCommitted` | `READ COMMITTED` | `READ COMMITTED` | SERIALIZABLE |
//! | `RepeatableRead` | `REPEATABLE READ` (snapshot isolation) | `REPEATABLE READ` | SERIALIZABLE |
//! | `Serializable` | `SERIALIZABLE` (SSI) | `SERIALIZABLE` | SERIALIZABLE |
//! | read-only | `READ ONLY` transaction: writes fail with SQLSTATE 25006 | `START TRANSACTION READ ONLY`: writes fail with error 1792 | `PRAGMA query_only`: writes fail with `SQLITE_READONLY`; restored after the transaction |
//! | deadline (client side) | the engine rolls back and returns [`TxError::Timeout`] at the deadline, also while the body is awaiting | same | same |
//! | deadline (server side) | `SET LOCAL statement_timeout = <remaining ms>` in the `BEGIN` round trip | MariaDB: `SET SESSION max_statement_time` (every statement); MySQL: `max_execution_time` (read-only `SELECT`s only); reset after the transaction | a progress handler interrupts any statement still running at the deadline |
//! | savepoints (`Nested`) | `SAVEPOINT` / `ROLLBACK TO SAVEPOINT` / `RELEASE SAVEPOINT` | same | same |
//! | retryable errors ([`TxError::is_retryable`]) | SQLSTATE 40001, 40P01 | 1213 (deadlock), 1205 (lock wait timeout) | `SQLITE_BUSY`, `SQLITE_LOCKED` |
//!
//! Known limits:
//!
//! * **MySQL/MariaDB: DDL commits implicitly.** `CREATE`, `ALTER`, `DROP`, `TRUNCATE`, ...
//!   inside a transaction commit it and start a new one; a later rollback cannot undo the work
//!   done before the DDL statement. Keep DDL out of transactional scopes.
//! * **MySQL/MariaDB: a deadlock rolls the whole transaction back** (InnoDB), not just the
//!   statement. The transaction refuses further statements and its commit fails with a
//!   retryable error (use `retry(n)`).
//! * **SQLite: one writer per database.** A writer transaction holds the database's write lock
//!   (`BEGIN IMMEDIATE`) until it ends. A `RequiresNew` writer, or a write in a `NotSupported`
//!   scope, while this task's suspended writer transaction holds the lock would wait for
//!   itself: it fails fast with [`TxError::WouldBlock`] naming the cause and the remedy (use
//!   `Nested`, or a second pool on another database file). Read-only `RequiresNew` scopes and
//!   reads in `NotSupported` scopes work (WAL mode recommended). Writers of other tasks wait
//!   for the lock up to the connection's busy timeout, then fail with a retryable error.
//! * **`RequiresNew` takes a second connection** while its task holds the first one (in the
//!   suspended transaction). When every connection of the pool is held by tasks waiting for a
//!   second one, none can come back: the last begin to wait fails at once with
//!   [`TxError::PoolStarvation`]. [`TxPool::reserve_for_nested`] keeps connections for the
//!   inner transactions so that every caller goes through (the README has sizing figures).
//! * **SQLite: isolation is always SERIALIZABLE**, whatever is requested.
//! * **PostgreSQL: a failed statement aborts the transaction.** Only a `Nested` scope
//!   (savepoint) lets the transaction go on after a failure; committing an aborted transaction
//!   rolls it back and returns an error instead of reporting success.
//! * A statement interrupted mid-flight (its future dropped, e.g. by the deadline or a
//!   cancelled call) leaves the connection out of sync: the transaction is then rolled back by
//!   closing the connection instead of returning it to the pool. Without a deadline the server
//!   may finish running the interrupted statement before it notices.
//!
//! ## Errors from `&TxPool`
//!
//! An executor must return `sqlx::Error`. Failures of the engine while preparing a statement
//! (the deadline has passed, the deferred `BEGIN` could not run, SQLite's write lock is held by
//! this task) are returned as follows, so that `?` into [`TxError`] (or your error type via
//! `From<sqlx::Error>`) keeps their meaning:
//!
//! * a driver failure (the `BEGIN` rejected, the pool timed out, ...) is returned as that
//!   original `sqlx::Error`;
//! * [`TxError::PoolClosed`] becomes `sqlx::Error::PoolClosed`;
//! * anything else becomes `sqlx::Error::Io` wrapping the `TxError` itself (`io::ErrorKind`
//!   `TimedOut` for [`TxError::Timeout`], `WouldBlock` for [`TxError::WouldBlock`], `Other`
//!   otherwise): its message is the `TxError`'s, and [`SqlxErrorExt::tx_error`] finds it
//!   (as does `TxError::from`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// docs.rs builds with `--cfg docsrs`: feature-gated items say which feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]
// Backend-specific helpers are unused when only some backends are enabled.
#![cfg_attr(
    not(all(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(dead_code, unused_imports, unused_macros)
)]

mod backend;
mod capacity;
mod error;
mod executor;
mod physical;
mod pool;
pub mod sql_text;
mod transaction_manager;

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

// The engine (tx-core), so that a service depends on this crate alone.
#[doc(hidden)]
pub use tx_core::{__private, sqlx_is_retryable, sqlx_sqlstate};
pub use tx_core::{
    BoxError, Completion, EventBus, Isolation, ListenerHandle, ListenerResult, Operation,
    Propagation, RetryingTemplate, RollbackCause, TransactionDefinition, TransactionExecution,
    TransactionListener, TransactionManager, TransactionPhase, TransactionStatus,
    TransactionSynchronization, TransactionTemplate, TxError, add_transaction_listener,
    after_commit, after_completion, after_rollback, connection, current_status,
    is_actual_transaction_active, manager, register_manager, register_synchronization,
    set_default_manager, set_rollback_only, transactional,
};

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use tx_core::describe_metrics;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub use tx_core::testing;

pub use error::SqlxErrorExt;
pub use pool::{TxConnection, TxPool};

#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub use pool::MySqlTxPool;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use pool::PgTxPool;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use pool::SqliteTxPool;

/// The names a transactional service usually needs: `use tx_sqlx::prelude::*;` (with
/// [`SqlxErrorExt`], so its methods work on any `sqlx::Error`).
///
/// ```
/// use tx_sqlx::prelude::*;
///
/// let template = TransactionTemplate::default()
///     .propagation(Propagation::RequiresNew)
///     .isolation(Isolation::Serializable);
/// # let _ = template;
/// fn outcome(c: Completion) -> bool { matches!(c, Completion::Committed) }
/// # let _ = outcome;
/// fn check(status: &TransactionStatus) -> Result<(), TxError> {
///     if status.is_rollback_only() { Err(TxError::UnexpectedRollback) } else { Ok(()) }
/// }
/// # let _ = check;
/// # fn pools(_: Option<TxPool<sqlx::Postgres>>) {}
/// ```
pub mod prelude {
    pub use crate::{SqlxErrorExt, TxPool};
    pub use tx_core::{
        Completion, Isolation, Propagation, RetryingTemplate, TransactionStatus,
        TransactionTemplate, TxError, transactional,
    };
}

/// The README's example compiles (its code blocks run as doctests of this crate; one of them
/// uses `tx_sqlx::testing`).
#[cfg(all(doctest, feature = "postgres", feature = "testing"))]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
