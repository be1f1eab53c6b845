//! tx-sqlx on SQLite (file database, WAL): the backend contract, and what only SQLite shows:
//! read-only as `PRAGMA query_only` (and its reset), the write lock taken at BEGIN by writers
//! only, the deadline interrupting a running statement, and the single writer failing fast
//! with an explanatory error.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};
use tx_sqlx::SqliteTxPool;
use tx_sqlx::prelude::*;

use crate::contract::{
    BoxFut, ContractDb, assert_deadline_cuts, assert_pool_settled, backend_contract, create_table,
    database_error, same_on_every_database, table_functions,
};

backend_contract!(SqliteDb);
table_functions!(SqliteTxPool, "?");

/// The SQLite result code behind `e`, if any.
fn sqlite_code(e: &TxError) -> Option<u32> {
    database_error(e).and_then(|db| db.code().and_then(|c| c.parse().ok()))
}

/// A SQLite pool on a fresh file database and its test table.
#[derive(Clone)]
pub struct SqliteDb {
    db: SqliteTxPool,
    dir: Arc<tempfile::TempDir>,
    table: String,
}

/// A pool of `max` connections on a fresh file database, the database's directory (keep it
/// alive) and a fresh `(id INTEGER PRIMARY KEY, note TEXT)` table.
pub(crate) async fn setup(max: u32) -> (SqliteTxPool, tempfile::TempDir, String) {
    let (db, dir) = tx_tests::sqlite_pool(max).await;
    let create = "CREATE TABLE {table} (id INTEGER PRIMARY KEY, note TEXT)";
    let table = create_table(db.pool(), "sq", create).await;
    (db, dir, table)
}

/// A connection outside the pool, with the given busy timeout.
async fn outsider(dir: &Path, busy: Duration) -> SqliteConnection {
    SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(dir.join("test.db"))
            .busy_timeout(busy),
    )
    .await
    .unwrap()
}

/// Whether another connection can take the write lock right now (or within `busy`).
async fn write_lock_free(dir: &Path, busy: Duration) -> bool {
    let mut conn = outsider(dir, busy).await;
    match sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut conn).await {
        Ok(_) => {
            sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.unwrap();
            true
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("5") => false,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

impl ContractDb for SqliteDb {
    same_on_every_database!(SqliteTxPool, sqlx::Sqlite);

    fn setup(max: u32, _prefix: &'static str) -> BoxFut<'static, Option<Self>> {
        async move {
            let (db, dir, table) = setup(max).await;
            Some(SqliteDb {
                db,
                dir: Arc::new(dir),
                table,
            })
        }
        .boxed()
    }

    fn session(&self) -> BoxFut<'_, Result<i64, sqlx::Error>> {
        // An embedded database: no server session to ask about.
        async { Ok(0) }.boxed()
    }

    fn slow_statement(&self) -> Option<BoxFut<'_, Result<(), sqlx::Error>>> {
        None
    }

    fn transaction_left(&self, _: i64, lock_wait: Duration) -> BoxFut<'_, Option<String>> {
        async move {
            let free = write_lock_free(self.dir.path(), lock_wait).await;
            (!free).then(|| "a transaction still holds the write lock".to_owned())
        }
        .boxed()
    }

    fn is_duplicate_key(e: &TxError) -> bool {
        // SQLITE_CONSTRAINT_PRIMARYKEY
        sqlite_code(e) == Some(1555)
    }

    fn is_read_only_violation(e: &TxError) -> bool {
        // SQLITE_READONLY, whatever its extended code
        sqlite_code(e).map(|c| c & 0xff) == Some(8)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_is_enforced_and_restored() {
    // One connection: the statements after the transaction run on the same one.
    let (db, _dir, table) = setup(1).await;
    let r = TransactionTemplate::new(db.clone())
        .read_only(true)
        .isolation(Isolation::ReadCommitted)
        .execute(|_| async {
            let query_only: i64 = sqlx::query_scalar("PRAGMA query_only")
                .fetch_one(&db)
                .await?;
            assert_eq!(query_only, 1);
            insert(&db, &table, 1).await?;
            Ok::<_, TxError>(())
        })
        .await;
    let e = r.unwrap_err();
    assert_eq!(
        sqlite_code(&e).map(|c| c & 0xff),
        Some(8),
        "SQLITE_READONLY expected: {e}"
    );
    assert!(ids(&db, &table).await.is_empty());
    // The connection is writable again, in autocommit and in a writer transaction.
    let query_only: i64 = sqlx::query_scalar("PRAGMA query_only")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(query_only, 0);
    insert(&db, &table, 2).await.unwrap();
    TransactionTemplate::new(db.clone())
        .execute(|_| async {
            let query_only: i64 = sqlx::query_scalar("PRAGMA query_only")
                .fetch_one(&db)
                .await?;
            assert_eq!(query_only, 0);
            Ok::<_, TxError>(insert(&db, &table, 3).await?)
        })
        .await
        .unwrap();
    assert_eq!(ids(&db, &table).await, vec![2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_take_the_write_lock_at_begin_readers_do_not() {
    let (db, dir, table) = setup(2).await;
    let path = dir.path().to_owned();
    for read_only in [false, true] {
        let free = TransactionTemplate::new(db.clone())
            .read_only(read_only)
            .execute(|_| async {
                // Only a read so far.
                sqlx::query(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                    .fetch_one(&db)
                    .await?;
                Ok::<_, TxError>(write_lock_free(&path, Duration::ZERO).await)
            })
            .await
            .unwrap();
        assert_eq!(free, read_only, "read_only={read_only}");
    }
    assert!(write_lock_free(&path, Duration::ZERO).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_interrupts_a_running_statement() {
    let (db, dir, table) = setup(2).await;
    let start = assert_deadline_cuts(&db, Duration::from_millis(400), || async {
        insert(&db, &table, 1).await?;
        // Minutes of work if nothing stops it.
        let n: i64 = sqlx::query_scalar(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000000000) \
             SELECT COUNT(*) FROM c",
        )
        .fetch_one(&db)
        .await?;
        Ok(n)
    })
    .await;
    // The statement was stopped: the write lock of the transaction is released promptly.
    assert!(
        write_lock_free(dir.path(), Duration::from_secs(3)).await,
        "the transaction still holds the write lock"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(ids(&db, &table).await.is_empty());
    assert_pool_settled(db.pool(), "at the end").await;
}

/// A scope of `propagation` that inserts `id`.
async fn insert_in_scope(
    db: &SqliteTxPool,
    table: &str,
    propagation: Propagation,
    id: i64,
) -> Result<(), TxError> {
    TransactionTemplate::new(db.clone())
        .propagation(propagation)
        .execute(|_| async { Ok::<_, TxError>(insert(db, table, id).await?) })
        .await
}

/// `SELECT COUNT(*)` of the table in a scope of `template`.
async fn count_in_scope(
    db: &SqliteTxPool,
    table: &str,
    template: TransactionTemplate,
) -> Result<i64, TxError> {
    template
        .execute(|_| async {
            let sql = format!("SELECT COUNT(*) FROM {table}");
            Ok::<i64, TxError>(
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(db)
                    .await?,
            )
        })
        .await
}

/// What a scope inside a writer transaction that already holds the write lock gets.
async fn inside_writer<T, F, Fut>(
    db: &SqliteTxPool,
    table: &str,
    base: i64,
    inner: F,
) -> (Result<T, TxError>, Duration)
where
    F: FnOnce(SqliteTxPool, String) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T, TxError>> + Send,
    T: Send,
{
    let r = TransactionTemplate::new(db.clone())
        .execute(|_| async move {
            insert(db, table, base).await?; // the outer transaction holds the write lock
            let start = Instant::now();
            let r = inner(db.clone(), table.to_owned()).await;
            let elapsed = start.elapsed();
            insert(db, table, base + 1).await?;
            Ok::<_, TxError>((r, elapsed))
        })
        .await;
    r.unwrap()
}

fn assert_would_block(r: &Result<(), TxError>, elapsed: Duration) {
    let e = r.as_ref().unwrap_err();
    assert!(
        matches!(e, TxError::WouldBlock { .. }),
        "expected WouldBlock, got {e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("write lock"), "the cause is named: {msg}");
    assert!(
        msg.contains("Nested") && msg.contains("second pool"),
        "the remedy is named: {msg}"
    );
    // The busy timeout is 5 s: failing fast means not waiting for it.
    assert!(elapsed < Duration::from_secs(1), "waited {elapsed:?}");
}

/// A writer scope of `propagation` inside a writer transaction that holds the write lock
/// fails fast; the outer transaction goes on and commits, nothing of the inner one is written.
async fn writer_inside_a_writer_fails_fast(
    db: &SqliteTxPool,
    table: &str,
    propagation: Propagation,
) {
    let (r, elapsed) = inside_writer(db, table, 1, |db, table| async move {
        insert_in_scope(&db, &table, propagation, 10).await
    })
    .await;
    assert_would_block(&r, elapsed);
    assert_eq!(ids(db, table).await, vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_writer_requires_new_writer_fails_fast() {
    let (db, _dir, table) = setup(3).await;
    writer_inside_a_writer_fails_fast(&db, &table, Propagation::RequiresNew).await;

    // When the outer scope propagates the error, nothing at all is written.
    let r = TransactionTemplate::new(db.clone())
        .execute(|_| async {
            insert(&db, &table, 3).await?;
            insert_in_scope(&db, &table, Propagation::RequiresNew, 4).await?;
            Ok::<_, TxError>(())
        })
        .await;
    assert!(matches!(r, Err(TxError::WouldBlock { .. })), "{r:?}");
    assert_eq!(ids(&db, &table).await, vec![1, 2]);
}

/// The writer holding the lock may be suspended further out: writer, then a read-only
/// RequiresNew (which holds no write lock), then a RequiresNew writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_writer_requires_new_writer_two_levels_down_fails_fast() {
    let (db, _dir, table) = setup(3).await;
    let (r, elapsed) = inside_writer(&db, &table, 1, |db, table| async move {
        TransactionTemplate::new(db.clone())
            .propagation(Propagation::RequiresNew)
            .read_only(true)
            .execute(|_| async {
                ids(&db, &table).await; // the read-only transaction has begun
                let start = Instant::now();
                let r = insert_in_scope(&db, &table, Propagation::RequiresNew, 10).await;
                Ok::<_, TxError>((r, start.elapsed()))
            })
            .await
    })
    .await;
    let (r, elapsed_inner) = r.unwrap();
    assert_would_block(&r, elapsed_inner);
    assert!(elapsed < Duration::from_secs(1), "waited {elapsed:?}");
    assert_eq!(ids(&db, &table).await, vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_writer_not_supported_write_fails_fast_reads_work() {
    let (db, _dir, table) = setup(3).await;
    writer_inside_a_writer_fails_fast(&db, &table, Propagation::NotSupported).await;

    // Reads outside the transaction work (and see only committed data).
    let (r, _) = inside_writer(&db, &table, 20, |db, table| async move {
        let not_supported =
            TransactionTemplate::new(db.clone()).propagation(Propagation::NotSupported);
        count_in_scope(&db, &table, not_supported).await
    })
    .await;
    assert_eq!(r.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_writer_read_only_requires_new_and_nested_work() {
    let (db, _dir, table) = setup(3).await;
    let (r, _) = inside_writer(&db, &table, 1, |db, table| async move {
        let reader = TransactionTemplate::new(db.clone())
            .propagation(Propagation::RequiresNew)
            .read_only(true);
        count_in_scope(&db, &table, reader).await
    })
    .await;
    // The independent transaction does not see the outer one's uncommitted row.
    assert_eq!(r.unwrap(), 0);
    let (r, _) = inside_writer(&db, &table, 20, |db, table| async move {
        insert_in_scope(&db, &table, Propagation::Nested, 10).await
    })
    .await;
    r.unwrap();
    assert_eq!(ids(&db, &table).await, vec![1, 2, 10, 20, 21]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requires_new_writer_inside_an_unbegun_writer_works() {
    // The outer transaction has run no statement yet, so it holds no lock.
    let (db, _dir, table) = setup(3).await;
    TransactionTemplate::new(db.clone())
        .execute(|_| async {
            insert_in_scope(&db, &table, Propagation::RequiresNew, 1).await?;
            insert(&db, &table, 2).await?;
            Ok::<_, TxError>(())
        })
        .await
        .unwrap();
    assert_eq!(ids(&db, &table).await, vec![1, 2]);
}
