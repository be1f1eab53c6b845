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
//! Everything of `tx-core` is re-exported at this crate's root, and [`prelude`] brings the
//! usual names in, so a service depends on `tx-sqlx` alone.
//!
//! ```no_run
//! use std::time::Duration;
//! use tx_sqlx::prelude::*;
//!
//! #[derive(Debug)]
//! enum AppError {
//!     Tx(TxError),
//!     OutOfStock,
//! }
//! impl From<TxError> for AppError {
//!     fn from(e: TxError) -> Self { AppError::Tx(e) }
//! }
//! impl From<sqlx::Error> for AppError {
//!     fn from(e: sqlx::Error) -> Self { AppError::Tx(e.into()) }
//! }
//!
//! # async fn run() -> Result<(), AppError> {
//! let db = TxPool::new(sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?);
//!
//! let order_id: i64 = TransactionTemplate::new(db.clone())
//!     .isolation(Isolation::RepeatableRead)
//!     .timeout(Duration::from_secs(5))
//!     .execute(|_status: TransactionStatus| {
//!         let db = db.clone();
//!         async move {
//!             let stock: i64 = sqlx::query_scalar("select stock from items where id = 1 for update")
//!                 .fetch_one(&db)
//!                 .await?;
//!             if stock == 0 {
//!                 return Err(AppError::OutOfStock); // rolled back
//!             }
//!             sqlx::query("update items set stock = stock - 1 where id = 1").execute(&db).await?;
//!             let id = sqlx::query_scalar("insert into orders(item) values (1) returning id")
//!                 .fetch_one(&db)
//!                 .await?;
//!             Ok(id) // committed
//!         }
//!     })
//!     .await?;
//! # let _ = order_id; Ok(()) }
//! ```
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
//!   otherwise): its message is the `TxError`'s, and `io_error.get_ref()` downcasts to
//!   `TxError`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Backend-specific helpers are unused when only some backends are enabled.
#![cfg_attr(
    not(all(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(dead_code, unused_imports, unused_macros)
)]

mod error;
mod executor;
mod physical;
mod pool;

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use tx_core::*;

pub use pool::{TxConnection, TxPool};

#[cfg(feature = "mysql")]
pub use pool::MySqlTxPool;
#[cfg(feature = "postgres")]
pub use pool::PgTxPool;
#[cfg(feature = "sqlite")]
pub use pool::SqliteTxPool;

/// The names a transactional service usually needs: `use tx_sqlx::prelude::*;`.
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
    pub use crate::TxPool;
    pub use tx_core::{
        Completion, Isolation, Propagation, TransactionStatus, TransactionTemplate, TxError,
        transactional,
    };
}

/// The README's example compiles (its code blocks run as doctests of this crate).
#[cfg(all(doctest, feature = "postgres"))]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
