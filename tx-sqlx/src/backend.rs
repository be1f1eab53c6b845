//! What the databases do differently, as one trait: [`Backend`], implemented once per driver
//! (postgres.rs, mysql.rs, sqlite.rs). Everything else (the physical transaction, the pool, the
//! executor, the transaction manager) is written once, generic over it, and dispatched
//! statically. The trait sees only the driver's connection, never the types built on it.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_util::TryFutureExt;
use sqlx::{Database, Executor, SqlStr};
use tx_core::TxError;
use tx_core::manager::{BeginOptions, ManagerKey};

/// Watchdog state: interrupt statements once past the deadline.
pub(crate) const WATCHDOG_ACTIVE: u8 = 0;
/// Watchdog state: the transaction ended; never interrupt.
pub(crate) const WATCHDOG_OFF: u8 = 1;
/// Watchdog state: the transaction was abandoned with a statement running; interrupt it now.
pub(crate) const WATCHDOG_INTERRUPT: u8 = 2;

/// What a backend learns about its server once per pool, the first time it needs it.
#[derive(Debug, Default)]
pub struct ServerFacts {
    /// MySQL only: whether the server is MariaDB (`max_statement_time`) rather than MySQL
    /// (`max_execution_time`).
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(crate) mariadb: OnceLock<bool>,
}

/// How a backend begins one transaction.
#[derive(Debug)]
pub struct BeginStatement {
    /// The statement(s) sent as the transaction's `BEGIN`: borrowed when fixed (the common
    /// case), so that beginning allocates no text for it.
    pub(crate) sql: Cow<'static, str>,
    /// SQL restoring a session setting the begin changed, run after `COMMIT`/`ROLLBACK`.
    pub(crate) reset: Option<&'static str>,
}

/// One database as tx-sqlx drives it. Public only so that it can bound public generic items;
/// it lives in a private module, so no other crate can name or implement it.
pub trait Backend: ExecRaw {
    /// The database's name in messages ("PostgreSQL").
    const DISPLAY_NAME: &'static str;

    /// What [`TransactionManager::backend_name`] reports ("postgres").
    const BACKEND_NAME: &'static str;

    /// Whether to refuse further statements once the server aborted the transaction, because
    /// it would run them in autocommit (MySQL after a deadlock, SQLite after an automatic
    /// rollback) instead of rejecting them (PostgreSQL rejects them itself until
    /// `ROLLBACK TO SAVEPOINT`).
    const REFUSE_AFTER_ABORT: bool;

    /// Whether a failed `BEGIN` statement may leave session state behind (multi-statement
    /// begins), so the connection must be closed rather than reused. Closing is the safe
    /// answer; a backend whose begin is always one statement says `false`.
    const CLOSE_ON_FAILED_BEGIN: bool = true;

    /// Whether a statement failing with this error leaves the whole transaction aborted on
    /// the server (PostgreSQL: any error; MySQL: a deadlock; SQLite: busy, I/O, full, ...).
    fn aborts(err: &sqlx::Error) -> bool;

    /// Whether this error is the server-side statement bound set from the deadline firing
    /// (statement timeout, interrupt), so that it is reported as the deadline.
    fn deadline_kill(err: &sqlx::Error) -> bool;

    /// Refuses a begin before a connection is taken (SQLite: a writer whose task holds the
    /// write lock in a suspended transaction would wait for itself).
    fn check_begin(_options: &BeginOptions) -> Result<(), TxError> {
        Ok(())
    }

    /// How to begin the transaction `options` describe on `conn` (nothing sent on it yet; it
    /// may be asked first, and what it learns about the server kept in `facts`).
    fn begin_statement<'a>(
        conn: &'a mut Self::Connection,
        facts: &'a ServerFacts,
        options: &'a BeginOptions,
    ) -> impl Future<Output = Result<BeginStatement, TxError>> + Send + 'a;

    /// Whether savepoint statements with a fixed text go out prepared, kept in the
    /// connection's statement cache (SQLite would otherwise compile each one anew), rather
    /// than as simple queries.
    const PREPARE_SAVEPOINTS: bool = false;

    /// Whether the backend interrupts statements at the deadline itself
    /// ([`install_watchdog`](Self::install_watchdog)), the server having no statement bound of
    /// its own.
    const WATCHDOG: bool = false;

    /// After `BEGIN`, with a deadline `remaining` away: installs what interrupts a statement
    /// still running at the deadline (SQLite's progress handler), reading `state` (see
    /// [`WATCHDOG_ACTIVE`]).
    fn install_watchdog(
        _conn: &mut Self::Connection,
        _state: Arc<AtomicU8>,
        _remaining: Duration,
    ) -> impl Future<Output = Result<(), TxError>> + Send {
        async { Ok(()) }
    }

    /// Takes the watchdog [`install_watchdog`](Self::install_watchdog) installed off the
    /// connection, once the transaction has ended.
    fn remove_watchdog(_conn: &mut Self::Connection) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(async { Ok(()) })
    }

    /// True when an autocommit statement must not wait for a lock held by a transaction this
    /// task suspended (SQLite's single writer inside a NotSupported scope).
    fn must_not_wait(_key: ManagerKey) -> bool {
        false
    }

    /// Makes `conn` fail instead of waiting for locks; returns what to restore.
    fn enter_no_wait(_conn: &mut Self::Connection) -> BoxFuture<'_, Result<i64, sqlx::Error>> {
        Box::pin(async { Ok(0) })
    }

    /// Restores what [`enter_no_wait`](Self::enter_no_wait) changed.
    fn exit_no_wait(
        _conn: &mut Self::Connection,
        _saved: i64,
    ) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(async { Ok(()) })
    }

    /// Turns a lock-wait failure of a no-wait statement into the explanatory error.
    fn map_no_wait_error(err: sqlx::Error) -> sqlx::Error {
        err
    }
}

/// A database whose connection is a sqlx executor, running one SQL text that returns no rows
/// on it: savepoints and session resets. Implemented for every such database, so that code
/// generic over a [`Backend`] needs no bound on its connection.
pub trait ExecRaw: Database {
    /// Runs `sql` on `conn` with the simple protocol (not prepared).
    fn exec_raw(
        conn: &mut Self::Connection,
        sql: SqlStr,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_;

    /// Runs `sql` on `conn` as a prepared statement, kept in the connection's statement cache
    /// (only for the few fixed texts sent over and over).
    fn exec_prepared<'c>(
        conn: &'c mut Self::Connection,
        sql: &'static str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c;
}

impl<DB> ExecRaw for DB
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    // `fetch_optional` is one boxed future in every driver, where `execute` stacks three
    // (`execute`, `execute_many`, `fetch_many`); with no rows they do the same.
    fn exec_raw(
        conn: &mut DB::Connection,
        sql: SqlStr,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_ {
        conn.fetch_optional(sqlx::raw_sql(sql)).map_ok(|_| ())
    }

    fn exec_prepared<'c>(
        conn: &'c mut DB::Connection,
        sql: &'static str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
        // Arguments, even none, make the driver prepare and cache the statement.
        conn.fetch_optional((sql, Some(DB::Arguments::default())))
            .map_ok(|_| ())
    }
}
