//! `&TxPool` as a sqlx executor: each call runs on the transaction bound to this pool in the
//! current task, or on the pool in autocommit when there is none.

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::{Database, Either, Execute, Executor, SqlStr};
use tx_core::connection::bound_transaction;
use tx_core::manager::ManagerKey;

use std::time::Duration;

use tx_core::TxError;
use tx_core::connection::{LockPurpose, TransactionGuard};

use crate::error::{tx_to_sqlx, wrapped_tx_error};
use crate::physical::{SqlxTransaction, StatementEnd};
use crate::pool::TxPool;

/// The stream of `fetch_many`.
type RowStream<'e, DB> = BoxStream<
    'e,
    Result<Either<<DB as Database>::QueryResult, <DB as Database>::Row>, sqlx::Error>,
>;

/// What the generic executor needs from a backend.
pub(crate) trait Backend: Database {
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

/// Runs one SQL text on a connection (the `ExecRaw` of physical transactions).
pub(crate) fn exec_raw<DB>(
    conn: &mut DB::Connection,
    sql: SqlStr,
) -> BoxFuture<'_, Result<(), sqlx::Error>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    Box::pin(async move { sqlx::raw_sql(sql).execute(conn).await.map(|_| ()) })
}

/// How early a server-side statement bound may fire and still count as the deadline.
const DEADLINE_SLACK: Duration = Duration::from_millis(100);

/// After a statement in a transaction: records a retryable failure, and reports a failure past
/// the deadline (a statement cancelled by the server-side bound, or interrupted) as
/// [`TxError::Timeout`], which is what ended it.
fn conclude<T>(
    guard: &mut TransactionGuard,
    end: StatementEnd,
    result: Result<T, sqlx::Error>,
) -> Result<T, sqlx::Error> {
    let Err(e) = result else {
        return result;
    };
    if end.retryable {
        let code = e.as_database_error().and_then(|db| db.code());
        guard.note_retryable_error(code.as_deref());
    }
    let remaining = guard.remaining();
    // The server's timer may fire a hair before ours.
    let killed_by_bound = end.deadline_kill && remaining.is_some_and(|r| r <= DEADLINE_SLACK);
    if (remaining == Some(Duration::ZERO) || killed_by_bound) && wrapped_tx_error(&e).is_none() {
        tracing::debug!(target: "tx", error = %e, "statement failed past the transaction's deadline");
        return Err(tx_to_sqlx(TxError::Timeout));
    }
    Err(e)
}

/// A pooled connection put in no-wait mode; closed rather than returned if it could not be
/// restored (e.g. the statement future was dropped).
struct NoWaitConn<DB: Database> {
    conn: Option<PoolConnection<DB>>,
    saved: i64,
}

impl<DB: Backend> NoWaitConn<DB> {
    async fn enter(pool: &sqlx::Pool<DB>) -> Result<Self, sqlx::Error> {
        let conn = pool.acquire().await?;
        let mut this = NoWaitConn {
            conn: Some(conn),
            saved: 0,
        };
        this.saved = DB::enter_no_wait(this.conn()).await?;
        Ok(this)
    }

    fn conn(&mut self) -> &mut DB::Connection {
        self.conn.as_mut().expect("present until exit")
    }

    async fn exit<T>(mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        let saved = self.saved;
        if DB::exit_no_wait(self.conn(), saved).await.is_ok() {
            // Restored: back to the pool.
            drop(self.conn.take());
        }
        result.map_err(DB::map_no_wait_error)
    }
}

impl<DB: Database> Drop for NoWaitConn<DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            conn.close_on_drop();
        }
    }
}

pub(crate) fn execute<'e, 'q: 'e, DB, E>(
    db: &'e TxPool<DB>,
    query: E,
) -> BoxFuture<'e, Result<DB::QueryResult, sqlx::Error>>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    E: 'q + Execute<'q, DB>,
{
    let key = db.manager_key();
    match bound_transaction(key) {
        Some(bound) => Box::pin(async move {
            let mut guard = bound.lock().await.map_err(tx_to_sqlx)?;
            let tx = SqlxTransaction::<DB>::from_guard(&mut guard).map_err(tx_to_sqlx)?;
            let result = tx.start_statement()?.execute(query).await;
            let end = tx.end_statement(&result);
            conclude(&mut guard, end, result)
        }),
        None if DB::must_not_wait(key) => Box::pin(async move {
            let mut conn = NoWaitConn::<DB>::enter(db.pool()).await?;
            let result = conn.conn().execute(query).await;
            conn.exit(result).await
        }),
        None => db.pool().execute(query),
    }
}

pub(crate) fn fetch_optional<'e, 'q: 'e, DB, E>(
    db: &'e TxPool<DB>,
    query: E,
) -> BoxFuture<'e, Result<Option<DB::Row>, sqlx::Error>>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    E: 'q + Execute<'q, DB>,
{
    let key = db.manager_key();
    match bound_transaction(key) {
        Some(bound) => Box::pin(async move {
            let mut guard = bound.lock().await.map_err(tx_to_sqlx)?;
            let tx = SqlxTransaction::<DB>::from_guard(&mut guard).map_err(tx_to_sqlx)?;
            let result = tx.start_statement()?.fetch_optional(query).await;
            let end = tx.end_statement(&result);
            conclude(&mut guard, end, result)
        }),
        None if DB::must_not_wait(key) => Box::pin(async move {
            let mut conn = NoWaitConn::<DB>::enter(db.pool()).await?;
            let result = conn.conn().fetch_optional(query).await;
            conn.exit(result).await
        }),
        None => db.pool().fetch_optional(query),
    }
}

pub(crate) fn fetch_many<'e, 'q: 'e, DB, E>(db: &'e TxPool<DB>, query: E) -> RowStream<'e, DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    E: 'q + Execute<'q, DB>,
{
    let key = db.manager_key();
    match bound_transaction(key) {
        // The guard (the transaction's connection) is held until the stream ends or is dropped.
        Some(bound) => Box::pin(async_stream::try_stream! {
            let mut guard = bound.lock_for(LockPurpose::Stream).await.map_err(tx_to_sqlx)?;
            // Between two rows the consumer's code runs while this stream holds the
            // connection: a request of the same task then fails at once instead of waiting.
            let state = guard.stream_state();
            let tx = SqlxTransaction::<DB>::from_guard(&mut guard).map_err(tx_to_sqlx)?;
            let mut failed = None;
            {
                let mut rows = tx.start_statement()?.fetch_many(query);
                loop {
                    match rows.try_next().await {
                        Ok(Some(item)) => {
                            state.set_parked(true);
                            yield item;
                            state.set_parked(false);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
            }
            let result = match failed {
                Some(e) => Err(e),
                None => Ok(()),
            };
            let end = tx.end_statement(&result);
            conclude(&mut guard, end, result)?;
        }),
        None if DB::must_not_wait(key) => Box::pin(async_stream::try_stream! {
            let mut conn = NoWaitConn::<DB>::enter(db.pool()).await?;
            let mut failed = None;
            {
                let mut rows = conn.conn().fetch_many(query);
                loop {
                    match rows.try_next().await {
                        Ok(Some(item)) => yield item,
                        Ok(None) => break,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
            }
            let result = match failed {
                Some(e) => Err(e),
                None => Ok(()),
            };
            conn.exit(result).await?;
        }),
        None => db.pool().fetch_many(query),
    }
}

pub(crate) fn prepare_with<'e, DB>(
    db: &'e TxPool<DB>,
    sql: SqlStr,
    parameters: &'e [DB::TypeInfo],
) -> BoxFuture<'e, Result<DB::Statement, sqlx::Error>>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    match bound_transaction(db.manager_key()) {
        Some(bound) => Box::pin(async move {
            let mut guard = bound.lock().await.map_err(tx_to_sqlx)?;
            let tx = SqlxTransaction::<DB>::from_guard(&mut guard).map_err(tx_to_sqlx)?;
            let result = tx.start_statement()?.prepare_with(sql, parameters).await;
            let end = tx.end_statement(&result);
            conclude(&mut guard, end, result)
        }),
        None => db.pool().prepare_with(sql, parameters),
    }
}

pub(crate) fn describe<'e, DB>(
    db: &'e TxPool<DB>,
    sql: SqlStr,
) -> BoxFuture<'e, Result<sqlx::Describe<DB>, sqlx::Error>>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    match bound_transaction(db.manager_key()) {
        Some(bound) => Box::pin(async move {
            let mut guard = bound.lock().await.map_err(tx_to_sqlx)?;
            let tx = SqlxTransaction::<DB>::from_guard(&mut guard).map_err(tx_to_sqlx)?;
            let result = tx.start_statement()?.describe(sql).await;
            let end = tx.end_statement(&result);
            conclude(&mut guard, end, result)
        }),
        None => db.pool().describe(sql),
    }
}

/// `impl Executor for &TxPool<$db>` delegating to the generic functions above.
macro_rules! impl_executor {
    ($db:ty) => {
        /// Runs each query on the transaction bound to this pool in the current task (sending
        /// its deferred `BEGIN` first), or on a pooled connection in autocommit when there is
        /// none, exactly like `&Pool`.
        impl<'c> sqlx::Executor<'c> for &'c $crate::TxPool<$db> {
            type Database = $db;

            fn execute<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> futures_core::future::BoxFuture<
                'e,
                Result<<$db as sqlx::Database>::QueryResult, sqlx::Error>,
            >
            where
                'c: 'e,
                E: 'q + sqlx::Execute<'q, $db>,
            {
                $crate::executor::execute(self, query)
            }

            fn fetch_many<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> futures_core::stream::BoxStream<
                'e,
                Result<
                    sqlx::Either<
                        <$db as sqlx::Database>::QueryResult,
                        <$db as sqlx::Database>::Row,
                    >,
                    sqlx::Error,
                >,
            >
            where
                'c: 'e,
                E: 'q + sqlx::Execute<'q, $db>,
            {
                $crate::executor::fetch_many(self, query)
            }

            fn fetch_optional<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> futures_core::future::BoxFuture<
                'e,
                Result<Option<<$db as sqlx::Database>::Row>, sqlx::Error>,
            >
            where
                'c: 'e,
                E: 'q + sqlx::Execute<'q, $db>,
            {
                $crate::executor::fetch_optional(self, query)
            }

            fn prepare_with<'e>(
                self,
                sql: sqlx::SqlStr,
                parameters: &'e [<$db as sqlx::Database>::TypeInfo],
            ) -> futures_core::future::BoxFuture<
                'e,
                Result<<$db as sqlx::Database>::Statement, sqlx::Error>,
            >
            where
                'c: 'e,
            {
                $crate::executor::prepare_with(self, sql, parameters)
            }

            #[doc(hidden)]
            fn describe<'e>(
                self,
                sql: sqlx::SqlStr,
            ) -> futures_core::future::BoxFuture<'e, Result<sqlx::Describe<$db>, sqlx::Error>>
            where
                'c: 'e,
            {
                $crate::executor::describe(self, sql)
            }
        }
    };
}

pub(crate) use impl_executor;
