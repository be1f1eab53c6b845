//! What a transaction leaves on its pool's connections, on every backend: the session settings
//! the pool gave them (restored, not reset to a default), no deadline watchdog after the
//! transaction whatever was dropped inside it, the pool's own liveness checks and hooks run
//! for every BEGIN, and one manager per sqlx pool however many `TxPool`s wrap it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::pool::PoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Connection, Database};
use tx_sqlx::TransactionManager;
use tx_sqlx::prelude::*;
use tx_sqlx::{MySqlTxPool, Operation, PgTxPool, SqliteTxPool};
use tx_tests::reliability::{MySqlBackend, PgBackend};

use crate::reliability::ServerUnderTest;
use crate::sqlite;

/// A statement of far more than 1000 SQLite VM steps (200 000 recursion rounds).
const HEAVY: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000) \
                     SELECT count(*) FROM c";

/// The SQLite result code behind `e`, if any.
fn sqlite_code(e: &sqlx::Error) -> Option<u32> {
    e.as_database_error()?.code()?.parse().ok()
}

/// An error that rolls a transaction back.
fn rollback_please() -> TxError {
    TxError::database(Operation::Statement, false, "the body failed on purpose")
}

fn sqlite_options(dir: &tempfile::TempDir) -> SqliteConnectOptions {
    tx_tests::sqlite_options(&dir.path().join("test.db"))
}

/// Runs [`HEAVY`] on `db` in autocommit and in a transaction without a timeout: both must
/// complete (no watchdog left on the connection).
async fn heavy_statements_run(db: &SqliteTxPool) {
    let n: i64 = sqlx::query_scalar(HEAVY)
        .fetch_one(db)
        .await
        .expect("a long autocommit statement after the transaction");
    assert_eq!(n, 200_000);
    let n: i64 = TransactionTemplate::new(db.clone())
        .execute(|_| {
            let db = db.clone();
            async move { Ok::<i64, TxError>(sqlx::query_scalar(HEAVY).fetch_one(&db).await?) }
        })
        .await
        .expect("a long statement in a later transaction without a timeout");
    assert_eq!(n, 200_000);
}

/// On a pool of one connection (so everything runs on the connection of the timed
/// transaction), a transaction with a 30 s deadline inserts 1, then leaves `abandon` (a
/// statement's work) unfinished and commits: its row is there, and no watchdog outlives it.
async fn watchdog_ends_with_its_transaction<F, Fut>(abandon: F)
where
    F: FnOnce(SqliteTxPool) -> Fut + Send,
    Fut: Future<Output = Result<(), TxError>> + Send,
{
    let (db, _dir, table) = sqlite::setup(1).await;
    TransactionTemplate::new(db.clone())
        .timeout(Duration::from_secs(30))
        .execute(|_| {
            let (db, table) = (db.clone(), table.clone());
            async move {
                sqlite::insert(&db, &table, 1).await?;
                abandon(db).await
            }
        })
        .await
        .unwrap();
    assert_eq!(sqlite::ids(&db, &table).await, vec![1]);
    heavy_statements_run(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_watchdog_ends_with_its_transaction_after_a_dropped_stream() {
    watchdog_ends_with_its_transaction(|db| async move {
        let mut rows = sqlx::query_scalar::<_, i64>(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
             WHERE x < 100000) SELECT x FROM c",
        )
        .fetch(&db);
        assert_eq!(rows.try_next().await?, Some(1));
        // Only the first row is wanted.
        drop(rows);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_watchdog_ends_with_its_transaction_after_an_abandoned_statement() {
    watchdog_ends_with_its_transaction(|db| async move {
        // Seconds of work: given up after a moment.
        let long = sqlx::query_scalar::<_, i64>(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
             WHERE x < 100000000) SELECT count(*) FROM c",
        )
        .fetch_one(&db);
        let given_up = tokio::time::timeout(Duration::from_millis(20), long).await;
        assert!(given_up.is_err(), "{given_up:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pool_query_only_survives_a_read_only_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let table = tx_tests::unique_table("qo");
    {
        let mut setup = sqlx::SqliteConnection::connect_with(&sqlite_options(&dir))
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {table} (id INTEGER PRIMARY KEY); INSERT INTO {table} VALUES (1)"
        )))
        .execute(&mut setup)
        .await
        .unwrap();
    }
    // A read-only pool of one connection.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(sqlite_options(&dir).pragma("query_only", "ON"))
        .await
        .unwrap();
    let db = SqliteTxPool::new(pool);
    let n: i64 = TransactionTemplate::new(db.clone())
        .read_only(true)
        .execute(|_| {
            let (db, table) = (db.clone(), table.clone());
            async move {
                Ok::<i64, TxError>(
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                        "SELECT count(*) FROM {table}"
                    )))
                    .fetch_one(&db)
                    .await?,
                )
            }
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    let query_only: i64 = sqlx::query_scalar("PRAGMA query_only")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(query_only, 1, "the pool's query_only must be restored");
    let write = sqlite::insert(&db, &table, 2).await;
    let err = write.expect_err("the read-only pool must stay read-only");
    assert_eq!(sqlite_code(&err).map(|c| c & 0xff), Some(8), "{err}"); // SQLITE_READONLY
    // A writer transaction on it fails too (query_only stays on).
    let r = TransactionTemplate::new(db.clone())
        .execute(|_| {
            let (db, table) = (db.clone(), table.clone());
            async move {
                sqlite::insert(&db, &table, 3).await?;
                Ok::<_, TxError>(())
            }
        })
        .await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(sqlite::ids(&db, &table).await, vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_session_max_statement_time_is_restored() {
    let Ok(pool) = MySqlPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::raw_sql("SET SESSION max_statement_time = 7")
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .connect(&tx_tests::mysql_url())
        .await
    else {
        // Skips loudly, or fails under TX_TEST_REQUIRE_SERVERS=1.
        let _ = tx_tests::mysql_pool(1).await;
        return;
    };
    let db = MySqlTxPool::new(pool);
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(
        version.contains("MariaDB"),
        "this test needs MariaDB ({version})"
    );
    let bound = "SELECT CAST(@@SESSION.max_statement_time * 1000 AS SIGNED)";
    for (timeout, inside_at_most) in [
        (Duration::from_secs(20), 7000),
        (Duration::from_secs(2), 2000),
    ] {
        let inside: i64 = TransactionTemplate::new(db.clone())
            .timeout(timeout)
            .execute(|_| {
                let db = db.clone();
                async move {
                    Ok::<i64, TxError>(
                        sqlx::query_scalar(sqlx::AssertSqlSafe(bound))
                            .fetch_one(&db)
                            .await?,
                    )
                }
            })
            .await
            .unwrap();
        // The tighter of the session's bound and the time left.
        assert!(
            inside > inside_at_most - 1000 && inside <= inside_at_most,
            "bound inside a {timeout:?} transaction: {inside} ms"
        );
        let after: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(bound))
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(after, 7000, "the session's own bound must be restored");
    }
}

/// A counter of `before_acquire` calls.
fn counting() -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    (calls.clone(), calls)
}

/// Options of a pool of 2 (1 kept open) whose `before_acquire` counts its calls in `hook`.
fn counted_options<DB: Database>(hook: Arc<AtomicUsize>) -> PoolOptions<DB> {
    PoolOptions::<DB>::new()
        .max_connections(2)
        .min_connections(1)
        .before_acquire(move |_, _| {
            let hook = hook.clone();
            Box::pin(async move {
                hook.fetch_add(1, Ordering::SeqCst);
                Ok(true)
            })
        })
}

/// Runs a transaction with one statement on `db` and returns how many more times the pool's
/// `before_acquire` ran.
async fn before_acquire_calls_of_a_transaction<DB>(
    db: &TxPool<DB>,
    calls: &AtomicUsize,
    statement: &'static str,
) -> usize
where
    DB: Database,
    TxPool<DB>: TransactionManager,
    for<'c> &'c TxPool<DB>: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments: sqlx::IntoArguments<DB>,
{
    let before = calls.load(Ordering::SeqCst);
    TransactionTemplate::new(db.clone())
        .execute(|_| {
            let db = db.clone();
            async move {
                sqlx::query(statement).execute(&db).await?;
                Ok::<_, TxError>(())
            }
        })
        .await
        .unwrap();
    calls.load(Ordering::SeqCst) - before
}

/// Opens a pool with `connect` from options whose `before_acquire` counts its calls, and
/// asserts that a transaction runs that hook exactly once (`name` says on which database);
/// when the pool cannot be opened, `missing` gets the error.
async fn assert_begin_runs_before_acquire_once<DB, C, M, MF>(name: &str, connect: C, missing: M)
where
    DB: Database,
    TxPool<DB>: TransactionManager,
    for<'c> &'c TxPool<DB>: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments: sqlx::IntoArguments<DB>,
    C: AsyncFnOnce(PoolOptions<DB>) -> Result<sqlx::Pool<DB>, sqlx::Error>,
    M: FnOnce(sqlx::Error) -> MF,
    MF: Future,
{
    let (calls, hook) = counting();
    match connect(counted_options::<DB>(hook)).await {
        Ok(pool) => assert_eq!(
            before_acquire_calls_of_a_transaction(&TxPool::new(pool), &calls, "SELECT 1").await,
            1,
            "{name}"
        ),
        Err(e) => {
            missing(e).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_runs_the_pools_before_acquire_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    assert_begin_runs_before_acquire_once::<sqlx::Sqlite, _, _, _>(
        "SQLite",
        async |o: PoolOptions<sqlx::Sqlite>| o.connect_with(sqlite_options(&dir)).await,
        |e| async move { panic!("open SQLite: {e}") },
    )
    .await;
    assert_begin_runs_before_acquire_once::<sqlx::Postgres, _, _, _>(
        "PostgreSQL",
        async |o: PoolOptions<sqlx::Postgres>| o.connect(&tx_tests::pg_url()).await,
        |_| async { drop(tx_tests::pg_pool(1).await) },
    )
    .await;
    assert_begin_runs_before_acquire_once::<sqlx::MySql, _, _, _>(
        "MariaDB",
        async |o: PoolOptions<sqlx::MySql>| o.connect(&tx_tests::mysql_url()).await,
        |_| async { drop(tx_tests::mysql_pool(1).await) },
    )
    .await;
}

/// The server ends the pool's only connection while it is idle in the pool
/// (`pg_terminate_backend`, `KILL CONNECTION`): the next transaction gets a new session
/// (the pool's liveness check replaces the dead one) and commits.
async fn transaction_survives_a_killed_idle_connection<B: ServerUnderTest>() {
    let Some(b) = B::connect(1, Duration::from_secs(10), "killed_idle").await else {
        return;
    };
    let table = b.create_table("kill").await;
    // The pool's only connection, now idle.
    let id = b.session_id().await.unwrap();
    b.kill(id).await;
    let started = Instant::now();
    while b.session_alive(id).await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "session {id} still there"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new_id = b
        .template()
        .execute(|_| async {
            b.insert(&table, "1").await?;
            Ok::<i64, TxError>(b.session_id().await?)
        })
        .await
        .expect("the pool's liveness check must replace the killed connection");
    assert_ne!(new_id, id);
    assert_eq!(b.tags(&table).await, vec!["1".to_owned()]);
    b.drop_table(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_transaction_survives_a_terminated_idle_connection() {
    transaction_survives_a_killed_idle_connection::<PgBackend>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_transaction_survives_a_killed_idle_connection() {
    transaction_survives_a_killed_idle_connection::<MySqlBackend>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_txpools_on_one_pool_are_one_manager() {
    let (first, _dir, table) = sqlite::setup(2).await;
    let second = SqliteTxPool::new(first.pool().clone());
    let r = TransactionTemplate::new(first.clone())
        .execute(|_| {
            let (first, second, table) = (first.clone(), second.clone(), table.clone());
            async move {
                sqlite::insert(&first, &table, 1).await?;
                // Runs in the transaction of `first`, not in autocommit beside it.
                sqlite::insert(&second, &table, 2).await?;
                Err::<(), _>(rollback_please())
            }
        })
        .await;
    assert!(r.is_err());
    assert!(sqlite::ids(&first, &table).await.is_empty());
    assert_eq!(first.key(), second.key());

    // A reservation made through one handle is the pool's.
    let reserved = SqliteTxPool::new(first.pool().clone()).reserve_for_nested(1);
    assert_eq!(second.reserved_for_nested(), 1);
    let _ = reserved.reserve_for_nested(0);
    assert_eq!(first.reserved_for_nested(), 0);
    // Another pool is another manager.
    let (other, _other_dir) = tx_tests::sqlite_pool(1).await;
    assert_ne!(other.key(), first.key());
}

/// Two `TxPool`s on one sqlx pool of a server database (`$db`: its module, `$pool`: its
/// `TxPool` type) are one manager: inserts through either run in one transaction, a Required
/// scope on the second joins it, and the rollback undoes them all.
macro_rules! two_txpools_on_one_pool_are_one_manager {
    ($name:ident, $db:ident, $pool:ty) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some((first, table)) = crate::$db::setup(2, "same").await else {
                return;
            };
            let second = <$pool>::new(first.pool().clone());
            let r = TransactionTemplate::new(first.clone())
                .execute(|_| {
                    let (first, second, table) = (first.clone(), second.clone(), table.clone());
                    async move {
                        crate::$db::insert(&first, &table, 1).await?;
                        crate::$db::insert(&second, &table, 2).await?;
                        // A Required scope on the second handle joins the transaction of the first.
                        TransactionTemplate::new(second.clone())
                            .execute(|status| {
                                let (second, table) = (second.clone(), table.clone());
                                async move {
                                    assert!(!status.is_new_transaction());
                                    crate::$db::insert(&second, &table, 3).await?;
                                    Ok::<_, TxError>(())
                                }
                            })
                            .await?;
                        Err::<(), _>(rollback_please())
                    }
                })
                .await;
            assert!(r.is_err());
            assert!(
                crate::$db::ids(&first, &table).await.is_empty(),
                "every insert ran in the rolled-back transaction"
            );
            assert_eq!(first.key(), second.key());
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
                .execute(first.pool())
                .await
                .unwrap();
        }
    };
}

two_txpools_on_one_pool_are_one_manager!(
    pg_two_txpools_on_one_pool_are_one_manager,
    postgres,
    PgTxPool
);
two_txpools_on_one_pool_are_one_manager!(
    mysql_two_txpools_on_one_pool_are_one_manager,
    mysql,
    MySqlTxPool
);
