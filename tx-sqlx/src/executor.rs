//! `&TxPool` as a sqlx executor: each call runs on the transaction bound to this pool in the
//! current task, or on the pool in autocommit when there is none.

use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::{Stream, TryStreamExt};
use sqlx::pool::PoolConnection;
use sqlx::{Database, Either, Execute, Executor, SqlStr};
use tx_core::TxError;
use tx_core::connection::{LockPurpose, TransactionGuard, bound_transaction};

use crate::backend::Backend;
use crate::error::{tx_to_sqlx, wrapped_tx_error};
use crate::physical::{SqlxTransaction, StatementEnd};
use crate::pool::TxPool;

/// The stream of `fetch_many`.
type RowStream<'e, DB> = BoxStream<
    'e,
    Result<Either<<DB as Database>::QueryResult, <DB as Database>::Row>, sqlx::Error>,
>;

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

/// Runs one future-returning statement, `$call` with the connection bound to `$conn`: on the
/// transaction bound to pool `$db` in the current task (locking it, then recording how the
/// statement ended with [`conclude`]); with `no_wait: true`, on a pooled connection that fails
/// instead of waiting when the backend says an autocommit statement must not wait
/// ([`Backend::must_not_wait`]); else `$pooled`, on the pool. A macro rather than a function
/// taking a closure: the statement future borrows both the connection and the query, which a
/// closure over every connection lifetime could not express.
macro_rules! statement {
    ($db:ident, |$conn:ident| $call:expr, pooled: $pooled:expr, no_wait: $no_wait:expr) => {{
        let key = $db.manager_key();
        match bound_transaction(key) {
            Some(bound) => Box::pin(async move {
                let mut guard = bound.lock().await.map_err(tx_to_sqlx)?;
                let tx = SqlxTransaction::<DB>::from_guard(&mut guard).map_err(tx_to_sqlx)?;
                let $conn = tx.start_statement()?;
                let result = $call.await;
                let end = tx.end_statement(&result);
                conclude(&mut guard, end, result)
            }),
            None if $no_wait && DB::must_not_wait(key) => Box::pin(async move {
                let mut conn = NoWaitConn::<DB>::enter($db.pool()).await?;
                let $conn = conn.conn();
                let result = $call.await;
                conn.exit(result).await
            }),
            None => $pooled,
        }
    }};
}

/// `execute` on a connection, as sqlx's default `Executor::execute` does it (the results of
/// `fetch_many` summed up), inside the caller's future: sqlx's own stacks three boxed futures.
async fn execute_on<'c, 'q, DB, E>(
    conn: &'c mut DB::Connection,
    query: E,
) -> Result<DB::QueryResult, sqlx::Error>
where
    DB: Database,
    &'c mut DB::Connection: Executor<'c, Database = DB>,
    E: 'q + Execute<'q, DB>,
    'q: 'c,
{
    let mut steps = conn.fetch_many(query);
    let mut done = DB::QueryResult::default();
    while let Some(step) = steps.try_next().await? {
        if let Either::Left(result) = step {
            done.extend(Some(result));
        }
    }
    Ok(done)
}

/// The next row of a `fetch_many` stream; `None` at its end or at its first error, which is
/// kept in `failed` (the stream reports it after ending the statement).
async fn next_row<S, T>(rows: &mut S, failed: &mut Option<sqlx::Error>) -> Option<T>
where
    S: Stream<Item = Result<T, sqlx::Error>> + Unpin,
{
    match rows.try_next().await {
        Ok(item) => item,
        Err(e) => {
            *failed = Some(e);
            None
        }
    }
}

fn fetch_many<'e, 'q: 'e, DB, E>(db: &'e TxPool<DB>, query: E) -> RowStream<'e, DB>
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
                while let Some(item) = next_row(&mut rows, &mut failed).await {
                    state.set_parked(true);
                    yield item;
                    state.set_parked(false);
                }
            }
            let result = failed.map_or(Ok(()), Err);
            let end = tx.end_statement(&result);
            conclude(&mut guard, end, result)?;
        }),
        None if DB::must_not_wait(key) => Box::pin(async_stream::try_stream! {
            let mut conn = NoWaitConn::<DB>::enter(db.pool()).await?;
            let mut failed = None;
            {
                let mut rows = conn.conn().fetch_many(query);
                while let Some(item) = next_row(&mut rows, &mut failed).await {
                    yield item;
                }
            }
            conn.exit(failed.map_or(Ok(()), Err)).await?;
        }),
        None => db.pool().fetch_many(query),
    }
}

/// Runs each query on the transaction bound to this pool in the current task (sending its
/// deferred `BEGIN` first), or on a pooled connection in autocommit when there is none, exactly
/// like `&Pool`.
impl<'c, DB> Executor<'c> for &'c TxPool<DB>
where
    DB: Backend,
    for<'x> &'x mut DB::Connection: Executor<'x, Database = DB>,
{
    type Database = DB;

    fn execute<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<DB::QueryResult, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        let db = self;
        statement!(db, |conn| execute_on(conn, query), pooled: db.pool().execute(query), no_wait: true)
    }

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> RowStream<'e, DB>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        fetch_many(self, query)
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<DB::Row>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        let db = self;
        statement!(db, |conn| conn.fetch_optional(query), pooled: db.pool().fetch_optional(query), no_wait: true)
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [DB::TypeInfo],
    ) -> BoxFuture<'e, Result<DB::Statement, sqlx::Error>>
    where
        'c: 'e,
    {
        let db = self;
        statement!(db, |conn| conn.prepare_with(sql, parameters), pooled: db.pool().prepare_with(sql, parameters), no_wait: false)
    }

    #[doc(hidden)]
    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<sqlx::Describe<DB>, sqlx::Error>>
    where
        'c: 'e,
    {
        let db = self;
        statement!(db, |conn| conn.describe(sql), pooled: db.pool().describe(sql), no_wait: false)
    }
}
