//! SQLite: always serializable; `BEGIN IMMEDIATE` for writers (the write lock is taken up
//! front, so a transaction never fails upgrading a read lock), `BEGIN` + `PRAGMA query_only`
//! for read-only transactions; the deadline interrupts running statements (progress handler).
//!
//! SQLite has a single writer per database. A task that suspends a writer transaction
//! (RequiresNew / NotSupported inside it) and then writes on another connection of the same
//! database would wait for a lock it holds itself: both cases fail fast with
//! [`TxError::WouldBlock`] instead of waiting out the busy timeout.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use futures_core::future::BoxFuture;
use sqlx::{Sqlite, SqliteConnection};
use tx_core::manager::{BeginOptions, ManagerKey};
use tx_core::{Operation, TxError};

use crate::backend::{Backend, BeginStatement, ServerFacts, WATCHDOG_ACTIVE, WATCHDOG_OFF};
use crate::error::{db_error, is_sqlite_busy, sqlite_would_block, tx_to_sqlx};

/// How many virtual-machine instructions between two deadline checks.
const PROGRESS_OPS: i32 = 1000;

/// The primary result code of a SQLite error (the extended code's low byte).
fn primary_code(err: &sqlx::Error) -> Option<u32> {
    err.as_database_error()
        .and_then(|db| db.code())
        .and_then(|c| c.parse::<u32>().ok())
        .map(|n| n & 0xff)
}

impl Backend for Sqlite {
    const DISPLAY_NAME: &'static str = "SQLite";
    const BACKEND_NAME: &'static str = "sqlite";
    // After an automatic rollback the connection is back in autocommit: refuse statements.
    const REFUSE_AFTER_ABORT: bool = true;
    const CLOSE_ON_FAILED_BEGIN: bool = false;
    const WATCHDOG: bool = true;
    const PREPARE_SAVEPOINTS: bool = true;

    /// SQLITE_BUSY, NOMEM, INTERRUPT, IOERR, FULL inside a transaction may roll the whole
    /// transaction back automatically ("you should rollback the transaction before continuing").
    fn aborts(err: &sqlx::Error) -> bool {
        matches!(primary_code(err), Some(5 | 7 | 9 | 10 | 13))
    }

    /// SQLITE_INTERRUPT: the deadline progress handler stopped the statement.
    fn deadline_kill(err: &sqlx::Error) -> bool {
        primary_code(err) == Some(9)
    }

    fn check_begin(options: &BeginOptions) -> Result<(), TxError> {
        if options.suspended_holds_connection && !options.read_only {
            let what = if options.name.is_empty() {
                "Beginning a writer transaction (RequiresNew inside a writer transaction)"
                    .to_owned()
            } else {
                format!(
                    "Beginning the writer transaction [{}] (RequiresNew inside a writer transaction)",
                    options.name
                )
            };
            return Err(sqlite_would_block(&what));
        }
        if options.isolation.sql().is_some() {
            tracing::trace!(target: "tx", "SQLite transactions are always serializable; isolation {:?} needs nothing", options.isolation);
        }
        Ok(())
    }

    async fn begin_statement(
        conn: &mut SqliteConnection,
        _facts: &ServerFacts,
        options: &BeginOptions,
    ) -> Result<BeginStatement, TxError> {
        let mut reset = None;
        let sql = if options.read_only {
            // query_only is a connection setting, which the pool's own options may have set:
            // switched on for the transaction only when it is off, and then switched off again
            // after COMMIT/ROLLBACK (the connection is closed if that fails).
            let query_only: bool = sqlx::query_scalar("PRAGMA query_only")
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| db_error(Operation::Begin, e))?;
            if query_only {
                "BEGIN DEFERRED"
            } else {
                reset = Some("PRAGMA query_only = OFF");
                "PRAGMA query_only = ON; BEGIN DEFERRED"
            }
        } else {
            // Take the write lock now: a deferred writer could fail with SQLITE_BUSY when it
            // upgrades its read lock, and a busy BEGIN IMMEDIATE can simply be retried.
            "BEGIN IMMEDIATE"
        };
        Ok(BeginStatement {
            sql: Cow::Borrowed(sql),
            reset,
        })
    }

    /// Interrupts any statement still running at the deadline (SQLITE_INTERRUPT), or right
    /// away once the transaction is abandoned with a statement running. Taken off the
    /// connection when the transaction ends, so that it never outlives it.
    async fn install_watchdog(
        conn: &mut SqliteConnection,
        state: Arc<AtomicU8>,
        remaining: Duration,
    ) -> Result<(), TxError> {
        let deadline = Instant::now() + remaining;
        let watched = state;
        let mut handle = conn
            .lock_handle()
            .await
            .map_err(|e| db_error(Operation::Begin, e))?;
        handle.set_progress_handler(PROGRESS_OPS, move || {
            match watched.load(Ordering::Relaxed) {
                WATCHDOG_ACTIVE => Instant::now() < deadline,
                WATCHDOG_OFF => true,
                _ => false,
            }
        });
        Ok(())
    }

    fn remove_watchdog(conn: &mut SqliteConnection) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(async move {
            conn.lock_handle().await?.remove_progress_handler();
            Ok(())
        })
    }

    fn must_not_wait(key: ManagerKey) -> bool {
        tx_core::connection::suspended_holds_connection(key)
    }

    fn enter_no_wait(conn: &mut SqliteConnection) -> BoxFuture<'_, Result<i64, sqlx::Error>> {
        Box::pin(async move {
            let saved: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
                .fetch_one(&mut *conn)
                .await?;
            sqlx::raw_sql("PRAGMA busy_timeout = 0")
                .execute(&mut *conn)
                .await?;
            Ok(saved)
        })
    }

    fn exit_no_wait(
        conn: &mut SqliteConnection,
        saved: i64,
    ) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let sql = sqlx::AssertSqlSafe(format!("PRAGMA busy_timeout = {saved}"));
            sqlx::raw_sql(sql).execute(&mut *conn).await.map(|_| ())
        })
    }

    fn map_no_wait_error(err: sqlx::Error) -> sqlx::Error {
        if is_sqlite_busy(&err) {
            tx_to_sqlx(sqlite_would_block(&format!(
                "A write outside the transaction (a NotSupported scope inside a writer transaction) \
                 failed with \"{err}\": it"
            )))
        } else {
            err
        }
    }
}
