//! tx-sqlx on MariaDB/MySQL: isolation and read-only really applied, the deadline (client and
//! server side), savepoints, cancellation, panics, deadlocks.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::Row;
use sqlx::mysql::MySqlDatabaseError;
use tx_sqlx::prelude::*;
use tx_sqlx::{MySqlTxPool, Operation};

/// The MySQL error number behind `e`, if any.
fn mysql_number(e: &TxError) -> Option<u16> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(sqlx::Error::Database(db)) = s.downcast_ref::<sqlx::Error>() {
            return db
                .try_downcast_ref::<MySqlDatabaseError>()
                .map(|m| m.number());
        }
        source = s.source();
    }
    None
}

async fn setup(max: u32, prefix: &str) -> Option<(MySqlTxPool, String)> {
    let db = tx_tests::mysql_pool(max).await?;
    let table = tx_tests::unique_table(prefix);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id BIGINT PRIMARY KEY, note TEXT) ENGINE=InnoDB"
    )))
    .execute(db.pool())
    .await
    .unwrap();
    Some((db, table))
}

async fn ids(db: &MySqlTxPool, table: &str) -> Vec<i64> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {table} ORDER BY id"
    )))
    .fetch_all(db.pool())
    .await
    .unwrap()
}

async fn insert(db: &MySqlTxPool, table: &str, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (id) VALUES (?)"
    )))
    .bind(id)
    .execute(db)
    .await
    .map(|_| ())
}

async fn settle(db: &MySqlTxPool) -> (u32, usize) {
    let start = Instant::now();
    loop {
        let (size, idle) = (db.pool().size(), db.pool().num_idle());
        if size as usize == idle || start.elapsed() > Duration::from_secs(5) {
            return (size, idle);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until InnoDB shows no transaction for connection `id` (information_schema.innodb_trx
/// is refreshed at most every 100 ms); returns how many it still shows.
async fn wait_no_innodb_trx(id: u64) -> i64 {
    let mut conn = <sqlx::MySqlConnection as sqlx::Connection>::connect(&tx_tests::mysql_url())
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = ?",
        )
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if n == 0 || start.elapsed() > Duration::from_secs(5) {
            return n;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_levels_are_applied() {
    let Some((db, table)) = setup(2, "my_iso").await else {
        return;
    };
    let cases = [
        (Isolation::ReadUncommitted, "READ UNCOMMITTED"),
        (Isolation::ReadCommitted, "READ COMMITTED"),
        (Isolation::RepeatableRead, "REPEATABLE READ"),
        (Isolation::Serializable, "SERIALIZABLE"),
        // The server default.
        (Isolation::Default, "REPEATABLE READ"),
    ];
    for (isolation, expected) in cases {
        for read_only in [false, true] {
            let (level, ro): (String, i64) = TransactionTemplate::new(db.clone())
                .isolation(isolation)
                .read_only(read_only)
                .execute(|_| async {
                    // Touch InnoDB so the transaction is registered, then read back what
                    // the server runs it with.
                    sqlx::query(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                        .fetch_one(&db)
                        .await?;
                    // information_schema.innodb_trx is a cache refreshed at most every
                    // 100 ms: poll until it shows this transaction.
                    let mut tries = 0;
                    let row = loop {
                        sqlx::query("DO SLEEP(0.12)").execute(&db).await?;
                        let row = sqlx::query(
                            "SELECT trx_isolation_level, CAST(trx_is_read_only AS SIGNED) \
                             FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = CONNECTION_ID()",
                        )
                        .fetch_optional(&db)
                        .await?;
                        tries += 1;
                        match row {
                            Some(row) => break row,
                            None => assert!(tries < 20, "transaction never shown in innodb_trx"),
                        }
                    };
                    Ok::<_, TxError>((row.get(0), row.get(1)))
                })
                .await
                .unwrap();
            assert_eq!(level, expected, "{isolation:?} read_only={read_only}");
            assert_eq!(ro, read_only as i64, "{isolation:?} read_only={read_only}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_changes_what_the_transaction_sees() {
    let Some((db, table)) = setup(3, "my_iso_seen").await else {
        return;
    };
    insert(&db, &table, 1).await.unwrap();
    for (isolation, sees_new_row) in [
        (Isolation::ReadCommitted, true),
        (Isolation::RepeatableRead, false),
    ] {
        let counts = TransactionTemplate::new(db.clone())
            .isolation(isolation)
            .execute(|_| async {
                let q = format!("SELECT COUNT(*) FROM {table}");
                let before: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(q.clone()))
                    .fetch_one(&db)
                    .await?;
                // Another connection commits a row meanwhile.
                let next: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT MAX(id) + 1 FROM {table}"
                )))
                .fetch_one(db.pool())
                .await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {table} (id) VALUES (?)"
                )))
                .bind(next)
                .execute(db.pool())
                .await?;
                let after: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(q))
                    .fetch_one(&db)
                    .await?;
                Ok::<_, TxError>((before, after))
            })
            .await
            .unwrap();
        assert_eq!(
            counts.1 == counts.0 + 1,
            sees_new_row,
            "{isolation:?}: {counts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_write_is_rejected_and_nothing_written() {
    let Some((db, table)) = setup(2, "my_ro").await else {
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
    // ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
    assert_eq!(mysql_number(&e), Some(1792), "{e}");
    assert!(ids(&db, &table).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_rolls_back_while_body_awaits() {
    let Some((db, table)) = setup(2, "my_deadline").await else {
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
    assert!(matches!(r, Err(TxError::Timeout)), "{r:?}");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    assert!(ids(&db, &table).await.is_empty());
    let (size, idle) = settle(&db).await;
    assert_eq!(size as usize, idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_bounds_server_statements_and_is_reset() {
    // One connection, so the autocommit statements below run on the transaction's connection.
    let Some((db, table)) = setup(1, "my_stmt_timeout").await else {
        return;
    };
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&db)
        .await
        .unwrap();
    let mariadb = version.contains("MariaDB");
    let var = if mariadb {
        "CAST(@@max_statement_time * 1000 AS SIGNED)"
    } else {
        "CAST(@@max_execution_time AS SIGNED)"
    };
    let inside: i64 = TransactionTemplate::new(db.clone())
        .timeout(Duration::from_secs(20))
        .execute(|_| async {
            Ok::<i64, TxError>(
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {var}")))
                    .fetch_one(&db)
                    .await?,
            )
        })
        .await
        .unwrap();
    assert!(
        inside > 15_000 && inside <= 20_000,
        "server bound {inside} ms"
    );
    let after: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {var}")))
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(
        after, 0,
        "the session bound must be reset after the transaction"
    );

    // A long statement is cut at the deadline, nothing is committed.
    let marker = format!("sleep_marker_{table}");
    let start = Instant::now();
    let r = TransactionTemplate::new(db.clone())
        .timeout(Duration::from_millis(500))
        .execute(|_| async {
            insert(&db, &table, 1).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT SLEEP(30) /* {marker} */ FROM {table}"
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
    if mariadb {
        // max_statement_time stops it on the server too.
        let mut conn = <sqlx::MySqlConnection as sqlx::Connection>::connect(&tx_tests::mysql_url())
            .await
            .unwrap();
        let started = Instant::now();
        loop {
            let running: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.processlist \
                 WHERE info LIKE CONCAT('%', ?, '%') AND id <> CONNECTION_ID()",
            )
            .bind(&marker)
            .fetch_one(&mut conn)
            .await
            .unwrap();
            if running == 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "SLEEP still running on the server"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(ids(&db, &table).await.is_empty());
    // The pool (of one) works and is not bounded any more.
    let after: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {var}")))
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(after, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_savepoint_rollback_keeps_outer_work() {
    let Some((db, table)) = setup(2, "my_nested").await else {
        return;
    };
    let (db, table) = (&db, &table);
    TransactionTemplate::new(db.clone())
        .execute(|_| async {
            insert(db, table, 1).await?;
            let inner: Result<(), TxError> = TransactionTemplate::new(db.clone())
                .propagation(Propagation::Nested)
                .execute(|status| async move {
                    assert!(status.has_savepoint());
                    insert(db, table, 2).await?;
                    insert(db, table, 1).await?; // duplicate key
                    Ok(())
                })
                .await;
            assert_eq!(mysql_number(&inner.unwrap_err()), Some(1062));
            TransactionTemplate::new(db.clone())
                .propagation(Propagation::Nested)
                .execute(|_| async { Ok::<_, TxError>(insert(db, table, 3).await?) })
                .await?;
            insert(db, table, 4).await?;
            Ok::<_, TxError>(())
        })
        .await
        .unwrap();
    assert_eq!(ids(db, table).await, vec![1, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_call_rolls_back_and_returns_connections() {
    let Some((db, table)) = setup(3, "my_cancel").await else {
        return;
    };
    let ids_seen = Arc::new(Mutex::new(Vec::<u64>::new()));
    let completion = Arc::new(Mutex::new(None));
    for in_statement in [false, true] {
        let fut = {
            let db = db.clone();
            let table = table.clone();
            let ids_seen = ids_seen.clone();
            let completion = completion.clone();
            async move {
                TransactionTemplate::new(db.clone())
                    .execute(|_| async {
                        tx_sqlx::after_completion(move |c| async move {
                            *completion.lock().unwrap() = Some(c);
                        })?;
                        insert(&db, &table, 1 + in_statement as i64).await?;
                        let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
                            .fetch_one(&db)
                            .await?;
                        ids_seen.lock().unwrap().push(id);
                        if in_statement {
                            sqlx::query("DO SLEEP(2)").execute(&db).await?;
                        } else {
                            tokio::time::sleep(Duration::from_secs(10)).await;
                        }
                        Ok::<_, TxError>(())
                    })
                    .await
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_millis(400), fut)
                .await
                .is_err()
        );
        let id = *ids_seen.lock().unwrap().last().unwrap();
        assert_eq!(
            wait_no_innodb_trx(id).await,
            0,
            "transaction left open (in_statement={in_statement})"
        );
        let (size, idle) = settle(&db).await;
        assert_eq!(size as usize, idle, "in_statement={in_statement}");
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
    // The pool still works.
    TransactionTemplate::new(db.clone())
        .execute(|_| async { Ok::<_, TxError>(insert(&db, &table, 9).await?) })
        .await
        .unwrap();
    assert_eq!(ids(&db, &table).await, vec![9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_body_rolls_back() {
    let Some((db, table)) = setup(2, "my_panic").await else {
        return;
    };
    let conn_id = Arc::new(Mutex::new(0u64));
    let handle = {
        let db = db.clone();
        let table = table.clone();
        let conn_id = conn_id.clone();
        tokio::spawn(async move {
            TransactionTemplate::new(db.clone())
                .execute(|_| async {
                    insert(&db, &table, 1).await?;
                    *conn_id.lock().unwrap() = sqlx::query_scalar("SELECT CONNECTION_ID()")
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
    assert!(handle.await.unwrap_err().is_panic());
    assert!(ids(&db, &table).await.is_empty());
    let id = *conn_id.lock().unwrap();
    assert_eq!(wait_no_innodb_trx(id).await, 0);
    let (size, idle) = settle(&db).await;
    assert_eq!(size as usize, idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlock_is_retryable_and_never_half_committed() {
    let Some((db, table)) = setup(4, "my_deadlock").await else {
        return;
    };
    for id in [1, 2] {
        insert(&db, &table, id).await.unwrap();
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let run = |first: i64, second: i64, marker: i64| {
        let db = db.clone();
        let table = table.clone();
        let barrier = barrier.clone();
        tokio::spawn(async move {
            let insert_after_failure = Arc::new(Mutex::new(None));
            let seen = insert_after_failure.clone();
            let r = TransactionTemplate::new(db.clone())
                .execute(|_| async {
                    let update = format!("UPDATE {table} SET note = 'x' WHERE id = ?");
                    sqlx::query(sqlx::AssertSqlSafe(update.clone()))
                        .bind(first)
                        .execute(&db)
                        .await?;
                    barrier.wait().await;
                    let second_update = sqlx::query(sqlx::AssertSqlSafe(update))
                        .bind(second)
                        .execute(&db)
                        .await;
                    if let Err(e) = second_update {
                        // Swallowed on purpose: the transaction must still not commit.
                        let e = TxError::from(e);
                        assert!(e.is_retryable(), "{e}");
                        assert_eq!(mysql_number(&e), Some(1213));
                        let after = insert(&db, &table, marker).await;
                        *seen.lock().unwrap() = Some(after.is_err());
                    }
                    Ok::<_, TxError>(())
                })
                .await;
            (r, insert_after_failure.lock().unwrap().take())
        })
    };
    let a = run(1, 2, 10);
    let b = run(2, 1, 20);
    let (ra, sa) = a.await.unwrap();
    let (rb, sb) = b.await.unwrap();
    // Exactly one was chosen as the deadlock victim.
    let (victim, victim_seen) = match (&ra, &rb) {
        (Err(_), Ok(())) => (ra, sa),
        (Ok(()), Err(_)) => (rb, sb),
        other => panic!("expected exactly one deadlock victim, got {other:?}"),
    };
    let e = victim.unwrap_err();
    assert!(
        matches!(
            e,
            TxError::Database {
                operation: Operation::Commit,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_retryable(), "{e}");
    // The statement after the deadlock was refused, not run in autocommit.
    assert_eq!(victim_seen, Some(true));
    assert_eq!(ids(&db, &table).await, vec![1, 2]);
}
