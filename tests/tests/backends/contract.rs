//! The backend contract, written once and run on every database: a deadline rolls back while
//! the body awaits, a savepoint undoes only its own work, a cancelled or panicking call rolls
//! back and gives its connection back, and a read-only transaction refuses writes.
//!
//! Each check is a generic async function over [`ContractDb`]; [`backend_contract!`] turns
//! them into one `#[tokio::test]` per database, so a failure names its database
//! (`postgres::deadline_rolls_back_while_body_awaits`). What only one database has stays in
//! that database's module.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tx_sqlx::manager::TransactionManager;
use tx_sqlx::prelude::*;

/// A boxed `Send` future (the checks spawn some of them).
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A test database as the contract sees it: a pool on a fresh `(id BIGINT PRIMARY KEY, note
/// TEXT)` table, reads from outside the pool, and the few things the databases do differently.
pub trait ContractDb: Clone + Send + Sync + 'static {
    /// The `TxPool` type.
    type Pool: TransactionManager + Clone + Send + Sync + 'static;
    /// The sqlx database.
    type Database: sqlx::Database;

    /// A pool of `max` connections and a fresh table named after `prefix`; `None` (the test
    /// is skipped, loudly) when the server is down.
    fn setup(max: u32, prefix: &'static str) -> BoxFut<'static, Option<Self>>;

    /// The transaction manager.
    fn pool(&self) -> &Self::Pool;

    /// A template on this database's manager.
    fn template(&self) -> TransactionTemplate {
        TransactionTemplate::new(self.pool().clone())
    }

    /// `INSERT INTO table (id) VALUES (id)` through the transaction-aware `&TxPool`.
    fn insert(&self, id: i64) -> BoxFut<'_, Result<(), sqlx::Error>>;

    /// `SELECT COUNT(*)` of the table through `&TxPool` (a read inside the current scope).
    fn count(&self) -> BoxFut<'_, Result<i64, sqlx::Error>>;

    /// The table's ids in order, read outside every transaction.
    fn ids(&self) -> BoxFut<'_, Vec<i64>>;

    /// The sqlx pool under the manager.
    fn sqlx_pool(&self) -> &sqlx::Pool<Self::Database>;

    /// The server session the current transaction runs on (0 where there is none to ask).
    fn session(&self) -> BoxFut<'_, Result<i64, sqlx::Error>>;

    /// A statement that keeps the server busy for seconds, through `&TxPool`; `None` when the
    /// database has no such sleep (SQLite).
    fn slow_statement(&self) -> Option<BoxFut<'_, Result<(), sqlx::Error>>>;

    /// What is left open after `session`'s call ended, if anything: `None` when the server
    /// shows the session idle or gone (PostgreSQL, MariaDB, each polling its view for up to
    /// 5 s), or another connection gets the write lock within `lock_wait` (SQLite).
    fn transaction_left(&self, session: i64, lock_wait: Duration) -> BoxFut<'_, Option<String>>;

    /// Whether `e` is this database's duplicate-key error.
    fn is_duplicate_key(e: &TxError) -> bool;

    /// Whether `e` is this database's "write in a read-only transaction" error.
    fn is_read_only_violation(e: &TxError) -> bool;
}

/// Waits (up to 5 s) until every connection of `pool` is idle (back in the pool), then
/// asserts it.
pub async fn assert_pool_settled<DB: sqlx::Database>(pool: &sqlx::Pool<DB>, context: &str) {
    let start = Instant::now();
    let (size, idle) = loop {
        let (size, idle) = (pool.size(), pool.num_idle());
        if size as usize == idle || start.elapsed() > Duration::from_secs(5) {
            break (size, idle);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        size as usize, idle,
        "pool connections not all back ({context})"
    );
}

/// After a call that ran on `session` ended: no transaction is left (see
/// [`ContractDb::transaction_left`]) and every connection is back in the pool.
async fn assert_call_ended_cleanly<B: ContractDb>(
    db: &B,
    session: i64,
    lock_wait: Duration,
    context: &str,
) {
    let left = db.transaction_left(session, lock_wait).await;
    assert_eq!(left, None, "a transaction is left ({context})");
    assert_pool_settled(db.sqlx_pool(), context).await;
}

/// After a call that wrote and recorded its `session`, then failed: nothing is written, and
/// the call ended cleanly (see [`assert_call_ended_cleanly`]).
async fn assert_rolled_back_and_ended_cleanly<B: ContractDb>(
    db: &B,
    session: &Mutex<i64>,
    lock_wait: Duration,
    context: &str,
) {
    assert!(db.ids().await.is_empty(), "nothing written ({context})");
    let session = *session.lock().unwrap();
    assert_call_ended_cleanly(db, session, lock_wait, context).await;
}

/// Creates a table with `create` (`{table}` is replaced by its name, unique and named after
/// `prefix`) through `pool`; returns its name.
pub async fn create_table<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    prefix: &str,
    create: &str,
) -> String
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let table = tx_tests::unique_table(prefix);
    sqlx::raw_sql(sqlx::AssertSqlSafe(create.replace("{table}", &table)))
        .execute(pool)
        .await
        .unwrap();
    table
}

/// For every isolation level, writing and read-only: a transaction on `manager` begun with
/// them runs at that level (by its SQL name as the database spells it, `spelling`; the
/// server's `default` for `Isolation::Default`) with that access mode, as
/// `settings(expected level, read_only)` reads them back inside it (`(level, read_only)`).
pub async fn assert_isolation_applied<M, F, Fut>(
    manager: &M,
    spelling: fn(&str) -> String,
    default: Isolation,
    settings: F,
) where
    M: TransactionManager + Clone + 'static,
    F: Fn(String, bool) -> Fut,
    Fut: Future<Output = Result<(String, bool), TxError>>,
{
    let levels = [
        (Isolation::ReadUncommitted, "READ UNCOMMITTED"),
        (Isolation::ReadCommitted, "READ COMMITTED"),
        (Isolation::RepeatableRead, "REPEATABLE READ"),
        (Isolation::Serializable, "SERIALIZABLE"),
    ];
    let (_, default_name) = levels.into_iter().find(|(i, _)| *i == default).unwrap();
    for (isolation, name) in levels
        .into_iter()
        .chain([(Isolation::Default, default_name)])
    {
        for read_only in [false, true] {
            let expected = spelling(name);
            let (level, ro) = TransactionTemplate::new(manager.clone())
                .isolation(isolation)
                .read_only(read_only)
                .execute(|_| settings(expected.clone(), read_only))
                .await
                .unwrap();
            assert_eq!(level, expected, "{isolation:?} read_only={read_only}");
            assert_eq!(ro, read_only, "{isolation:?} read_only={read_only}");
        }
    }
}

/// Runs `body` in a transaction on `manager` with a `deadline`, and asserts that it ended in
/// `TxError::Timeout` within 2 s; returns when it started.
pub async fn assert_deadline_cuts<M, T, F, Fut>(manager: &M, deadline: Duration, body: F) -> Instant
where
    M: TransactionManager + Clone + 'static,
    T: std::fmt::Debug,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, TxError>>,
{
    let start = Instant::now();
    let r = TransactionTemplate::new(manager.clone())
        .timeout(deadline)
        .execute(|_| body())
        .await;
    assert_timed_out(&r, start, Duration::from_secs(2));
    start
}

/// Asserts that the call started at `start` ended in `TxError::Timeout`, within `within`.
fn assert_timed_out<T: std::fmt::Debug>(r: &Result<T, TxError>, start: Instant, within: Duration) {
    assert!(matches!(r, Err(TxError::Timeout)), "{r:?}");
    let elapsed = start.elapsed();
    assert!(elapsed < within, "timed out late: {elapsed:?}");
}

/// Asserts that `e` is a failure of the COMMIT.
pub fn assert_commit_failed(e: &TxError) {
    assert!(
        matches!(
            e,
            TxError::Database {
                operation: tx_sqlx::Operation::Commit,
                ..
            }
        ),
        "expected a commit failure, got {e:?}"
    );
}

/// The database error behind `e` (anywhere in its source chain), if any.
pub fn database_error(e: &TxError) -> Option<&(dyn sqlx::error::DatabaseError + 'static)> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(sqlx::Error::Database(db)) = s.downcast_ref::<sqlx::Error>() {
            return Some(&**db);
        }
        source = s.source();
    }
    None
}

/// The deadline fires while the body awaits something else: `Timeout` at once, nothing
/// written, no transaction left, every connection back.
pub async fn deadline_rolls_back_while_body_awaits<B: ContractDb>() {
    let Some(db) = B::setup(2, "deadline").await else {
        return;
    };
    let session = Arc::new(Mutex::new(0i64));
    let start = Instant::now();
    let r = db
        .template()
        .timeout(Duration::from_millis(300))
        .execute(|_| async {
            db.insert(1).await?;
            *session.lock().unwrap() = db.session().await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            db.insert(2).await?;
            Ok::<_, TxError>(())
        })
        .await;
    assert_timed_out(&r, start, Duration::from_millis(1500));
    assert_rolled_back_and_ended_cleanly(
        &db,
        &session,
        Duration::from_secs(2),
        "after the deadline",
    )
    .await;
}

/// Nested scopes on savepoints: one failing by its error, one failing in the database (a
/// duplicate key, which on PostgreSQL aborts the transaction until the savepoint is rolled
/// back), one succeeding; the outer transaction keeps its own work and the successful scope's.
pub async fn nested_savepoint_rollback_keeps_outer_work<B: ContractDb>() {
    let Some(db) = B::setup(2, "nested").await else {
        return;
    };
    let db = &db;
    // A Nested scope inserting `ids` on a savepoint of its own, failing with `outcome`.
    let on_savepoint = |ids: &'static [i64], outcome: Result<(), TxError>| async move {
        db.template()
            .propagation(Propagation::Nested)
            .execute(|status| async move {
                assert!(status.has_savepoint());
                for &id in ids {
                    db.insert(id).await?;
                }
                outcome
            })
            .await
    };
    db.template()
        .execute(|_| async {
            db.insert(1).await?;
            let inner = on_savepoint(&[2], Err(TxError::UnexpectedRollback)).await;
            assert!(inner.is_err());
            // 1 again: a duplicate key.
            let e = on_savepoint(&[3, 1], Ok(())).await.unwrap_err();
            assert!(B::is_duplicate_key(&e), "duplicate key expected, got {e}");
            on_savepoint(&[4], Ok(())).await?;
            db.insert(5).await?;
            Ok::<_, TxError>(())
        })
        .await
        .unwrap();
    assert_eq!(db.ids().await, vec![1, 4, 5]);
}

/// A call dropped while its body awaits something else, and (where the database can sleep in
/// a statement) while a statement is in flight: rolled back, the after-completion hook says
/// so, no transaction is left, every connection is back and the pool still works.
pub async fn cancelled_call_rolls_back_and_returns_connections<B: ContractDb>() {
    let Some(db) = B::setup(3, "cancel").await else {
        return;
    };
    let completion = Arc::new(Mutex::new(None));
    let sessions = Arc::new(Mutex::new(Vec::<i64>::new()));
    let with_statement = db.slow_statement().is_some();
    let cases: &[bool] = if with_statement {
        &[false, true]
    } else {
        &[false]
    };
    for &in_statement in cases {
        let fut = {
            let db = db.clone();
            let completion = completion.clone();
            let sessions = sessions.clone();
            async move {
                db.template()
                    .execute(|_| async {
                        tx_sqlx::after_completion(move |c| async move {
                            *completion.lock().unwrap() = Some(c);
                        })?;
                        db.insert(1 + in_statement as i64).await?;
                        let session = db.session().await?;
                        sessions.lock().unwrap().push(session);
                        match db.slow_statement() {
                            Some(statement) if in_statement => statement.await?,
                            _ => tokio::time::sleep(Duration::from_secs(10)).await,
                        }
                        Ok::<_, TxError>(())
                    })
                    .await
            }
        };
        let r = tokio::time::timeout(Duration::from_millis(400), fut).await;
        assert!(
            r.is_err(),
            "the call should still be running when cancelled"
        );
        let context = format!("in_statement={in_statement}");
        let session = *sessions.lock().unwrap().last().unwrap();
        assert_call_ended_cleanly(&db, session, Duration::from_secs(3), &context).await;
        let start = Instant::now();
        while completion.lock().unwrap().is_none() && start.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            completion.lock().unwrap().take(),
            Some(Completion::RolledBack)
        );
    }
    assert!(db.ids().await.is_empty());
    // No session of ours is left inside a transaction.
    let sessions = sessions.lock().unwrap().clone();
    for session in sessions {
        let left = db.transaction_left(session, Duration::from_secs(3)).await;
        assert_eq!(left, None, "a transaction is left (at the end)");
    }
    // The pool still works.
    db.template()
        .execute(|_| async { Ok::<_, TxError>(db.insert(7).await?) })
        .await
        .unwrap();
    assert_eq!(db.ids().await, vec![7]);
}

/// A panic in the body (in a spawned task): the task reports the panic, nothing is written,
/// no transaction is left, the connection comes back.
pub async fn panic_in_body_rolls_back<B: ContractDb>() {
    let Some(db) = B::setup(2, "panic").await else {
        return;
    };
    let session = Arc::new(Mutex::new(0i64));
    let handle = {
        let db = db.clone();
        let session = session.clone();
        tokio::spawn(async move {
            db.template()
                .execute(|_| async {
                    db.insert(1).await?;
                    *session.lock().unwrap() = db.session().await?;
                    if db.sqlx_pool().size() > 0 {
                        panic!("boom");
                    }
                    Ok::<_, TxError>(())
                })
                .await
        })
    };
    assert!(handle.await.unwrap_err().is_panic());
    assert_rolled_back_and_ended_cleanly(&db, &session, Duration::from_secs(3), "after the panic")
        .await;
}

/// A write in a read-only transaction is refused by the database (not retryable) and nothing
/// is written; a `RequiresNew` writer inside a read-only transaction commits, and the
/// read-only transaction goes on reading.
pub async fn read_only_write_is_rejected_and_nothing_written<B: ContractDb>() {
    let Some(db) = B::setup(2, "ro").await else {
        return;
    };
    let r = db
        .template()
        .read_only(true)
        .execute(|_| async {
            db.insert(1).await?;
            Ok::<_, TxError>(())
        })
        .await;
    let e = r.unwrap_err();
    assert!(
        B::is_read_only_violation(&e),
        "read-only violation expected, got {e}"
    );
    assert!(!e.is_retryable());
    assert!(db.ids().await.is_empty());

    db.template()
        .read_only(true)
        .execute(|_| async {
            db.template()
                .propagation(Propagation::RequiresNew)
                .execute(|_| async { Ok::<_, TxError>(db.insert(2).await?) })
                .await?;
            Ok::<_, TxError>(db.count().await?)
        })
        .await
        .unwrap();
    assert_eq!(db.ids().await, vec![2]);
}

/// A database module's table functions on its `TxPool` type `$pool`, with `$placeholder` the
/// database's first bind parameter (`$1` or `?`): `ids` (in order, read outside every
/// transaction) and `insert` (through the transaction-aware `&TxPool`); for a server, also
/// `setup` (a pool from `$connect`, a table from `$create` named with `$prefix`).
macro_rules! table_functions {
    ($pool:ty, $placeholder:literal, $connect:path, $prefix:literal, $create:literal) => {
        /// A pool of `max` connections and a fresh table (`$create`, `{table}` its name) named
        /// after `prefix`; `None` (skipped, loudly) when the server is down.
        pub(crate) async fn setup(max: u32, prefix: &str) -> Option<($pool, String)> {
            let db = $connect(max).await?;
            let prefix = format!(concat!($prefix, "_{}"), prefix);
            let table = $crate::contract::create_table(db.pool(), &prefix, $create).await;
            Some((db, table))
        }

        table_functions!($pool, $placeholder);
    };
    ($pool:ty, $placeholder:literal) => {
        /// The table's ids in order, read outside every transaction.
        pub(crate) async fn ids(db: &$pool, table: &str) -> Vec<i64> {
            let sql = format!("SELECT id FROM {table} ORDER BY id");
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_all(db.pool())
                .await
                .unwrap()
        }

        /// `INSERT INTO table (id) VALUES (id)` through the transaction-aware `&TxPool`.
        pub(crate) async fn insert(db: &$pool, table: &str, id: i64) -> Result<(), sqlx::Error> {
            let sql = format!(
                concat!("INSERT INTO {} (id) VALUES (", $placeholder, ")"),
                table
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .execute(db)
                .await
                .map(|_| ())
        }
    };
}
pub(crate) use table_functions;

/// The [`ContractDb`] items that are the same on every database but for its `TxPool` type
/// `$pool` and sqlx database `$database`: the pools, and the table through the module's
/// [`table_functions!`] (`self.db`, `self.table`). Expands inside an `impl ContractDb`.
macro_rules! same_on_every_database {
    ($pool:ty, $database:ty) => {
        type Pool = $pool;
        type Database = $database;

        fn pool(&self) -> &Self::Pool {
            &self.db
        }

        fn sqlx_pool(&self) -> &sqlx::Pool<Self::Database> {
            self.db.pool()
        }

        fn insert(&self, id: i64) -> BoxFut<'_, Result<(), sqlx::Error>> {
            insert(&self.db, &self.table, id).boxed()
        }

        fn count(&self) -> BoxFut<'_, Result<i64, sqlx::Error>> {
            let sql = format!("SELECT COUNT(*) FROM {}", self.table);
            async move {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&self.db)
                    .await
            }
            .boxed()
        }

        fn ids(&self) -> BoxFut<'_, Vec<i64>> {
            ids(&self.db, &self.table).boxed()
        }
    };
}
pub(crate) use same_on_every_database;

/// The [`ContractDb`] methods of a server database: `setup` through the module's
/// `setup(max, prefix)`, the session id from `$session` (a `$session_ty`), and `$slow` as the
/// statement that keeps the server busy. Expands inside an `impl ContractDb`.
macro_rules! server_methods {
    ($session:literal as $session_ty:ty, $slow:literal) => {
        fn setup(max: u32, prefix: &'static str) -> BoxFut<'static, Option<Self>> {
            async move {
                let (db, table) = setup(max, prefix).await?;
                Some(Self { db, table })
            }
            .boxed()
        }

        fn session(&self) -> BoxFut<'_, Result<i64, sqlx::Error>> {
            async move {
                let id: $session_ty = sqlx::query_scalar($session).fetch_one(&self.db).await?;
                Ok(i64::try_from(id).expect("a session id"))
            }
            .boxed()
        }

        fn slow_statement(&self) -> Option<BoxFut<'_, Result<(), sqlx::Error>>> {
            Some(
                async move {
                    sqlx::query($slow).execute(&self.db).await?;
                    Ok(())
                }
                .boxed(),
            )
        }
    };
}
pub(crate) use server_methods;

/// One `#[tokio::test]` per contract check, on database `$db` (a [`ContractDb`]).
macro_rules! backend_contract {
    ($db:ty) => {
        tx_tests::generic_tests!(crate::contract for $db:
            deadline_rolls_back_while_body_awaits,
            nested_savepoint_rollback_keeps_outer_work,
            cancelled_call_rolls_back_and_returns_connections,
            panic_in_body_rolls_back,
            read_only_write_is_rejected_and_nothing_written,
        );
    };
}
pub(crate) use backend_contract;
