// The cases of the test-transaction tests, compiled once per backend (see
// `testing_rollback.rs`): `Db` is the pool type, `ID_COLUMN` its auto-increment key and
// `sql(..)` adapts the `$1` placeholders.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use tokio::sync::Barrier;
use tx_sqlx::prelude::*;
use tx_sqlx::{after_commit, after_completion, testing};

/// What the hooks saw, in order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A new table named after `prefix`: `(id, kind, n)`, where `n` may not go below zero.
async fn create_table(db: &Db, prefix: &str) -> String {
    let t = tx_tests::unique_table(prefix);
    sqlx::query(sql(&format!(
        "CREATE TABLE {t} ({ID_COLUMN}, kind VARCHAR(20) NOT NULL, n BIGINT NOT NULL CHECK (n >= 0))"
    )))
    .execute(db)
    .await
    .unwrap();
    t
}

async fn drop_table(db: &Db, t: &str) {
    sqlx::query(sql(&format!("DROP TABLE {t}")))
        .execute(db)
        .await
        .unwrap();
}

async fn insert(db: &Db, t: &str, kind: &str, n: i64) -> Result<(), TxError> {
    sqlx::query(sql(&format!("INSERT INTO {t} (kind, n) VALUES ($1, $2)")))
        .bind(kind)
        .bind(n)
        .execute(db)
        .await?;
    Ok(())
}

async fn count(db: &Db, t: &str, kind: &str) -> i64 {
    sqlx::query_scalar(sql(&format!("SELECT COUNT(*) FROM {t} WHERE kind = $1")))
        .bind(kind)
        .fetch_one(db)
        .await
        .unwrap()
}

async fn count_all(db: &Db, t: &str) -> i64 {
    sqlx::query_scalar(sql(&format!("SELECT COUNT(*) FROM {t}")))
        .fetch_one(db)
        .await
        .unwrap()
}

/// The audit entry of an order, in a transaction of its own.
#[transactional(manager = db, propagation = RequiresNew)]
async fn audit(db: &Db, t: &str, log: &Log) -> Result<(), TxError> {
    assert!(tx_sqlx::current_status().unwrap().is_new_transaction());
    insert(db, t, "audit", 1).await?;
    let log = log.clone();
    after_commit(async move { log.push("audit committed") })?;
    Ok(())
}

/// A statistics write that runs without a transaction.
#[transactional(manager = db, propagation = NotSupported)]
async fn statistics(db: &Db, t: &str, log: &Log) -> Result<(), TxError> {
    insert(db, t, "stats", 1).await?;
    let log = log.clone();
    after_commit(async move { log.push("stats committed") })?;
    Ok(())
}

/// Joins the caller's transaction; fails when `fail`.
#[transactional(manager = db, propagation = Mandatory)]
async fn debit(db: &Db, t: &str, fail: bool) -> Result<(), TxError> {
    insert(db, t, "debit", 1).await?;
    if fail {
        // A statement that fails on the server (CHECK violation).
        insert(db, t, "debit", -1).await?;
    }
    Ok(())
}

/// The service under test: an order with its audit, statistics and debit.
#[transactional(manager = db)]
async fn place_order(db: &Db, t: &str, log: &Log, fail: bool) -> Result<(), TxError> {
    assert!(tx_sqlx::current_status().unwrap().is_new_transaction());
    insert(db, t, "order", 1).await?;
    audit(db, t, log).await?;
    statistics(db, t, log).await?;
    let hooks = log.clone();
    after_completion(move |c: Completion| async move { hooks.push(format!("order {c:?}")) })?;
    debit(db, t, fail).await?;
    Ok(())
}

/// Swallows the failure of a participant: the transaction is rollback-only all the same.
#[transactional(manager = db)]
async fn place_order_ignoring_debit(db: &Db, t: &str) -> Result<(), TxError> {
    insert(db, t, "order", 1).await?;
    let _ = debit(db, t, true).await;
    Ok(())
}

/// Everything the code under test writes is visible in the test and gone after it; hooks run
/// where the scopes that own them would have committed.
async fn writes_are_visible_then_gone(db: Db) {
    let t = create_table(&db, "trb_visible").await;
    let log = Log::default();
    testing::rollback(&db, || async {
        insert(&db, &t, "body", 1).await?;
        place_order(&db, &t, &log, false).await?;
        log.push("returned");
        // The RequiresNew and NotSupported scopes' rows are in the test transaction.
        for kind in ["body", "order", "audit", "stats", "debit"] {
            assert_eq!(count(&db, &t, kind).await, 1, "{kind}");
        }
        Ok::<_, TxError>(())
    })
    .await
    .unwrap();
    assert_eq!(
        log.take(),
        [
            "audit committed",
            "stats committed",
            "order Committed",
            "returned"
        ]
    );
    assert_eq!(
        count_all(&db, &t).await,
        0,
        "the test transaction rolled back"
    );
    drop_table(&db, &t).await;
}

/// A failing service rolls back to its savepoint: its rows (and those of the RequiresNew and
/// NotSupported scopes inside it) are gone, its after_commit hooks never run, and the test
/// transaction goes on, also on PostgreSQL after a failed statement.
async fn failures_roll_back_to_their_savepoint(db: Db) {
    let t = create_table(&db, "trb_fail").await;
    let log = Log::default();
    testing::rollback(&db, || async {
        insert(&db, &t, "body", 1).await?;
        let err = place_order(&db, &t, &log, true).await.unwrap_err();
        assert!(matches!(err, TxError::Database { .. }), "{err:?}");
        // The audit and statistics scopes completed before the debit failed.
        assert_eq!(
            log.take(),
            ["audit committed", "stats committed", "order RolledBack"]
        );
        // Their savepoints were inside the order's, so, unlike in production, their rows
        // went with it (the documented limit of one test transaction).
        for kind in ["order", "audit", "stats", "debit"] {
            assert_eq!(count(&db, &t, kind).await, 0, "{kind}");
        }
        assert_eq!(count(&db, &t, "body").await, 1);

        // A swallowed participant failure still rolls the owner back.
        let err = place_order_ignoring_debit(&db, &t).await.unwrap_err();
        assert!(matches!(err, TxError::UnexpectedRollback), "{err:?}");
        assert_eq!(count(&db, &t, "order").await, 0);

        // Mandatory has no transaction to join in the test body, as in production.
        let err = debit(&db, &t, false).await.unwrap_err();
        assert!(matches!(err, TxError::NoTransaction), "{err:?}");

        // The test transaction is still usable.
        place_order(&db, &t, &log, false).await?;
        assert_eq!(count(&db, &t, "order").await, 1);
        Ok::<_, TxError>(())
    })
    .await
    .unwrap();
    assert_eq!(count_all(&db, &t).await, 0);
    drop_table(&db, &t).await;
}

/// A panic (a failed assertion) in the body rolls back, and the panic goes on.
async fn panic_rolls_back(db: Db) {
    let t = create_table(&db, "trb_panic").await;
    let log = Log::default();
    let caught = AssertUnwindSafe(testing::rollback(&db, || async {
        place_order(&db, &t, &log, false).await?;
        assert_eq!(
            count(&db, &t, "order").await,
            2,
            "deliberately failing assertion"
        );
        Ok::<_, TxError>(())
    }))
    .catch_unwind()
    .await;
    let panic = caught.expect_err("the assertion's panic goes on");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("deliberately failing"), "{message}");
    assert_eq!(count_all(&db, &t).await, 0, "rolled back after the panic");
    drop_table(&db, &t).await;
}

/// Two test transactions at once do not see each other's rows.
async fn parallel_tests_are_isolated(db: Db) {
    let t = Arc::new(create_table(&db, "trb_par").await);
    let barrier = Arc::new(Barrier::new(2));
    let one_test = |kind: &'static str, rows: i64| {
        let (db, t, barrier) = (db.clone(), t.clone(), barrier.clone());
        tokio::spawn(async move {
            let log = Log::default();
            testing::rollback(&db, || async {
                for _ in 0..rows {
                    insert(&db, &t, kind, 1).await?;
                }
                place_order(&db, &t, &log, false).await?;
                barrier.wait().await; // both have written
                let mine = count(&db, &t, kind).await;
                let orders = count(&db, &t, "order").await;
                let all = count_all(&db, &t).await;
                barrier.wait().await; // both have counted
                Ok::<_, TxError>((mine, orders, all))
            })
            .await
        })
    };
    let (a, b) = tokio::join!(one_test("a", 2), one_test("b", 3));
    // Each sees its own rows and its own order (order, audit, stats, debit), nothing else.
    assert_eq!(a.unwrap().unwrap(), (2, 1, 2 + 4));
    assert_eq!(b.unwrap().unwrap(), (3, 1, 3 + 4));
    assert_eq!(count_all(&db, &t).await, 0);
    drop_table(&db, &t).await;
}

/// A gift in a `Nested` scope of the order: a savepoint inside the order's savepoint.
#[transactional(manager = db, propagation = Nested)]
async fn gift(db: &Db, t: &str, fail: bool) -> Result<(), TxError> {
    assert!(tx_sqlx::current_status().unwrap().has_savepoint());
    insert(db, t, "gift", 1).await?;
    if fail {
        insert(db, t, "gift", -1).await?;
    }
    Ok(())
}

#[transactional(manager = db)]
async fn order_with_gift(db: &Db, t: &str, fail_gift: bool) -> Result<bool, TxError> {
    insert(db, t, "order", 1).await?;
    Ok(gift(db, t, fail_gift).await.is_ok())
}

/// A scope without a transaction in the body completes its own hooks.
#[transactional(manager = db, propagation = Supports)]
async fn report(db: &Db, t: &str, log: &Log) -> Result<i64, TxError> {
    let log = log.clone();
    after_commit(async move { log.push("report done") })?;
    Ok(count_all(db, t).await)
}

/// `Nested` inside an emulated transaction, `Supports` in the body, a test transaction inside
/// another, and a dropped test future.
async fn scopes_inside_the_test(db: Db) {
    let t = create_table(&db, "trb_scopes").await;
    let log = Log::default();
    testing::rollback(&db, || async {
        // The failed gift rolls back to its own savepoint; the order stays.
        assert!(!order_with_gift(&db, &t, true).await?);
        assert_eq!(
            (count(&db, &t, "order").await, count(&db, &t, "gift").await),
            (1, 0)
        );
        assert!(order_with_gift(&db, &t, false).await?);
        assert_eq!(
            (count(&db, &t, "order").await, count(&db, &t, "gift").await),
            (2, 1)
        );

        assert_eq!(report(&db, &t, &log).await?, 3);
        assert_eq!(log.take(), ["report done"]);

        // A test transaction inside this one: a savepoint, always rolled back to.
        testing::rollback(&db, || async {
            insert(&db, &t, "inner", 1).await?;
            assert_eq!(count_all(&db, &t).await, 4);
            Ok::<_, TxError>(())
        })
        .await?;
        assert_eq!(count(&db, &t, "inner").await, 0);
        Ok::<_, TxError>(())
    })
    .await
    .unwrap();

    // A test whose future is dropped mid-way (a test timeout) rolls back too.
    let reached = tokio::sync::Notify::new();
    let (done, completed) = tokio::sync::oneshot::channel();
    let dropped = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        testing::rollback(&db, || async {
            insert(&db, &t, "dropped", 1).await?;
            after_completion(move |c: Completion| async move {
                let _ = done.send(c);
            })?;
            reached.notify_one();
            std::future::pending::<()>().await;
            Ok::<_, TxError>(())
        }),
    );
    let (timed_out, ()) = tokio::join!(dropped, reached.notified());
    assert!(timed_out.is_err());
    assert_eq!(completed.await.unwrap(), Completion::RolledBack);
    assert_eq!(count_all(&db, &t).await, 0);
    drop_table(&db, &t).await;
}

/// A gift that is cancelled after its insert (its caller stops waiting for it).
#[transactional(manager = db, propagation = Nested)]
async fn stuck_gift(db: &Db, t: &str, inserted: &tokio::sync::Notify) -> Result<(), TxError> {
    insert(db, t, "gift", 1).await?;
    inserted.notify_one();
    std::future::pending::<()>().await;
    Ok(())
}

/// An order whose gift is cancelled mid-way; it runs no statement afterwards, so its own
/// savepoint is released right after the gift's was abandoned.
#[transactional(manager = db, propagation = Nested)]
async fn order_with_cancelled_gift(db: &Db, t: &str) -> Result<(), TxError> {
    insert(db, t, "order", 1).await?;
    let inserted = tokio::sync::Notify::new();
    tokio::select! {
        _ = stuck_gift(db, t, &inserted) => unreachable!("the gift never finishes"),
        () = inserted.notified() => {}
    }
    Ok(())
}

/// The work of a scope cancelled inside a savepoint scope is undone when that savepoint is
/// released: inside a test transaction (an emulated transaction) and in a real one.
async fn cancelled_scopes_are_undone(db: Db) {
    let t = create_table(&db, "trb_cancel").await;
    testing::rollback(&db, || async {
        order_with_cancelled_gift(&db, &t).await?;
        assert_eq!(
            (count(&db, &t, "order").await, count(&db, &t, "gift").await),
            (1, 0)
        );
        Ok::<_, TxError>(())
    })
    .await
    .unwrap();
    assert_eq!(count_all(&db, &t).await, 0);

    TransactionTemplate::new(db.clone())
        .execute(|_| async { order_with_cancelled_gift(&db, &t).await })
        .await
        .unwrap();
    assert_eq!(
        (count(&db, &t, "order").await, count(&db, &t, "gift").await),
        (1, 0),
        "the order committed without the cancelled gift"
    );
    drop_table(&db, &t).await;
}

/// Swallows the failure of its own statement and returns `Ok`.
#[transactional(manager = db)]
async fn order_swallowing_a_failure(db: &Db, t: &str) -> Result<(), TxError> {
    insert(db, t, "order", 1).await?;
    let _ = insert(db, t, "order", -1).await;
    Ok(())
}

/// A scope that swallowed a failed statement ends in the test as it would in production: on
/// PostgreSQL (which aborted the transaction) with an error and nothing kept, elsewhere with
/// the rows that succeeded; either way the test transaction goes on.
async fn a_swallowed_failure_ends_as_in_production(db: Db) {
    let t = create_table(&db, "trb_swallow").await;
    let in_test = testing::rollback(&db, || async {
        let ok = order_swallowing_a_failure(&db, &t).await.is_ok();
        let orders = count(&db, &t, "order").await;
        insert(&db, &t, "body", 1).await?;
        Ok::<_, TxError>((ok, orders))
    })
    .await
    .unwrap();
    assert_eq!(count_all(&db, &t).await, 0);
    let for_real = order_swallowing_a_failure(&db, &t).await.is_ok();
    assert_eq!(in_test, (for_real, count(&db, &t, "order").await));
    drop_table(&db, &t).await;
}
