//! tx-sqlx on MariaDB/MySQL: the backend contract, and what only MariaDB shows: isolation and
//! read-only as InnoDB reports them and what each level lets a transaction see, the deadline
//! as the session's statement time limit (and its reset), deadlocks.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use sqlx::Row;
use sqlx::mysql::MySqlDatabaseError;
use tx_sqlx::MySqlTxPool;
use tx_sqlx::prelude::*;

use crate::contract::{
    BoxFut, ContractDb, assert_commit_failed, assert_deadline_cuts, assert_isolation_applied,
    backend_contract, database_error, same_on_every_database, server_methods, table_functions,
};

backend_contract!(MySqlDb);
table_functions!(
    MySqlTxPool,
    "?",
    tx_tests::mysql_pool,
    "my",
    "DROP TABLE IF EXISTS {table}; \
     CREATE TABLE {table} (id BIGINT PRIMARY KEY, note TEXT) ENGINE=InnoDB"
);

/// The MySQL error number behind `e`, if any.
fn mysql_number(e: &TxError) -> Option<u16> {
    database_error(e)
        .and_then(|db| db.try_downcast_ref::<MySqlDatabaseError>())
        .map(|m| m.number())
}

/// A MariaDB/MySQL pool and its test table.
#[derive(Clone)]
pub struct MySqlDb {
    db: MySqlTxPool,
    table: String,
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

impl ContractDb for MySqlDb {
    same_on_every_database!(MySqlTxPool, sqlx::MySql);
    server_methods!("SELECT CONNECTION_ID()" as u64, "DO SLEEP(2)");

    fn transaction_left(&self, session: i64, _: Duration) -> BoxFut<'_, Option<String>> {
        let id = u64::try_from(session).expect("a connection id");
        async move {
            let n = wait_no_innodb_trx(id).await;
            (n != 0).then(|| format!("InnoDB shows {n} transaction(s) of connection {id}"))
        }
        .boxed()
    }

    fn is_duplicate_key(e: &TxError) -> bool {
        mysql_number(e) == Some(1062)
    }

    fn is_read_only_violation(e: &TxError) -> bool {
        // ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
        mysql_number(e) == Some(1792)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_levels_are_applied() {
    let Some((db, table)) = setup(2, "iso").await else {
        return;
    };
    let (db, table) = (&db, &table);
    let default = Isolation::RepeatableRead;
    assert_isolation_applied(
        db,
        str::to_owned,
        default,
        |expected, read_only| async move {
            // Touch InnoDB so the transaction is registered, then read back what the server runs
            // it with.
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(db)
                .await?;
            // information_schema.innodb_trx is a cache refreshed at most every 100 ms, and may
            // still show this connection's previous transaction: poll until it shows the expected
            // settings, for at most 20 reads. A transaction begun with the wrong settings never
            // shows them, and the assertions report what it showed last.
            let mut last = None;
            for _ in 0..20 {
                sqlx::query("DO SLEEP(0.12)").execute(db).await?;
                let row = sqlx::query(
                    "SELECT trx_isolation_level, CAST(trx_is_read_only AS SIGNED) \
                 FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = CONNECTION_ID()",
                )
                .fetch_optional(db)
                .await?;
                if let Some(row) = row {
                    let seen: (String, bool) = match row.get::<i64, _>(1) {
                        0 => (row.get(0), false),
                        1 => (row.get(0), true),
                        other => panic!("trx_is_read_only = {other}"),
                    };
                    let done = seen.0 == expected && seen.1 == read_only;
                    last = Some(seen);
                    if done {
                        break;
                    }
                }
            }
            Ok(last.expect("transaction never shown in innodb_trx"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_changes_what_the_transaction_sees() {
    let Some((db, table)) = setup(3, "iso_seen").await else {
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
async fn deadline_bounds_server_statements_and_is_reset() {
    // One connection, so the autocommit statements below run on the transaction's connection.
    let Some((db, table)) = setup(1, "stmt_timeout").await else {
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
    assert_deadline_cuts(&db, Duration::from_millis(500), || async {
        insert(&db, &table, 1).await?;
        let sleep = format!("SELECT SLEEP(30) /* {marker} */ FROM {table}");
        sqlx::query(sqlx::AssertSqlSafe(sleep)).execute(&db).await?;
        Ok(())
    })
    .await;
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
async fn deadlock_is_retryable_and_never_half_committed() {
    let Some((db, table)) = setup(4, "deadlock").await else {
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
    assert_commit_failed(&e);
    assert!(e.is_retryable(), "{e}");
    // The statement after the deadlock was refused, not run in autocommit.
    assert_eq!(victim_seen, Some(true));
    assert_eq!(ids(&db, &table).await, vec![1, 2]);
}
