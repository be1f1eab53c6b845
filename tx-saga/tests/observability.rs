//! What an operator sees: a `saga_step` tracing span per attempt carrying the saga id, step,
//! direction and outcome; and, with feature `metrics`, counters of sagas started, completed,
//! compensated and stuck, and a histogram of step durations.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tx_saga::{Saga, SagaStatus, StepContext, StepError, StepOptions};

use common::*;

/// Collects what the fmt subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every metric recorded since the last look: its name, its labels (`key=value`) and its value
/// (a counter's count, a histogram's number of samples).
#[cfg(feature = "metrics")]
fn recorded(snapshotter: &metrics_util::debugging::Snapshotter) -> Vec<(String, Vec<String>, u64)> {
    use metrics_util::debugging::DebugValue;
    let metric = |(key, _, _, value): (metrics_util::CompositeKey, _, _, DebugValue)| {
        let key = key.key();
        let labels = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let n = match value {
            DebugValue::Counter(n) => n,
            DebugValue::Histogram(samples) => samples.len() as u64,
            DebugValue::Gauge(_) => 0,
        };
        (key.name().to_owned(), labels, n)
    };
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(metric)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_tell_what_happened() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("tx_saga=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    #[cfg(feature = "metrics")]
    let snapshotter = {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this test binary");
        snapshotter
    };

    let env = Env::<sqlx::Sqlite>::new().await.expect("SQLite");
    env.seed("book", 10, &[("alice", 100), ("bob", 0)]).await;
    let stuck_saga = Saga::<u32>::named("doomed")
        .step_with(
            "take",
            StepOptions::default().compensation_max_attempts(1),
            |c: StepContext<u32>| async move { Ok(c.into_state()) },
            |_c: StepContext<u32>| async move { Err(StepError::Fail("ledger closed".into())) },
        )
        .step(
            "give",
            |_c: StepContext<u32>| async move { Err(StepError::Fail("no".into())) },
            |c: StepContext<u32>| async move { Ok(c.into_state()) },
        );
    let engine = env
        .engine()
        .register(env.order_saga(None))
        .register(stuck_saga);
    engine.install().await.unwrap();
    let ok = engine
        .start("place_order", order("book", 1, "alice", 10))
        .await
        .unwrap();
    let declined = engine
        .start("place_order", order("book", 1, "bob", 10))
        .await
        .unwrap();
    let doomed = engine.start("doomed", 0u32).await.unwrap();
    let statuses =
        run_until_settled(&engine, &[ok, declined, doomed], Duration::from_secs(30)).await;
    assert_eq!(statuses[0], SagaStatus::Completed);
    assert_eq!(statuses[1], SagaStatus::Compensated);
    assert!(
        matches!(&statuses[2], SagaStatus::Stuck(e) if e.contains("ledger closed")),
        "{statuses:?}"
    );

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for (id, step, direction) in [
        (ok, "charge_payment", "forward"),
        (declined, "charge_payment", "forward"),
        (declined, "reserve_stock", "compensate"),
        (doomed, "take", "compensate"),
    ] {
        let span = format!("saga_step{{saga_id={id} saga=");
        let found = log.lines().any(|l| {
            l.contains(&span) && l.contains(&format!("step={step} direction={direction}"))
        });
        assert!(
            found,
            "no saga_step span for {id} {step} {direction} in:\n{log}"
        );
    }
    assert!(
        log.contains("saga completed")
            && log.contains("saga compensated")
            && log.contains("saga is stuck"),
        "{log}"
    );

    #[cfg(feature = "metrics")]
    {
        let recorded = recorded(&snapshotter);
        // The sum over every label set of metric `name` that has `label`.
        let total = |name: &str, label: &str| -> u64 {
            let of = |(n, labels, _): &&(String, Vec<String>, u64)| {
                n == name && labels.iter().any(|l| l == label)
            };
            recorded.iter().filter(of).map(|(_, _, v)| v).sum()
        };
        assert_eq!(total("tx_saga_started_total", "saga=place_order"), 2);
        assert_eq!(total("tx_saga_started_total", "saga=doomed"), 1);
        assert_eq!(total("tx_saga_completed_total", "saga=place_order"), 1);
        assert_eq!(total("tx_saga_compensated_total", "saga=place_order"), 1);
        assert_eq!(total("tx_saga_stuck_total", "saga=doomed"), 1);
        // ok: 3 forward steps; declined: 2 ok + 1 failed forward, 2 compensations.
        assert_eq!(
            total("tx_saga_step_duration_seconds", "saga=place_order"),
            8
        );
        assert_eq!(
            total("tx_saga_step_duration_seconds", "outcome=fail"),
            3,
            "charge, give, and the failed compensation of take"
        );
    }
}
