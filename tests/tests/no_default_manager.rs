//! `TransactionTemplate::default()` before any `set_default_manager`: `TxError::NoManager`,
//! the body never runs, nothing is written. Then, once a default manager is set, the same call
//! works.
//!
//! The default manager is process-global, so this is the only test in its binary, and both
//! steps run in order in one test function.

use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tx_sqlx::{Propagation, TransactionTemplate, TxError};
use tx_tests::reliability::AppError;

async fn tags(table: &str) -> Vec<String> {
    let mut conn = PgConnection::connect(&tx_tests::pg_url()).await.unwrap();
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT tag FROM {table} ORDER BY id"
    )))
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_default_manager_is_no_manager_until_one_is_set() {
    let Some(db) = tx_tests::pg_pool(2).await else {
        return;
    };
    let table = tx_tests::unique_table("no_default");
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (id serial PRIMARY KEY, tag text NOT NULL)"
    )))
    .execute(db.pool())
    .await
    .unwrap();
    let (dbr, t) = (&db, table.as_str());
    let insert = move |tag: &'static str| async move {
        sqlx::query(AssertSqlSafe(format!("INSERT INTO {t} (tag) VALUES ($1)")))
            .bind(tag)
            .execute(dbr)
            .await
            .map(|_| ())
    };

    // No default manager yet: every propagation fails before its body runs.
    for p in [
        Propagation::Required,
        Propagation::RequiresNew,
        Propagation::Nested,
        Propagation::Supports,
        Propagation::NotSupported,
        Propagation::Mandatory,
        Propagation::Never,
    ] {
        let ran = AtomicBool::new(false);
        let ran_ref = &ran;
        let r: Result<(), AppError> = TransactionTemplate::default()
            .propagation(p)
            .execute(|_| async move {
                ran_ref.store(true, Ordering::SeqCst);
                insert("without-manager").await?;
                Ok(())
            })
            .await;
        assert!(
            matches!(r, Err(AppError::Tx(TxError::NoManager))),
            "{p:?}: expected TxError::NoManager, got {r:?}"
        );
        assert!(!ran.load(Ordering::SeqCst), "{p:?}: the body must not run");
    }
    assert_eq!(tags(t).await, Vec::<String>::new(), "nothing written");

    // With a default manager the same call begins a transaction on it and commits.
    tx_sqlx::set_default_manager(db.clone());
    let r: Result<(), AppError> = TransactionTemplate::default()
        .execute(|status| async move {
            assert!(status.is_new_transaction());
            assert!(tx_sqlx::is_actual_transaction_active());
            insert("via-default-manager").await?;
            Ok(())
        })
        .await;
    r.unwrap();
    assert_eq!(tags(t).await, vec!["via-default-manager".to_owned()]);

    sqlx::query(AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(db.pool())
        .await
        .unwrap();
}
