//! Engine tests without a database: a recording manager logs every physical operation, so
//! the tests see exactly what the engine sends (deferred BEGIN, savepoints, completion order).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{Phases, RecordingManager, around_commit, cancel_after, committed, t};
use tx_core::manager::TransactionManager;
use tx_core::{Completion, Propagation, TxError};

#[tokio::test]
async fn empty_call_sends_nothing() {
    let m = RecordingManager::default();
    let r: Result<u8, TxError> = t(&m).execute(|_| async { Ok(1) }).await;
    assert_eq!(r.unwrap(), 1);
    assert!(m.take().is_empty());
}

#[tokio::test]
async fn begin_is_deferred_to_first_statement_and_commit_follows() {
    let sent = committed(async |m| {
        m.push("body");
        m.stmt("a").await?;
        m.stmt("b").await
    })
    .await;
    assert_eq!(
        sent,
        ["body", "BEGIN Default", "STMT a", "STMT b", "COMMIT"]
    );
}

#[tokio::test]
async fn nested_failure_rolls_back_to_its_savepoint_only() {
    assert_eq!(
        committed(async |m| {
            m.stmt("outer").await?;
            let inner: Result<(), TxError> = t(m)
                .propagation(Propagation::Nested)
                .execute(|s| async move {
                    assert!(s.has_savepoint());
                    m.stmt("inner").await?;
                    Err(TxError::Timeout)
                })
                .await;
            assert!(inner.is_err());
            // A Nested scope that runs no statement sends no SAVEPOINT.
            t(m).propagation(Propagation::Nested)
                .execute(|_| async { Ok::<_, TxError>(()) })
                .await?;
            m.stmt("after").await
        })
        .await,
        [
            "BEGIN Default",
            "STMT outer",
            "SAVEPOINT tx_sp_1",
            "STMT inner",
            "ROLLBACK TO tx_sp_1",
            "RELEASE tx_sp_1",
            "STMT after",
            "COMMIT"
        ]
    );
}

#[tokio::test]
async fn requires_new_suspends_and_commits_first_not_supported_runs_in_autocommit() {
    assert_eq!(
        committed(async |m| {
            m.stmt("outer").await?;
            t(m).propagation(Propagation::RequiresNew)
                .read_only(true)
                .execute(|s| async move {
                    assert!(s.is_new_transaction());
                    m.stmt("inner").await
                })
                .await?;
            t(m).propagation(Propagation::NotSupported)
                .execute(|_| async {
                    assert!(!tx_core::is_actual_transaction_active());
                    m.stmt("plain").await
                })
                .await?;
            m.stmt("resumed").await
        })
        .await,
        [
            "BEGIN Default",
            "STMT outer",
            "BEGIN Default READ ONLY",
            "STMT inner",
            "COMMIT",
            "AUTO plain",
            "STMT resumed",
            "COMMIT"
        ]
    );
}

#[tokio::test]
async fn participant_failure_makes_owner_commit_an_unexpected_rollback() {
    let m = RecordingManager::default();
    let r: Result<(), TxError> = t(&m)
        .execute(|_| async {
            m.stmt("outer").await?;
            let _ = t(&m)
                .execute(|s| async move {
                    assert!(!s.is_new_transaction());
                    Err::<(), _>(TxError::Timeout)
                })
                .await;
            Ok(())
        })
        .await;
    assert!(matches!(r, Err(TxError::UnexpectedRollback)), "{r:?}");
    assert_eq!(m.take(), ["BEGIN Default", "STMT outer", "ROLLBACK"]);
}

#[tokio::test(start_paused = true)]
async fn deadline_rolls_back_a_body_still_waiting() {
    let m = RecordingManager::default();
    let started = tokio::time::Instant::now();
    let r: Result<(), TxError> = t(&m)
        .timeout(Duration::from_millis(300))
        .execute(|_| async {
            m.stmt("a").await?;
            tokio::time::sleep(Duration::from_secs(60)).await;
            m.stmt("never").await
        })
        .await;
    assert!(matches!(r, Err(TxError::Timeout)), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(m.take(), ["BEGIN Default", "STMT a", "ROLLBACK"]);
}

#[tokio::test]
async fn cancelled_call_rolls_back_and_hooks_see_rolled_back() {
    let m = RecordingManager::default();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let template = t(&m);
    let fut = template.execute(|_| async {
        m.stmt("a").await?;
        tx_core::after_completion(move |c: Completion| async move {
            let _ = tx.lock().unwrap().take().unwrap().send(c);
        })?;
        std::future::pending::<()>().await;
        Ok::<_, TxError>(())
    });
    cancel_after(50, fut).await;
    let c = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c, Completion::RolledBack);
    assert_eq!(m.take(), ["BEGIN Default", "STMT a", "ROLLBACK"]);
}

#[tokio::test]
async fn panic_rolls_back_and_continues() {
    let m = RecordingManager::default();
    let m2 = m.clone();
    let join = tokio::spawn(async move {
        t(&m2)
            .execute(|_| async {
                m2.stmt("a").await?;
                if m2.key() == m2.key() {
                    panic!("boom");
                }
                Ok::<_, TxError>(())
            })
            .await
    })
    .await;
    assert!(join.unwrap_err().is_panic());
    assert_eq!(m.take(), ["BEGIN Default", "STMT a", "ROLLBACK"]);
}

#[tokio::test]
async fn hooks_run_in_phase_order_around_commit() {
    let sent = committed(async |m| {
        m.stmt("a").await?;
        tx_core::register_synchronization(Phases::new("outer", m))?;
        t(m).execute(|_| async { tx_core::register_synchronization(Phases::new("inner", m)) })
            .await
    })
    .await;
    assert_eq!(sent[..2], ["BEGIN Default", "STMT a"]);
    assert_eq!(sent[2..], around_commit(&["outer", "inner"]));
}

#[tokio::test]
async fn misuse_gives_typed_errors() {
    let m = RecordingManager::default();
    let r: Result<(), TxError> = t(&m)
        .propagation(Propagation::Mandatory)
        .execute(|_| async { Ok(()) })
        .await;
    assert!(matches!(r, Err(TxError::NoTransaction)));
    let r: Result<(), TxError> = t(&m)
        .execute(|_| async {
            t(&m)
                .propagation(Propagation::Never)
                .execute(|_| async { Ok(()) })
                .await
        })
        .await;
    assert!(matches!(r, Err(TxError::ExistingTransaction)));
    assert!(matches!(
        tx_core::after_commit(async {}),
        Err(TxError::NoTransaction)
    ));
    assert!(m.take().is_empty());
}

/// `#[transactional]` in a crate that depends on tx-core alone (no tx-sqlx): the attribute
/// resolves its runtime through `tx_core`, and the manager comes from an expression.
mod macro_on_tx_core_alone {
    use super::*;

    struct Service {
        db: RecordingManager,
    }

    impl Service {
        #[tx_core::transactional(manager = self.db, propagation = RequiresNew, read_only)]
        async fn report(&self) -> Result<usize, TxError> {
            assert!(tx_core::current_status().unwrap().is_new_transaction());
            self.db.stmt("SELECT").await?;
            Ok(1)
        }

        #[tx_core::transactional(manager = self.db)]
        async fn fail(&self) -> Result<(), TxError> {
            self.db.stmt("INSERT").await?;
            Err(TxError::NoTransaction)
        }
    }

    #[tokio::test]
    async fn attribute_works_with_tx_core_only() {
        let s = Service {
            db: RecordingManager::default(),
        };
        assert_eq!(s.report().await.unwrap(), 1);
        assert!(s.fail().await.is_err());
        assert_eq!(
            s.db.take(),
            [
                "BEGIN Default READ ONLY",
                "STMT SELECT",
                "COMMIT",
                "BEGIN Default",
                "STMT INSERT",
                "ROLLBACK"
            ]
        );
    }
}
