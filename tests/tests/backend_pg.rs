//! tx-sqlx on PostgreSQL: isolation and read-only really applied, the deadline (client and
//! server side), savepoints, cancellation, panics, aborted transactions, `acquire()`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sqlx::Row;
use tx_sqlx::prelude::*;
use tx_sqlx::{Operation, PgTxPool};

/// The SQLSTATE of the database error behind `e`, if any.
fn sqlstate(e: &TxError) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(sqlx::Error::Database(db)) = s.downcast_ref::<sqlx::Error>() {
            return db.code().map(|c| c.into_owned());
        }
        source = s.source();
    }
    None
}

async fn setup(max: u32, prefix: &str) -> Option<(PgTxPool, String)> {
    let db = tx_tests::pg_pool(max).await?;
    let table = tx_tests::unique_table(prefix);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id BIGINT PRIMARY KEY, note TEXT)"
    )))
    .execute(db.pool())
    .await
    .unwrap();
    Some((db, table))
}

async fn ids(db: &PgTxPool, table: &str) -> Vec<i64> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {table} ORDER BY id"
    )))
    .fetch_all(db.pool())
    .await
    .unwrap()
}

async fn insert(db: &PgTxPool, table: &str, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (id) VALUES ($1)"
    )))
    .bind(id)
    .execute(db)
    .await
    .map(|_| ())
}

/// Waits until every connection of the pool is idle (back in the pool); returns (size, idle).
async fn settle(db: &PgTxPool) -> (u32, usize) {
    let start = Instant::now();
    loop {
        let (size, idle) = (db.pool().size(), db.pool().num_idle());
        if size as usize == idle || start.elapsed() > Duration::from_secs(5) {
            return (size, idle);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

/// Waits for backend `pid` to be idle or gone; returns its last state.
async fn wait_not_in_transaction(pid: i32) -> Option<String> {
    let start = Instant::now();
    loop {
        let state = backend_state(pid).await;
        let open = state
            .as_deref()
            .is_some_and(|s| s.starts_with("idle in transaction") || s == "active");
        if !open || start.elapsed() > Duration::from_secs(5) {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_levels_are_applied() {
    let Some(db) = tx_tests::pg_pool(2).await else {
        return;
    };
    let cases = [
        (Isolation::Default, "read committed"),
        (Isolation::ReadUncommitted, "read uncommitted"),
        (Isolation::ReadCommitted, "read committed"),
        (Isolation::RepeatableRead, "repeatable read"),
        (Isolation::Serializable, "serializable"),
    ];
    for (isolation, expected) in cases {
        for read_only in [false, true] {
            let t = TransactionTemplate::new(db.clone())
                .isolation(isolation)
                .read_only(read_only);
            let (level, ro): (String, String) = t
                .execute(|_| async {
                    let row = sqlx::query(
                        "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')",
                    )
                    .fetch_one(&db)
                    .await?;
                    Ok::<_, TxError>((row.get(0), row.get(1)))
                })
                .await
                .unwrap();
            assert_eq!(level, expected, "{isolation:?}");
            assert_eq!(
                ro,
                if read_only { "on" } else { "off" },
                "{isolation:?} read_only={read_only}"
            );
        }
    }
    // Outside any scope: autocommit on the pool, server defaults.
    let ro: String = sqlx::query_scalar("SELECT current_setting('transaction_read_only')")
        .fetch_one(&db)
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
async fn read_only_write_is_rejected_and_nothing_written() {
    let Some((db, table)) = setup(2, "pg_ro").await else {
        return;
    };
    let r = TransactionTemplate::new(db.clone())
        .read_only(true)
        .execute(|_| async {
            insert(&db, &table, 1).await?;
            Ok::<_, TxError>(())
        })
        .await;
    let e = r.unwrap_err();
    assert_eq!(
        sqlstate(&e).as_deref(),
        Some("25006"),
        "read_only_sql_transaction expected, got {e}"
    );
    assert!(!e.is_retryable());
    assert!(ids(&db, &table).await.is_empty());

    // A RequiresNew writer inside a read-only transaction commits.
    TransactionTemplate::new(db.clone())
        .read_only(true)
        .execute(|_| async {
            TransactionTemplate::new(db.clone())
                .propagation(Propagation::RequiresNew)
                .execute(|_| async { Ok::<_, TxError>(insert(&db, &table, 2).await?) })
                .await?;
            let n: i64 = sqlx::query_scalar("SELECT 1::bigint")
                .fetch_one(&db)
                .await?;
            Ok::<_, TxError>(n)
        })
        .await
        .unwrap();
    assert_eq!(ids(&db, &table).await, vec![2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_rolls_back_while_body_awaits() {
    let Some((db, table)) = setup(2, "pg_deadline").await else {
        return;
    };
    let start = Instant::now();
    let r = TransactionTemplate::new(db.clone())
        .timeout(Duration::from_millis(300))
        .execute(|_| async {
            insert(&db, &table, 1).await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            insert(&db, &table, 2).await?;
            Ok::<_, TxError>(())
        })
        .await;
    let elapsed = start.elapsed();
    assert!(matches!(r, Err(TxError::Timeout)), "{r:?}");
    assert!(
        elapsed < Duration::from_millis(1500),
        "timed out late: {elapsed:?}"
    );
    assert!(ids(&db, &table).await.is_empty());
    let (size, idle) = settle(&db).await;
    assert_eq!(size as usize, idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_bounds_server_statements() {
    let Some((db, table)) = setup(2, "pg_stmt_timeout").await else {
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
    let start = Instant::now();
    let r = TransactionTemplate::new(db.clone())
        .timeout(Duration::from_millis(500))
        .execute(|_| async {
            insert(&db, &table, 1).await?;
            *pid.lock().unwrap() = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&db)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT pg_sleep(30) /* {marker} */"
            )))
            .execute(&db)
            .await?;
            Ok::<_, TxError>(())
        })
        .await;
    assert!(matches!(r, Err(TxError::Timeout)), "{r:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // The server is no longer running it (statement_timeout fired), nothing committed.
    let pid = *pid.lock().unwrap();
    assert_ne!(pid, 0);
    let state = wait_not_in_transaction(pid).await;
    assert!(
        state.as_deref().is_none_or(|s| s == "idle"),
        "backend {pid} left in state {state:?}"
    );
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
    assert!(ids(&db, &table).await.is_empty());
    let (size, idle) = settle(&db).await;
    assert_eq!(size as usize, idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_savepoint_rollback_keeps_outer_work() {
    let Some((db, table)) = setup(2, "pg_nested").await else {
        return;
    };
    let (db, table) = (&db, &table);
    TransactionTemplate::new(db.clone())
        .execute(|_| async {
            insert(db, table, 1).await?;
            // Fails by returning an error.
            let inner: Result<(), TxError> = TransactionTemplate::new(db.clone())
                .propagation(Propagation::Nested)
                .execute(|status| async move {
                    assert!(status.has_savepoint());
                    insert(db, table, 2).await?;
                    Err(TxError::UnexpectedRollback)
                })
                .await;
            assert!(inner.is_err());
            // Fails in the database (duplicate key aborts the PostgreSQL transaction
            // until the savepoint is rolled back).
            let inner: Result<(), TxError> = TransactionTemplate::new(db.clone())
                .propagation(Propagation::Nested)
                .execute(|_| async {
                    insert(db, table, 3).await?;
                    insert(db, table, 1).await?;
                    Ok(())
                })
                .await;
            assert_eq!(sqlstate(&inner.unwrap_err()).as_deref(), Some("23505"));
            // A nested scope that succeeds is kept.
            TransactionTemplate::new(db.clone())
                .propagation(Propagation::Nested)
                .execute(|_| async { Ok::<_, TxError>(insert(db, table, 4).await?) })
                .await?;
            insert(db, table, 5).await?;
            Ok::<_, TxError>(())
        })
        .await
        .unwrap();
    assert_eq!(ids(db, table).await, vec![1, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swallowed_statement_failure_does_not_report_a_commit() {
    let Some((db, table)) = setup(2, "pg_aborted").await else {
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
    assert!(
        matches!(
            e,
            TxError::Database {
                operation: Operation::Commit,
                ..
            }
        ),
        "expected a commit failure, got {e:?}"
    );
    assert!(e.to_string().contains("aborted"), "{e}");
    assert!(ids(&db, &table).await.is_empty());
    let (size, idle) = settle(&db).await;
    assert_eq!(size as usize, idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_call_rolls_back_and_returns_connections() {
    let Some((db, table)) = setup(3, "pg_cancel").await else {
        return;
    };
    let completion = Arc::new(Mutex::new(None));
    let pids = Arc::new(Mutex::new(Vec::<i32>::new()));

    // Cancelled while the body awaits something else, and while a statement is in flight.
    for in_statement in [false, true] {
        let fut = {
            let db = db.clone();
            let table = table.clone();
            let completion = completion.clone();
            let pids = pids.clone();
            async move {
                TransactionTemplate::new(db.clone())
                    .execute(|_| async {
                        tx_sqlx::after_completion(move |c| async move {
                            *completion.lock().unwrap() = Some(c);
                        })?;
                        insert(&db, &table, 1 + in_statement as i64).await?;
                        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                            .fetch_one(&db)
                            .await?;
                        pids.lock().unwrap().push(pid);
                        if in_statement {
                            sqlx::query("SELECT pg_sleep(3)").execute(&db).await?;
                        } else {
                            tokio::time::sleep(Duration::from_secs(10)).await;
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
        let pid = *pids.lock().unwrap().last().unwrap();
        let state = wait_not_in_transaction(pid).await;
        assert!(
            state.as_deref().is_none_or(|s| s == "idle"),
            "backend {pid} left in state {state:?} (in_statement={in_statement})"
        );
        let (size, idle) = settle(&db).await;
        assert_eq!(
            size as usize, idle,
            "pool connections not all back (in_statement={in_statement})"
        );
        let start = Instant::now();
        while completion.lock().unwrap().is_none() && start.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            completion.lock().unwrap().take(),
            Some(Completion::RolledBack)
        );
    }
    assert!(ids(&db, &table).await.is_empty());
    // No session of ours is left idle in transaction.
    let pids = pids.lock().unwrap().clone();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&tx_tests::pg_url())
        .await
        .unwrap();
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1) AND state LIKE 'idle in transaction%'",
    )
    .bind(&pids)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(open, 0);
    // The pool still works.
    TransactionTemplate::new(db.clone())
        .execute(|_| async { Ok::<_, TxError>(insert(&db, &table, 7).await?) })
        .await
        .unwrap();
    assert_eq!(ids(&db, &table).await, vec![7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_body_rolls_back_and_connection_comes_back_clean() {
    let Some((db, table)) = setup(2, "pg_panic").await else {
        return;
    };
    let pid = Arc::new(Mutex::new(0i32));
    let handle = {
        let db = db.clone();
        let table = table.clone();
        let pid = pid.clone();
        tokio::spawn(async move {
            TransactionTemplate::new(db.clone())
                .execute(|_| async {
                    insert(&db, &table, 1).await?;
                    *pid.lock().unwrap() = sqlx::query_scalar("SELECT pg_backend_pid()")
                        .fetch_one(&db)
                        .await?;
                    if table.len() > 1 {
                        panic!("boom");
                    }
                    Ok::<_, TxError>(())
                })
                .await
        })
    };
    let err = handle.await.unwrap_err();
    assert!(err.is_panic());
    assert!(ids(&db, &table).await.is_empty());
    let pid = *pid.lock().unwrap();
    let state = wait_not_in_transaction(pid).await;
    assert!(state.as_deref().is_none_or(|s| s == "idle"), "{state:?}");
    let (size, idle) = settle(&db).await;
    assert_eq!(size as usize, idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_and_streams_use_the_bound_transaction() {
    let Some((db, table)) = setup(3, "pg_acquire").await else {
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
