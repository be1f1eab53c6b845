//! `TransactionTemplate` and `RetryingTemplate`: captures moved into the body, `Send` futures
//! whatever the value and error types, the attributes a retrying template keeps, and what a
//! status reports about the transaction it runs in.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};
use tx_core::testing::NoopManager;
use tx_core::{Isolation, Propagation, TransactionTemplate, TxError};

/// `Send` but not `Sync`, as a value and as an error.
#[derive(Debug)]
struct NotSync(Cell<u32>);

impl From<TxError> for NotSync {
    fn from(_: TxError) -> Self {
        NotSync(Cell::new(0))
    }
}

fn assert_send<T: Send>(_: &T) {}

#[tokio::test]
async fn execute_moves_captures_into_the_body_once() {
    let template = TransactionTemplate::new(NoopManager::default());
    let owned = String::from("moved, not cloned");
    let r = template
        .execute(|status| async move {
            assert!(status.is_new_transaction());
            Ok::<_, TxError>(owned) // the String itself comes back out
        })
        .await;
    assert_eq!(r.unwrap(), "moved, not cloned");
}

#[tokio::test]
async fn futures_are_send_whatever_t_and_e() {
    let template = TransactionTemplate::new(NoopManager::default());
    let fut = template.execute(|_| async { Ok::<_, NotSync>(NotSync(Cell::new(1))) });
    assert_send(&fut);
    assert_eq!(fut.await.unwrap().0.get(), 1);

    let retrying = template.clone().retry(2);
    let fut = retrying.execute(|_| async { Err::<NotSync, _>(NotSync(Cell::new(2))) });
    assert_send(&fut);
    assert_eq!(fut.await.unwrap_err().0.get(), 2);
}

#[tokio::test]
async fn retrying_template_keeps_the_attributes_and_runs_once_on_success() {
    let runs = AtomicU32::new(0);
    let retrying = TransactionTemplate::new(NoopManager::default())
        .name("transfer")
        .retry(3)
        .isolation(Isolation::Serializable)
        .read_only(true);
    assert_eq!(retrying.retries(), 3);
    assert_eq!(retrying.get_definition().get_name(), "transfer");
    let r = retrying
        .execute(|status| {
            runs.fetch_add(1, Ordering::SeqCst);
            async move {
                assert_eq!(status.isolation(), Isolation::Serializable);
                assert!(status.is_read_only());
                Ok::<_, TxError>(status.name().to_owned())
            }
        })
        .await;
    assert_eq!(r.unwrap(), "transfer");
    // Not retryable: an error ends the call after one run.
    let r = retrying
        .execute(|_| {
            runs.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(TxError::UnexpectedRollback) }
        })
        .await;
    assert!(matches!(r, Err(TxError::UnexpectedRollback)));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn status_reports_the_transaction_it_runs_in() {
    let outer = TransactionTemplate::new(NoopManager::default())
        .isolation(Isolation::RepeatableRead)
        .read_only(true);
    let outer = &outer;
    outer
        .execute(|status| async move {
            assert!(status.is_read_only());
            assert_eq!(status.isolation(), Isolation::RepeatableRead);
            // A participant runs with its owner's settings, whatever it asked for; a new
            // transaction has its own; without a transaction there is nothing to report.
            let asked = |p| {
                outer
                    .clone()
                    .propagation(p)
                    .isolation(Isolation::Serializable)
                    .read_only(false)
            };
            for (scope, new, read_only, isolation) in [
                (
                    asked(Propagation::Required),
                    false,
                    true,
                    Isolation::RepeatableRead,
                ),
                (
                    asked(Propagation::RequiresNew),
                    true,
                    false,
                    Isolation::Serializable,
                ),
                (
                    outer.clone().propagation(Propagation::NotSupported),
                    false,
                    false,
                    Isolation::Default,
                ),
            ] {
                let p = scope.get_definition().get_propagation();
                scope
                    .execute(|status| async move {
                        assert_eq!(status.is_new_transaction(), new, "{p:?}");
                        assert_eq!(status.is_read_only(), read_only, "{p:?}");
                        assert_eq!(status.isolation(), isolation, "{p:?}");
                        Ok::<_, TxError>(())
                    })
                    .await?;
            }
            Ok::<_, TxError>(())
        })
        .await
        .unwrap();
}
