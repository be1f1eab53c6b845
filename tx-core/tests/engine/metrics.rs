//! The `metrics` feature: after a known sequence of calls (commits, a rollback on error,
//! rollback-only, a timeout, a retried call, a cancelled call, with joined calls and
//! savepoints inside), a recording recorder holds exactly the expected counters and
//! histogram samples.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{RecordingManager, cancel_after, drain_until_rollback, stmt_then_wait, t};
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tx_core::{Propagation, TxError};

/// `name{label=value,...}` -> counter value or number of histogram samples.
fn snapshot(recorder: &DebuggingRecorder) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (key, _, _, value) in recorder.snapshotter().snapshot().into_vec() {
        let (kind, key) = key.into_parts();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let n = match (kind, value) {
            (MetricKind::Counter, DebugValue::Counter(n)) => n,
            (MetricKind::Histogram, DebugValue::Histogram(samples)) => {
                assert!(samples.iter().all(|s| s.0 >= 0.0), "{name}: {samples:?}");
                samples.len() as u64
            }
            other => panic!("unexpected metric {name}: {other:?}"),
        };
        out.insert(name, n);
    }
    out
}

async fn sequence(m: &RecordingManager) {
    // Two commits, one without a statement (no BEGIN: no connection held); a joined call and
    // a savepoint inside the first count nothing of their own.
    let r: Result<(), TxError> = t(m)
        .name("ok")
        .execute(|_| async {
            m.stmt("INSERT").await?;
            t(m).name("joined")
                .execute(|_| async { m.stmt("UPDATE").await })
                .await?;
            t(m).name("sp")
                .propagation(Propagation::Nested)
                .execute(|_| async { m.stmt("UPDATE").await })
                .await
        })
        .await;
    r.unwrap();
    let r: Result<(), TxError> = t(m).name("ok").execute(|_| async { Ok(()) }).await;
    r.unwrap();

    let r: Result<(), TxError> = t(m)
        .name("fail")
        .execute(|_| async {
            m.stmt("INSERT").await?;
            Err(TxError::NoTransaction)
        })
        .await;
    assert!(r.is_err());

    let r: Result<(), TxError> = t(m)
        .name("marked")
        .execute(|status| async move {
            status.set_rollback_only();
            Ok(())
        })
        .await;
    r.unwrap();

    let r: Result<(), TxError> = t(m)
        .name("slow")
        .timeout(Duration::from_millis(20))
        .execute(|_| stmt_then_wait(m, "INSERT"))
        .await;
    assert!(matches!(r, Err(TxError::Timeout)));

    let r: Result<u32, TxError> = t(m)
        .name("retry")
        .retry(3)
        .execute(|status| async move {
            m.stmt("INSERT").await?;
            if status.attempt() == 1 {
                m.serialization_failure("UPDATE").await?;
            }
            Ok(status.attempt())
        })
        .await;
    assert_eq!(r.unwrap(), 2);

    let template = t(m).name("cancel");
    let call = template.execute(|_| stmt_then_wait(m, "INSERT"));
    cancel_after(5, call).await;
    // The cancelled call completes in a spawned task.
    drain_until_rollback(m).await;
}

#[test]
fn counters_and_histograms_after_a_known_sequence() {
    let recorder = DebuggingRecorder::new();
    let m = RecordingManager::default();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(sequence(&m))
    });
    let expected: BTreeMap<String, u64> = [
        ("tx_transactions_total{name=ok,outcome=committed}", 2),
        ("tx_transactions_total{name=fail,outcome=rolled_back}", 1),
        ("tx_transactions_total{name=marked,outcome=rolled_back}", 1),
        ("tx_transactions_total{name=slow,outcome=rolled_back}", 1),
        ("tx_transactions_total{name=retry,outcome=rolled_back}", 1),
        ("tx_transactions_total{name=retry,outcome=committed}", 1),
        ("tx_transactions_total{name=cancel,outcome=rolled_back}", 1),
        ("tx_rollbacks_total{cause=error,name=fail}", 1),
        ("tx_rollbacks_total{cause=rollback_only,name=marked}", 1),
        ("tx_rollbacks_total{cause=timeout,name=slow}", 1),
        ("tx_rollbacks_total{cause=error,name=retry}", 1),
        ("tx_rollbacks_total{cause=cancelled,name=cancel}", 1),
        ("tx_timeouts_total{name=slow}", 1),
        ("tx_retries_total{name=retry}", 1),
        ("tx_transaction_duration_seconds{name=ok}", 2),
        ("tx_transaction_duration_seconds{name=fail}", 1),
        ("tx_transaction_duration_seconds{name=marked}", 1),
        ("tx_transaction_duration_seconds{name=slow}", 1),
        ("tx_transaction_duration_seconds{name=retry}", 2),
        ("tx_transaction_duration_seconds{name=cancel}", 1),
        // Only transactions that sent BEGIN held a connection ("marked" and the empty "ok"
        // never did).
        ("tx_connection_hold_seconds{name=ok}", 1),
        ("tx_connection_hold_seconds{name=fail}", 1),
        ("tx_connection_hold_seconds{name=slow}", 1),
        ("tx_connection_hold_seconds{name=retry}", 2),
        ("tx_connection_hold_seconds{name=cancel}", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(snapshot(&recorder), expected);
}
