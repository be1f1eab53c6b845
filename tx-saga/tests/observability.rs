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

#[cfg(feature = "metrics")]
mod recorder {
    //! A minimal in-memory `metrics` recorder: counter values and histogram sample counts by
    //! metric name and labels.
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
        SharedString, Unit,
    };

    #[derive(Default)]
    pub struct Cell(AtomicU64);
    impl CounterFn for Cell {
        fn increment(&self, v: u64) {
            self.0.fetch_add(v, Ordering::SeqCst);
        }
        fn absolute(&self, v: u64) {
            self.0.fetch_max(v, Ordering::SeqCst);
        }
    }
    impl HistogramFn for Cell {
        fn record(&self, _: f64) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[derive(Default, Clone)]
    pub struct Memory(pub Arc<Mutex<BTreeMap<String, Arc<Cell>>>>);

    impl Memory {
        fn cell(&self, key: &Key) -> Arc<Cell> {
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            self.0.lock().unwrap().entry(name).or_default().clone()
        }

        /// The sum over every label set of metric `name` whose labels include `label`.
        pub fn total(&self, name: &str, label: &str) -> u64 {
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(label))
                .map(|(_, c)| c.0.load(Ordering::SeqCst))
                .sum()
        }
    }

    impl Recorder for Memory {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(self.cell(key))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(self.cell(key))
        }
    }
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
    let memory = {
        let m = recorder::Memory::default();
        metrics::set_global_recorder(m.clone()).expect("the only recorder of this test binary");
        m
    };

    let env = Env::sqlite().await;
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
    let worker = spawn_worker(&engine);
    let statuses = settle(&engine, &[ok, declined, doomed], Duration::from_secs(30)).await;
    worker.stop().await;
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
        assert_eq!(memory.total("tx_saga_started_total", "saga=place_order"), 2);
        assert_eq!(memory.total("tx_saga_started_total", "saga=doomed"), 1);
        assert_eq!(
            memory.total("tx_saga_completed_total", "saga=place_order"),
            1
        );
        assert_eq!(
            memory.total("tx_saga_compensated_total", "saga=place_order"),
            1
        );
        assert_eq!(memory.total("tx_saga_stuck_total", "saga=doomed"), 1);
        // ok: 3 forward steps; declined: 2 ok + 1 failed forward, 2 compensations.
        assert_eq!(
            memory.total("tx_saga_step_duration_seconds", "saga=place_order"),
            8
        );
        assert_eq!(
            memory.total("tx_saga_step_duration_seconds", "outcome=fail"),
            3,
            "charge, give, and the failed compensation of take"
        );
    }
}
