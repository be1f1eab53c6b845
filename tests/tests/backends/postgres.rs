//! tx-sqlx on PostgreSQL: the backend contract, and what only PostgreSQL shows: isolation
//! and read-only as the server reports them, the deadline as the server's statement timeout,
//! a swallowed statement failure failing the COMMIT, `acquire()` and streams.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, TryStreamExt};
use sqlx::Row;
use tx_sqlx::PgTxPool;
use tx_sqlx::prelude::*;

use crate::contract::{
    BoxFut, ContractDb, assert_commit_failed, assert_deadline_cuts, assert_isolation_applied,
    assert_pool_settled, backend_contract, database_error, same_on_every_database, server_methods,
    table_functions,
};

backend_contract!(PgDb);
table_functions!(
    PgTxPool,
    "$1",
    tx_tests::pg_pool,
    "pg",
    "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id BIGINT PRIMARY KEY, note TEXT)"
);

/// The SQLSTATE of the database error behind `e`, if any.
fn sqlstate(e: &TxError) -> Option<String> {
    database_error(e).and_then(|db| db.code().map(|c| c.into_owned()))
}

/// A PostgreSQL pool and its test table.
#[derive(Clone)]
pub struct PgDb {
    db: PgTxPool,
    table: String,
}

/// The state of backend `pid` in pg_stat_activity (None: the session is gone).
async fn backend_state(pid: i32) -> Option<String> {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&tx_tests::pg_url())
        .await
        .unwrap();
    sqlx::query_scalar("SELECT coalesce(state, '') FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_optional(&mut conn)
        .await
        .unwrap()
}

/// Waits (up to 5 s) for backend `pid` to be idle or gone; what is left otherwise.
async fn backend_left(pid: i32) -> Option<String> {
    let start = Instant::now();
    loop {
        let state = backend_state(pid).await;
        if state.as_deref().is_none_or(|s| s == "idle") {
            return None;
        }
        let open = state
            .as_deref()
            .is_some_and(|s| s.starts_with("idle in transaction") || s == "active");
        if !open || start.elapsed() > Duration::from_secs(5) {
            return Some(format!("backend {pid} left in state {state:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts backend `pid` is idle or gone (not inside a transaction, not running anything).
async fn assert_backend_idle(pid: i32, context: &str) {
    let left = backend_left(pid).await;
    assert_eq!(left, None, "{context}");
}

/// Asserts that the failed transaction wrote nothing to `table` and gave its connection back.
async fn assert_nothing_written(db: &PgTxPool, table: &str) {
    assert!(ids(db, table).await.is_empty());
    assert_pool_settled(db.pool(), "at the end").await;
}

impl ContractDb for PgDb {
    same_on_every_database!(PgTxPool, sqlx::Postgres);
    server_methods!("SELECT pg_backend_pid()" as i32, "SELECT pg_sleep(3)");

    fn transaction_left(&self, session: i64, _: Duration) -> BoxFut<'_, Option<String>> {
        backend_left(i32::try_from(session).expect("a PostgreSQL backend pid")).boxed()
    }

    fn is_duplicate_key(e: &TxError) -> bool {
        sqlstate(e).as_deref() == Some("23505")
    }

    fn is_read_only_violation(e: &TxError) -> bool {
        // read_only_sql_transaction
        sqlstate(e).as_deref() == Some("25006")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_levels_are_applied() {
    let Some(db) = tx_tests::pg_pool(2).await else {
        return;
    };
    let db = &db;
    let default = Isolation::ReadCommitted;
    assert_isolation_applied(db, str::to_lowercase, default, |_, _| async move {
        let row = sqlx::query(
            "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')",
        )
        .fetch_one(db)
        .await?;
        let read_only = match row.get::<String, _>(1).as_str() {
            "on" => true,
            "off" => false,
            other => panic!("transaction_read_only = {other}"),
        };
        Ok((row.get(0), read_only))
    })
    .await;
    // Outside any scope: autocommit on the pool, server defaults.
    let ro: String = sqlx::query_scalar("SELECT current_setting('transaction_read_only')")
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(ro, "off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_runs_with_owner_level_and_requires_new_gets_its_own() {
    let Some(db) = tx_tests::pg_pool(3).await else {
        return;
    };
    let outer = TransactionTemplate::new(db.clone()).isolation(Isolation::Serializable);
    let levels = outer
        .execute(|_| async {
            let q = "SELECT current_setting('transaction_isolation')";
            let own: String = sqlx::query_scalar(q).fetch_one(&db).await?;
            let joined: String = TransactionTemplate::new(db.clone())
                .isolation(Isolation::ReadCommitted)
                .execute(|_| async {
                    Ok::<String, TxError>(sqlx::query_scalar(q).fetch_one(&db).await?)
                })
                .await?;
            let new: String = TransactionTemplate::new(db.clone())
                .propagation(Propagation::RequiresNew)
                .isolation(Isolation::RepeatableRead)
                .execute(|_| async {
                    Ok::<String, TxError>(sqlx::query_scalar(q).fetch_one(&db).await?)
                })
                .await?;
            Ok::<_, TxError>((own, joined, new))
        })
        .await
        .unwrap();
    assert_eq!(
        levels,
        (
            "serializable".into(),
            "serializable".into(),
            "repeatable read".into()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_bounds_server_statements() {
    let Some((db, table)) = setup(2, "stmt_timeout").await else {
        return;
    };
    // The remaining time is set as the statement timeout in the BEGIN round trip.
    let ms: String = TransactionTemplate::new(db.clone())
        .timeout(Duration::from_secs(20))
        .execute(|_| async {
            Ok::<String, TxError>(
                sqlx::query_scalar("SELECT current_setting('statement_timeout')")
                    .fetch_one(&db)
                    .await?,
            )
        })
        .await
        .unwrap();
    assert_ne!(ms, "0", "statement_timeout not set");
    // And only for that transaction (SET LOCAL).
    let after: String = sqlx::query_scalar("SELECT current_setting('statement_timeout')")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(after, "0");

    // A long server statement is cancelled at the deadline.
    let marker = format!("sleep_marker_{}", table);
    let pid = Arc::new(Mutex::new(0i32));
    let start = assert_deadline_cuts(&db, Duration::from_millis(500), || async {
        insert(&db, &table, 1).await?;
        *pid.lock().unwrap() = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&db)
            .await?;
        let sleep = format!("SELECT pg_sleep(30) /* {marker} */");
        sqlx::query(sqlx::AssertSqlSafe(sleep)).execute(&db).await?;
        Ok(())
    })
    .await;
    // The server is no longer running it (statement_timeout fired), nothing committed.
    let pid = *pid.lock().unwrap();
    assert_ne!(pid, 0);
    assert_backend_idle(pid, "after the deadline").await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&tx_tests::pg_url())
        .await
        .unwrap();
    let running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
    )
    .bind(&marker)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(running, 0, "pg_sleep still running on the server");
    assert!(start.elapsed() < Duration::from_secs(8));
    assert_nothing_written(&db, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swallowed_statement_failure_does_not_report_a_commit() {
    let Some((db, table)) = setup(2, "aborted").await else {
        return;
    };
    let r = TransactionTemplate::new(db.clone())
        .execute(|_| async {
            insert(&db, &table, 1).await?;
            // The failure is ignored, but PostgreSQL has aborted the transaction.
            let dup = insert(&db, &table, 1).await;
            assert!(dup.is_err());
            Ok::<_, TxError>(())
        })
        .await;
    let e = r.unwrap_err();
    assert_commit_failed(&e);
    assert!(e.to_string().contains("aborted"), "{e}");
    assert_nothing_written(&db, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_and_streams_use_the_bound_transaction() {
    let Some((db, table)) = setup(3, "acquire").await else {
        return;
    };
    // Outside a transaction: a pooled connection in autocommit.
    {
        let conn = db.acquire().await.unwrap();
        assert!(!conn.in_transaction());
    }
    let r = TransactionTemplate::new(db.clone())
        .execute(|_| async {
            insert(&db, &table, 1).await?;
            let via_db: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&db)
                .await?;
            let via_conn: i32 = {
                let mut conn = db.acquire().await?;
                assert!(conn.in_transaction());
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {table} (id) VALUES (2)"
                )))
                .execute(&mut *conn)
                .await?;
                sqlx::query_scalar("SELECT pg_backend_pid()")
                    .fetch_one(&mut *conn)
                    .await?
            };
            assert_eq!(via_db, via_conn);
            // A stream sees the uncommitted rows of the transaction.
            let streamed: Vec<i64> = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT id FROM {table} ORDER BY id"
            )))
            .fetch(&db)
            .try_collect()
            .await?;
            assert_eq!(streamed, vec![1, 2]);
            // Other connections do not see them yet.
            let outside: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                    .fetch_one(db.pool())
                    .await?;
            assert_eq!(outside, 0);
            Err::<(), _>(TxError::UnexpectedRollback)
        })
        .await;
    assert!(r.is_err());
    assert!(ids(&db, &table).await.is_empty());
}
