//! SQLite: always serializable; `BEGIN IMMEDIATE` for writers (the write lock is taken up
//! front, so a transaction never fails upgrading a read lock), `BEGIN` + `PRAGMA query_only`
//! for read-only transactions; the deadline interrupts running statements (progress handler).
//!
//! SQLite has a single writer per database. A task that suspends a writer transaction
//! (RequiresNew / NotSupported inside it) and then writes on another connection of the same
//! database would wait for a lock it holds itself: both cases fail fast with
//! [`TxError::WouldBlock`] instead of waiting out the busy timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use futures_core::future::BoxFuture as SqlxBoxFuture;
use sqlx::{Sqlite, SqliteConnection};
use tx_core::manager::{
    BeginOptions, BoxFuture, ManagerKey, PhysicalTransaction, TransactionManager,
};
use tx_core::{Operation, TxError};

use crate::error::{db_error, is_sqlite_busy, sqlite_would_block, tx_to_sqlx};
use crate::executor::{Backend, exec_raw, impl_executor};
use crate::physical::{Flavor, SqlxTransaction, WATCHDOG_ACTIVE, WATCHDOG_OFF};
use crate::pool::TxPool;

/// How many virtual-machine instructions between two deadline checks.
const PROGRESS_OPS: i32 = 1000;

static FLAVOR: Flavor = Flavor {
    name: "SQLite",
    // SQLITE_BUSY, NOMEM, INTERRUPT, IOERR, FULL inside a transaction may roll the whole
    // transaction back automatically ("you should rollback the transaction before continuing").
    aborts: |e| {
        e.as_database_error()
            .and_then(|db| db.code())
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|n| matches!(n & 0xff, 5 | 7 | 9 | 10 | 13))
    },
    // After an automatic rollback the connection is back in autocommit: refuse statements.
    refuse_after_abort: true,
    // SQLITE_INTERRUPT: the deadline progress handler stopped the statement.
    deadline_kill: |e| {
        e.as_database_error()
            .and_then(|db| db.code())
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|n| n & 0xff == 9)
    },
    close_on_failed_begin: false,
};

impl Backend for Sqlite {
    fn must_not_wait(key: ManagerKey) -> bool {
        tx_core::connection::suspended_holds_connection(key)
    }

    fn enter_no_wait(conn: &mut SqliteConnection) -> SqlxBoxFuture<'_, Result<i64, sqlx::Error>> {
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
    ) -> SqlxBoxFuture<'_, Result<(), sqlx::Error>> {
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

impl_executor!(Sqlite);

async fn begin(
    db: TxPool<Sqlite>,
    options: BeginOptions,
) -> Result<SqlxTransaction<Sqlite>, TxError> {
    if options.suspended_holds_connection && !options.read_only {
        let what = if options.name.is_empty() {
            "Beginning a writer transaction (RequiresNew inside a writer transaction)".to_owned()
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
    let leased = db.connection_for_begin(&options).await?;
    let mut tx = SqlxTransaction::new(leased, exec_raw::<Sqlite>, &FLAVOR);
    let sql = if options.read_only {
        // query_only is a connection setting, which the pool's own options may have set:
        // switched on for the transaction only when it is off, and then switched off again
        // after COMMIT/ROLLBACK (the connection is closed if that fails).
        let query_only: bool = sqlx::query_scalar("PRAGMA query_only")
            .fetch_one(&mut **tx.raw_connection())
            .await
            .map_err(|e| db_error(Operation::Begin, e))?;
        if query_only {
            "BEGIN DEFERRED"
        } else {
            tx.set_reset("PRAGMA query_only = OFF");
            "PRAGMA query_only = ON; BEGIN DEFERRED"
        }
    } else {
        // Take the write lock now: a deferred writer could fail with SQLITE_BUSY when it
        // upgrades its read lock, and a busy BEGIN IMMEDIATE can simply be retried.
        "BEGIN IMMEDIATE"
    };
    tx.begin(sql.to_owned())
        .await
        .map_err(|e| db_error(Operation::Begin, e))?;
    if let Some(remaining) = options.remaining {
        // Interrupt any statement still running at the deadline (SQLITE_INTERRUPT), or
        // right away once the transaction is abandoned with a statement running. Taken off
        // the connection when the transaction ends, so that it never outlives it.
        let deadline = std::time::Instant::now() + remaining;
        let state = Arc::new(AtomicU8::new(WATCHDOG_ACTIVE));
        let watched = Arc::clone(&state);
        tx.set_watchdog(state, remove_watchdog);
        let mut handle = tx
            .raw_connection()
            .lock_handle()
            .await
            .map_err(|e| db_error(Operation::Begin, e))?;
        handle.set_progress_handler(PROGRESS_OPS, move || {
            match watched.load(Ordering::Relaxed) {
                WATCHDOG_ACTIVE => std::time::Instant::now() < deadline,
                WATCHDOG_OFF => true,
                _ => false,
            }
        });
    }
    Ok(tx)
}

/// Takes the deadline watchdog (progress handler) off a connection.
fn remove_watchdog(conn: &mut SqliteConnection) -> SqlxBoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        conn.lock_handle().await?.remove_progress_handler();
        Ok(())
    })
}

/// The transaction manager of a SQLite pool.
impl TransactionManager for TxPool<Sqlite> {
    fn key(&self) -> ManagerKey {
        self.manager_key()
    }

    fn begin(
        &self,
        options: BeginOptions,
    ) -> BoxFuture<'static, Result<Box<dyn PhysicalTransaction>, TxError>> {
        let db = self.clone();
        Box::pin(
            async move { Ok(Box::new(begin(db, options).await?) as Box<dyn PhysicalTransaction>) },
        )
    }

    fn backend_name(&self) -> &'static str {
        "sqlite"
    }
}
