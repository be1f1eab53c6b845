//! Test transactions that leave nothing behind (feature `testing`).
//!
//! [`rollback`] runs a test body in a transaction on a [`TxPool`](crate::TxPool) that is always rolled back.
//! The code under test runs inside it unchanged: its `#[transactional]` scopes on that pool
//! take savepoints of the test transaction where they would begin (or suspend) a transaction,
//! so an audit row written by a `RequiresNew` scope is visible to the test and gone after it,
//! and `after_commit` hooks run when the scope that owns them would have committed.
//!
//! ```no_run
//! use tx_sqlx::prelude::*;
//!
//! #[transactional(manager = db)]
//! async fn place_order(db: &PgTxPool, item: i64) -> Result<i64, TxError> {
//!     audit(db, item).await?;
//!     Ok(sqlx::query_scalar("insert into orders (item) values ($1) returning id")
//!         .bind(item)
//!         .fetch_one(db)
//!         .await?)
//! }
//!
//! #[transactional(manager = db, propagation = RequiresNew)]
//! async fn audit(db: &PgTxPool, item: i64) -> Result<(), TxError> {
//!     sqlx::query("insert into audit (item) values ($1)").bind(item).execute(db).await?;
//!     Ok(())
//! }
//!
//! # async fn test(db: PgTxPool) -> Result<(), TxError> {
//! tx_sqlx::testing::rollback(&db, || async {
//!     place_order(&db, 7).await?;
//!     let audited: i64 = sqlx::query_scalar("select count(*) from audit where item = 7")
//!         .fetch_one(&db)
//!         .await?;
//!     assert_eq!(audited, 1); // visible here, rolled back with the test
//!     Ok::<_, TxError>(())
//! })
//! .await?;
//! # Ok(()) }
//! ```
//!
//! Keep DDL out of the body on MySQL/MariaDB (it commits implicitly); on SQLite the test
//! transaction holds the database's write lock, so tests that run in parallel need a database
//! each.

use std::future::Future;

use tx_core::manager::ShareManager;

use crate::TxError;

/// Runs `body` in a transaction on `db` (a [`TxPool`](crate::TxPool), or any other
/// transaction manager) that is always rolled back, whatever the body
/// returns, also when it panics or an assertion fails (the panic then continues).
///
/// Inside it, scopes of the code under test on `db` behave as they would without the test
/// transaction, on savepoints of it:
///
/// * `Required` and `Nested` outside every transaction, and `RequiresNew` anywhere, run on a
///   savepoint released where their transaction would commit (their `before_commit`,
///   `after_commit` and `after_completion` hooks run around the release) and rolled back to
///   where it would roll back;
/// * `NotSupported` anywhere, and `Supports` and `Never` outside every transaction, run on a
///   savepoint that is always released (autocommit would have kept their statements);
/// * joining scopes, `Nested` inside a transaction and `Never` inside one are unchanged;
///   `Mandatory` outside every transaction fails with [`TxError::NoTransaction`], as in
///   production.
///
/// Statements the body runs on `&db` itself run in the test transaction and see everything
/// the code under test wrote. Inside a transaction on `db` (another test transaction, for
/// instance), it runs on a savepoint of it that is always rolled back to.
///
/// What one transaction cannot reproduce: a `RequiresNew` scope's work is undone when a scope
/// around it rolls back (in production it stays committed), it sees the uncommitted writes of
/// the scope it suspends, and inner scopes run with the test transaction's isolation level and
/// read-only flag. A statement that fails directly in the body aborts the test transaction on
/// PostgreSQL (run it in a `Nested` scope to go on). Work in a `tokio::spawn`ed task is outside
/// the test transaction and commits for real.
///
/// # Errors
///
/// Whatever `body` returns (after the rollback), and the engine's errors through
/// `From<TxError>`, e.g. the `BEGIN` of the test transaction failing on the first statement.
///
/// # Cancel safety
///
/// Dropping the future (a test timeout) rolls the test transaction back.
///
/// ```no_run
/// use tx_sqlx::{SqliteTxPool, TxError};
///
/// # async fn test(db: SqliteTxPool) -> Result<(), TxError> {
/// tx_sqlx::testing::rollback(&db, || async {
///     sqlx::query("insert into items (name) values ('pen')").execute(&db).await?;
///     let n: i64 = sqlx::query_scalar("select count(*) from items").fetch_one(&db).await?;
///     assert_eq!(n, 1);
///     Ok::<_, TxError>(())
/// })
/// .await?;
/// // Rolled back: the table is as it was.
/// let n: i64 = sqlx::query_scalar("select count(*) from items").fetch_one(&db).await?;
/// assert_eq!(n, 0);
/// # Ok(()) }
/// ```
pub async fn rollback<M, T, E, F, Fut>(db: &M, body: F) -> Result<T, E>
where
    M: ShareManager,
    E: From<TxError>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    tx_core::testing::rollback(db, body).await
}
