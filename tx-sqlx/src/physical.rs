//! One physical transaction on one pooled connection (Spring's `DataSourceTransactionObject`).
//!
//! The transaction is begun through sqlx's own transaction manager
//! (`<DB as Database>::TransactionManager::begin` with a custom statement), so sqlx tracks the
//! transaction depth of the connection exactly as for `pool.begin_with(..)`. We keep the
//! `PoolConnection` itself rather than a `sqlx::Transaction` so that a connection whose state
//! is in doubt (a statement interrupted mid-flight, a failed reset) can be *closed* instead of
//! going back to the pool.

use std::any::Any;
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Database, SqlSafeStr};
use sqlx_core::transaction::TransactionManager as SqlxTransactionManager;
use tx_core::connection::TransactionGuard;
use tx_core::manager::{BoxFuture, PhysicalTransaction};
use tx_core::{Operation, TxError};

use crate::backend::{Backend, WATCHDOG_INTERRUPT, WATCHDOG_OFF};
use crate::capacity::Admission;
use crate::error::{TransactionAborted, db_error, is_connection_error, tx_to_sqlx};

/// `[SAVEPOINT, RELEASE SAVEPOINT, ROLLBACK TO SAVEPOINT]` texts of savepoint `tx_sp_N`, one
/// row per `N`.
macro_rules! fixed_savepoints {
    ($($n:literal)*) => {
        [$([
            concat!("SAVEPOINT tx_sp_", $n),
            concat!("RELEASE SAVEPOINT tx_sp_", $n),
            concat!("ROLLBACK TO SAVEPOINT tx_sp_", $n),
        ]),*]
    };
}

/// How long an explicit `ROLLBACK` (or a session reset) may take before the connection is
/// closed instead (closing it rolls the transaction back on the server too).
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How a statement in a transaction ended.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct StatementEnd {
    /// It failed with a retryable error (serialization failure, deadlock, busy).
    pub(crate) retryable: bool,
    /// It was stopped by the server-side bound derived from the deadline.
    pub(crate) deadline_kill: bool,
}

/// An open physical transaction of a [`TxPool`](crate::TxPool).
pub(crate) struct SqlxTransaction<DB: Database> {
    conn: Option<PoolConnection<DB>>,
    /// `BEGIN` succeeded and neither `COMMIT` nor `ROLLBACK` has yet.
    open: bool,
    /// A statement (or begin/commit/rollback) was started and has not completed: if it was
    /// dropped mid-flight the connection is out of sync and must be closed, not reused.
    in_flight: bool,
    /// The server aborted the transaction after this failure; (message, retryable).
    aborted: Option<(String, bool)>,
    /// SQL restoring session state changed at begin (run after COMMIT/ROLLBACK).
    reset: Option<&'static str>,
    /// The deadline watchdog installed at begin (SQLite's progress handler): its state is
    /// [`WATCHDOG_ACTIVE`](crate::backend::WATCHDOG_ACTIVE) until the transaction ends, then
    /// [`WATCHDOG_OFF`], or [`WATCHDOG_INTERRUPT`] to stop a statement left running. Taken off
    /// the connection ([`Backend::remove_watchdog`]) when the transaction ends, before the
    /// connection goes back.
    watchdog: Option<Arc<AtomicU8>>,
    /// The transaction's share of the pool under a reservation, released after the connection.
    admission: Admission,
    /// The backend's part of `Drop`: a `Drop` impl cannot require `DB: Backend` (the type is
    /// named by `TxPool::acquire` for any database), so [`new`](Self::new) captures it. Called
    /// once, when the transaction is dropped; statements never go through it.
    drop_backend: fn(&mut Self),
}

impl<DB: Database> SqlxTransaction<DB> {
    /// The transaction of `DB` behind a locked [`TransactionGuard`].
    pub(crate) fn from_guard(guard: &mut TransactionGuard) -> Result<&mut Self, TxError> {
        guard
            .physical()
            .as_any_mut()
            .downcast_mut::<Self>()
            .ok_or_else(|| {
                TxError::database(
                    Operation::Statement,
                    false,
                    "the transaction bound to this TxPool is not a tx-sqlx transaction of the same \
                     database type",
                )
            })
    }

    /// Takes the connection out for a [`TxConnection`](crate::TxConnection) guard.
    pub(crate) fn take_connection(&mut self) -> Result<PoolConnection<DB>, TxError> {
        self.conn.take().ok_or_else(lost_connection)
    }

    /// Puts back a connection taken with [`take_connection`](Self::take_connection).
    pub(crate) fn put_connection(&mut self, conn: PoolConnection<DB>) {
        self.conn = Some(conn);
    }
}

impl<DB: Backend> SqlxTransaction<DB> {
    /// Wraps a freshly acquired connection (nothing sent yet).
    pub(crate) fn new((conn, admission): (PoolConnection<DB>, Admission)) -> Self {
        SqlxTransaction {
            conn: Some(conn),
            open: false,
            in_flight: false,
            aborted: None,
            reset: None,
            watchdog: None,
            admission,
            drop_backend: Self::drop_without_end,
        }
    }

    /// Registers SQL to run after the transaction ends, restoring a session setting.
    pub(crate) fn set_reset(&mut self, sql: &'static str) {
        self.reset = Some(sql);
    }

    /// Registers the deadline watchdog installed on the connection, whose state is `state`;
    /// [`Backend::remove_watchdog`] takes it off the connection afterwards, whatever ended the
    /// transaction.
    pub(crate) fn set_watchdog(&mut self, state: Arc<AtomicU8>) {
        self.watchdog = Some(state);
    }

    /// The connection, for backend code running during begin.
    pub(crate) fn raw_connection(&mut self) -> &mut DB::Connection {
        self.conn.as_mut().expect("connection present while begun")
    }

    /// Sends `statement` (which must begin a transaction) through sqlx's transaction manager.
    pub(crate) async fn begin(&mut self, statement: Cow<'static, str>) -> Result<(), TxError> {
        let conn = self.conn.as_mut().expect("connection present before begin");
        self.in_flight = true;
        let result = <DB::TransactionManager as SqlxTransactionManager>::begin(
            conn,
            Some(AssertSqlSafe(statement).into_sql_str()),
        )
        .await;
        match &result {
            Ok(()) => {
                self.open = true;
                self.in_flight = false;
            }
            Err(e) => {
                // A failed multi-statement begin may leave session state (or even an aborted
                // transaction) behind: keep `in_flight` so the connection gets closed.
                if !DB::CLOSE_ON_FAILED_BEGIN && !is_connection_error(e) && self.reset.is_none() {
                    self.in_flight = false;
                }
            }
        }
        result.map_err(|e| db_error(Operation::Begin, e))
    }

    /// Starts a statement: the connection to run it on.
    pub(crate) fn start_statement(&mut self) -> Result<&mut DB::Connection, sqlx::Error> {
        if DB::REFUSE_AFTER_ABORT
            && let Some((cause, retryable)) = &self.aborted
        {
            return Err(tx_to_sqlx(TxError::database(
                Operation::Statement,
                *retryable,
                TransactionAborted {
                    backend: DB::DISPLAY_NAME,
                    cause: cause.clone(),
                },
            )));
        }
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| tx_to_sqlx(lost_connection()))?;
        self.in_flight = true;
        Ok(&mut **conn)
    }

    /// Ends a statement started with [`start_statement`](Self::start_statement).
    pub(crate) fn end_statement<T>(&mut self, result: &Result<T, sqlx::Error>) -> StatementEnd {
        match result {
            Ok(_) => {
                self.in_flight = false;
                StatementEnd::default()
            }
            Err(e) => {
                if !is_connection_error(e) {
                    self.in_flight = false;
                }
                let retryable = tx_core::sqlx_is_retryable(e);
                if self.aborted.is_none() && DB::aborts(e) {
                    self.aborted = Some((e.to_string(), retryable));
                }
                StatementEnd {
                    retryable,
                    deadline_kill: DB::deadline_kill(e),
                }
            }
        }
    }

    /// Tells the watchdog the transaction is ending: off, or interrupting the statement still
    /// running (`interrupt`). It stays installed until [`finish`](Self::finish) (or closing the
    /// connection) takes it off.
    fn end_watchdog(&self, interrupt: bool) {
        if let Some(w) = &self.watchdog {
            let value = if interrupt {
                WATCHDOG_INTERRUPT
            } else {
                WATCHDOG_OFF
            };
            w.store(value, Ordering::Relaxed);
        }
    }

    /// Closes the connection instead of returning it: the server rolls back whatever is
    /// open on it. Never blocks (sqlx closes it in a background task).
    fn close(&mut self) {
        self.end_watchdog(self.in_flight);
        self.watchdog = None;
        if let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
        }
        self.open = false;
    }

    /// After COMMIT/ROLLBACK: restores session settings and takes the watchdog off, then
    /// returns the connection (or closes it when that failed).
    async fn finish(&mut self) {
        self.end_watchdog(false);
        let (reset, watchdog) = (self.reset.take(), self.watchdog.take());
        if (reset.is_some() || watchdog.is_some())
            && let Some(conn) = self.conn.as_mut()
        {
            self.in_flight = true;
            if restore_session::<DB>(conn, reset, watchdog.is_some()).await {
                self.in_flight = false;
            } else {
                self.close();
            }
        }
        // Dropping the PoolConnection returns it to the pool; then the admission is released.
        self.conn = None;
        self.admission = None;
    }

    async fn rollback_inner(&mut self) -> Result<(), TxError> {
        if self.conn.is_none() {
            return Ok(());
        }
        if !self.open {
            self.finish().await;
            return Ok(());
        }
        if self.in_flight {
            // A statement was interrupted (e.g. by the deadline): the connection may still be
            // busy with it. Do not wait: closing the connection rolls the transaction back.
            tracing::debug!(target: "tx", "rolling back by closing the connection: a statement was interrupted mid-flight");
            self.close();
            return Ok(());
        }
        self.end_watchdog(false);
        let conn = self.conn.as_mut().expect("checked above");
        self.in_flight = true;
        let result = tokio::time::timeout(
            ROLLBACK_TIMEOUT,
            <DB::TransactionManager as SqlxTransactionManager>::rollback(conn),
        )
        .await;
        match result {
            Ok(Ok(())) => {
                self.open = false;
                self.in_flight = false;
                self.finish().await;
            }
            Ok(Err(e)) => {
                // The connection is closed, which rolls the transaction back on the server.
                tracing::warn!(target: "tx", error = %e, "ROLLBACK failed; closing the connection instead (the server discards the transaction)");
                self.close();
            }
            Err(_) => {
                tracing::warn!(target: "tx", "ROLLBACK did not complete in {ROLLBACK_TIMEOUT:?}; closing the connection instead");
                self.close();
            }
        }
        Ok(())
    }

    async fn commit_inner(&mut self) -> Result<(), TxError> {
        self.end_watchdog(self.in_flight);
        if let Some((cause, retryable)) = self.aborted.take() {
            self.rollback_inner().await?;
            return Err(TxError::database(
                Operation::Commit,
                retryable,
                TransactionAborted {
                    backend: DB::DISPLAY_NAME,
                    cause,
                },
            ));
        }
        let conn = self.conn.as_mut().ok_or_else(lost_connection)?;
        self.in_flight = true;
        match <DB::TransactionManager as SqlxTransactionManager>::commit(conn).await {
            Ok(()) => {
                self.open = false;
                self.in_flight = false;
                self.finish().await;
                Ok(())
            }
            Err(e) if is_connection_error(&e) => {
                self.close();
                Err(TxError::CommitOutcomeUnknown(Box::new(e)))
            }
            Err(e) => {
                // The server answered: the transaction did not commit (serialization failure,
                // deferred constraint, SQLite busy, ...). Make sure it is rolled back.
                self.in_flight = false;
                let retryable = tx_core::sqlx_is_retryable(&e);
                self.rollback_inner().await?;
                Err(TxError::database(Operation::Commit, retryable, e))
            }
        }
    }

    async fn savepoint(&mut self, op: SavepointOp, name: &str) -> Result<(), TxError> {
        let fixed = op.fixed_sql(name);
        // 63: PostgreSQL's identifier limit, the shortest of the three databases'.
        if fixed.is_none() && !crate::sql_text::is_plain_identifier(name, 63) {
            return Err(TxError::database(
                Operation::Savepoint,
                false,
                format!("invalid savepoint name {name:?}"),
            ));
        }
        let conn = self
            .start_statement()
            .map_err(|e| db_error(Operation::Savepoint, e))?;
        let result = match fixed {
            Some(sql) if DB::PREPARE_SAVEPOINTS => DB::exec_prepared(conn, sql).await,
            Some(sql) => DB::exec_raw(conn, sql.into_sql_str()).await,
            None => {
                let sql = AssertSqlSafe(format!("{} {name}", op.verb())).into_sql_str();
                DB::exec_raw(conn, sql).await
            }
        };
        self.end_statement(&result);
        result.map_err(|e| db_error(Operation::Savepoint, e))
    }
}

/// The statements of a savepoint.
#[derive(Debug, Clone, Copy)]
enum SavepointOp {
    Create,
    Release,
    RollBackTo,
}

/// The texts of [`SavepointOp`] (in its order) for the names the engine gives a transaction's
/// first savepoints (`tx_sp_1` to `tx_sp_9`), so that the usual ones are not formatted per use.
const FIXED_SAVEPOINTS: [[&str; 3]; 9] = fixed_savepoints!(1 2 3 4 5 6 7 8 9);

impl SavepointOp {
    fn verb(self) -> &'static str {
        match self {
            SavepointOp::Create => "SAVEPOINT",
            SavepointOp::Release => "RELEASE SAVEPOINT",
            SavepointOp::RollBackTo => "ROLLBACK TO SAVEPOINT",
        }
    }

    /// The statement for savepoint `name` from [`FIXED_SAVEPOINTS`], if it has one.
    fn fixed_sql(self, name: &str) -> Option<&'static str> {
        match name.strip_prefix("tx_sp_")?.as_bytes() {
            &[digit @ b'1'..=b'9'] => {
                Some(FIXED_SAVEPOINTS[usize::from(digit - b'1')][self as usize])
            }
            _ => None,
        }
    }
}

/// Runs `reset` and, with `remove_watchdog`, [`Backend::remove_watchdog`] (each bounded by
/// [`ROLLBACK_TIMEOUT`]) on a connection whose transaction has ended; false when either failed
/// (the connection must then be closed).
async fn restore_session<DB: Backend>(
    conn: &mut PoolConnection<DB>,
    reset: Option<&'static str>,
    remove_watchdog: bool,
) -> bool {
    if let Some(sql) = reset {
        let done = tokio::time::timeout(
            ROLLBACK_TIMEOUT,
            DB::exec_raw(&mut **conn, sql.into_sql_str()),
        )
        .await;
        if !matches!(done, Ok(Ok(()))) {
            tracing::warn!(target: "tx", "failed to reset the session after a transaction ({sql}); closing the connection");
            return false;
        }
    }
    if remove_watchdog {
        let done = tokio::time::timeout(ROLLBACK_TIMEOUT, DB::remove_watchdog(&mut **conn)).await;
        if !matches!(done, Ok(Ok(()))) {
            tracing::warn!(target: "tx", "failed to remove the deadline watchdog after a transaction; closing the connection");
            return false;
        }
    }
    true
}

fn lost_connection() -> TxError {
    TxError::database(
        Operation::Statement,
        false,
        "the transaction's connection is gone (a TxConnection guard was leaked, or the \
         transaction already ended)",
    )
}

impl<DB: Backend> PhysicalTransaction for SqlxTransaction<DB> {
    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>> {
        Box::pin(async move { self.commit_inner().await })
    }

    fn rollback(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>> {
        Box::pin(async move { self.rollback_inner().await })
    }

    fn create_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<(), TxError>> {
        Box::pin(self.savepoint(SavepointOp::Create, name))
    }

    fn rollback_to_savepoint<'a>(
        &'a mut self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), TxError>> {
        Box::pin(async move {
            self.savepoint(SavepointOp::RollBackTo, name).await?;
            // Rolling back to a savepoint that exists undoes the failure that aborted the
            // transaction (any such failure happened after the savepoint was created).
            self.aborted = None;
            Ok(())
        })
    }

    fn release_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<(), TxError>> {
        Box::pin(self.savepoint(SavepointOp::Release, name))
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl<DB: Database> Drop for SqlxTransaction<DB> {
    fn drop(&mut self) {
        (self.drop_backend)(self);
    }
}

impl<DB: Backend> SqlxTransaction<DB> {
    /// Dropped without `commit`/`rollback` (a cancelled call): roll back without blocking.
    fn drop_without_end(&mut self) {
        self.end_watchdog(self.in_flight);
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.open {
            // Queues ROLLBACK; sqlx flushes it when the connection is released to the pool
            // (the release pings the connection) and decrements its transaction depth now.
            <DB::TransactionManager as SqlxTransactionManager>::start_rollback(&mut conn);
        }
        let runtime = tokio::runtime::Handle::try_current();
        let restore = self.reset.is_some() || self.watchdog.is_some();
        if self.in_flight || (restore && runtime.is_err()) {
            // Out of sync (or no way to restore the session): close instead of reusing.
            conn.close_on_drop();
            return;
        }
        if let (true, Ok(runtime)) = (restore, runtime) {
            let reset = self.reset.take();
            let remove_watchdog = self.watchdog.take().is_some();
            let admission = self.admission.take();
            runtime.spawn(async move {
                let mut conn = conn;
                if !restore_session::<DB>(&mut conn, reset, remove_watchdog).await {
                    conn.close_on_drop();
                }
                drop(conn);
                drop(admission);
            });
        }
        // Otherwise `conn` drops here and goes back to the pool.
    }
}

#[cfg(test)]
mod tests {
    use super::SavepointOp;

    #[test]
    fn fixed_savepoint_texts() {
        assert_eq!(
            SavepointOp::Create.fixed_sql("tx_sp_1"),
            Some("SAVEPOINT tx_sp_1")
        );
        assert_eq!(
            SavepointOp::Release.fixed_sql("tx_sp_9"),
            Some("RELEASE SAVEPOINT tx_sp_9")
        );
        assert_eq!(
            SavepointOp::RollBackTo.fixed_sql("tx_sp_4"),
            Some("ROLLBACK TO SAVEPOINT tx_sp_4")
        );
        for other in ["tx_sp_10", "tx_sp_0", "tx_sp_01", "tx_sp_", "sp_1", ""] {
            assert_eq!(SavepointOp::Create.fixed_sql(other), None, "{other}");
        }
    }
}
