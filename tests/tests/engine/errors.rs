//! The error story on PostgreSQL: what a caller can tell from the error of a transactional
//! call, with the application error type the README teaches (`Tx(TxError)` plus a
//! `From<sqlx::Error>` that goes through `TxError`) and with the other common shape (a
//! `Db(sqlx::Error)` variant read through `SqlxErrorExt`). A deadline hit while a statement
//! runs is the timeout, a serialization failure that ran out of retries is retryable and
//! carries its SQLSTATE, a constraint violation carries its own.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tx_sqlx::PgTxPool;
use tx_sqlx::prelude::*;

/// The README's pattern.
#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error("out of stock")]
    OutOfStock,
    #[error(transparent)]
    Tx(#[from] TxError),
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Tx(e.into())
    }
}

/// A `Db` variant that keeps the driver's error, as many services have.
#[derive(Debug, thiserror::Error)]
enum DbAppError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Tx(#[from] TxError),
}

impl DbAppError {
    fn is_timeout(&self) -> bool {
        match self {
            DbAppError::Db(e) => e.is_timeout(),
            DbAppError::Tx(e) => matches!(e, TxError::Timeout),
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            DbAppError::Db(e) => e.is_retryable(),
            DbAppError::Tx(e) => e.is_retryable(),
        }
    }

    fn sqlstate(&self) -> Option<&str> {
        match self {
            DbAppError::Db(e) => e.sqlstate(),
            DbAppError::Tx(e) => e.sqlstate(),
        }
    }
}

struct Stock {
    db: PgTxPool,
    table: String,
}

impl Stock {
    async fn setup(prefix: &str) -> Option<Stock> {
        let db = tx_tests::pg_pool(3).await?;
        let table = tx_tests::unique_table(prefix);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {table}; \
             CREATE TABLE {table} (id INT PRIMARY KEY, units BIGINT NOT NULL); \
             INSERT INTO {table} VALUES (1, 0)"
        )))
        .execute(db.pool())
        .await
        .unwrap();
        Some(Stock { db, table })
    }

    fn sql(&self, text: &str) -> sqlx::AssertSqlSafe<String> {
        sqlx::AssertSqlSafe(text.replace("{t}", &self.table))
    }

    /// Runs `text` (`{t}` is the table) through `&TxPool`; the number of rows it changed.
    async fn exec(&self, text: &str) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(self.sql(text)).execute(&self.db).await?;
        Ok(done.rows_affected())
    }

    /// Adds a unit, then runs a statement that takes 3 s on the server.
    async fn bump_then_sleep(&self) -> Result<i64, sqlx::Error> {
        self.exec("UPDATE {t} SET units = units + 1 WHERE id = 1")
            .await?;
        sqlx::query_scalar("SELECT count(*) FROM pg_sleep(3)")
            .fetch_one(&self.db)
            .await
    }

    /// A statement still running when the 300 ms deadline passes.
    #[transactional(manager = self.db, timeout = "300ms")]
    async fn slow_count(&self) -> Result<i64, AppError> {
        Ok(self.bump_then_sleep().await?)
    }

    /// Reads the row, lets another session change it, then writes it: under SERIALIZABLE
    /// every run fails with 40001 (could not serialize access due to concurrent update).
    #[transactional(manager = self.db, isolation = Serializable, retry = 2)]
    async fn always_conflicting(&self, runs: &AtomicU32) -> Result<(), AppError> {
        runs.fetch_add(1, Ordering::SeqCst);
        self.conflict().await?;
        Ok(())
    }

    async fn conflict(&self) -> Result<(), sqlx::Error> {
        let _: i64 = sqlx::query_scalar(self.sql("SELECT units FROM {t} WHERE id = 1"))
            .fetch_one(&self.db)
            .await?;
        // Another session, in autocommit, on its own connection.
        sqlx::query(self.sql("UPDATE {t} SET units = units + 1 WHERE id = 1"))
            .execute(self.db.pool())
            .await?;
        self.exec("UPDATE {t} SET units = units + 100 WHERE id = 1")
            .await?;
        Ok(())
    }

    #[transactional(manager = self.db)]
    async fn insert_duplicate(&self) -> Result<(), AppError> {
        self.exec("INSERT INTO {t} VALUES (1, 5)").await?;
        Ok(())
    }

    #[transactional(manager = self.db)]
    async fn take_one(&self) -> Result<(), AppError> {
        let moved = self
            .exec("UPDATE {t} SET units = units - 1 WHERE id = 1 AND units >= 1")
            .await?;
        if moved == 0 {
            return Err(AppError::OutOfStock);
        }
        Ok(())
    }

    async fn units(&self) -> i64 {
        sqlx::query_scalar(self.sql("SELECT units FROM {t} WHERE id = 1"))
            .fetch_one(self.db.pool())
            .await
            .unwrap()
    }

    /// Asserts the row holds `units`, then drops the table.
    async fn finish(&self, units: i64) {
        assert_eq!(self.units().await, units);
        self.drop_table().await;
    }

    async fn drop_table(&self) {
        sqlx::raw_sql(self.sql("DROP TABLE IF EXISTS {t}"))
            .execute(self.db.pool())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_deadline_hit_inside_a_statement_is_the_timeout() {
    let Some(s) = Stock::setup("err_deadline").await else {
        return;
    };
    let r = s.slow_count().await;
    assert!(
        matches!(r, Err(AppError::Tx(TxError::Timeout))),
        "expected AppError::Tx(TxError::Timeout), got {r:?}"
    );
    assert_eq!(
        s.units().await,
        0,
        "the timed-out transaction was rolled back"
    );

    // The same call with a `Db(sqlx::Error)` variant: the extension trait still finds it.
    let r: Result<i64, DbAppError> = TransactionTemplate::new(s.db.clone())
        .timeout(Duration::from_millis(300))
        .execute(|_| async { Ok(s.bump_then_sleep().await?) })
        .await;
    let e = r.expect_err("the deadline passed");
    assert!(e.is_timeout(), "expected a timeout, got {e:?}");
    assert!(!e.is_retryable(), "{e:?}");
    s.finish(0).await;
}

#[tokio::test]
async fn an_exhausted_serialization_retry_is_retryable_with_its_sqlstate() {
    let Some(s) = Stock::setup("err_retry").await else {
        return;
    };
    // `retry = 2` on the attribute: three runs, each aborted by the server.
    let runs = AtomicU32::new(0);
    let r = s.always_conflicting(&runs).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    match &r {
        Err(AppError::Tx(e)) => {
            assert!(e.is_retryable(), "{e:?}");
            assert_eq!(e.sqlstate(), Some("40001"), "{e:?}");
            assert!(matches!(e, TxError::Database { .. }), "{e:?}");
        }
        other => panic!("expected AppError::Tx(retryable), got {other:?}"),
    }
    // Only the other session's three increments committed.
    assert_eq!(s.units().await, 3);

    // `retry(1)` on a template, with a `Db(sqlx::Error)` error type: two runs.
    let runs = AtomicU32::new(0);
    let r: Result<(), DbAppError> = TransactionTemplate::new(s.db.clone())
        .isolation(Isolation::Serializable)
        .retry(1)
        .execute(|_| {
            runs.fetch_add(1, Ordering::SeqCst);
            async { Ok(s.conflict().await?) }
        })
        .await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let e = r.expect_err("every run conflicts");
    assert!(matches!(e, DbAppError::Db(_)), "{e:?}");
    assert!(e.is_retryable(), "{e:?}");
    assert!(!e.is_timeout(), "{e:?}");
    assert_eq!(e.sqlstate(), Some("40001"));
    s.finish(5).await;
}

#[tokio::test]
async fn a_constraint_violation_carries_its_sqlstate_and_business_errors_stay_apart() {
    let Some(s) = Stock::setup("err_unique").await else {
        return;
    };
    match s.insert_duplicate().await {
        Err(AppError::Tx(e)) => {
            assert_eq!(e.sqlstate(), Some("23505"), "{e:?}");
            assert!(!e.is_retryable(), "{e:?}");
            let source = std::error::Error::source(&e).expect("the driver error");
            assert!(source.downcast_ref::<sqlx::Error>().is_some(), "{source:?}");
        }
        other => panic!("expected a unique violation, got {other:?}"),
    }
    assert!(matches!(s.take_one().await, Err(AppError::OutOfStock)));
    s.drop_table().await;
}
