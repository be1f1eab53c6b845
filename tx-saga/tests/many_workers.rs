//! Many sagas over four workers sharing one database, with random faults (retryable errors,
//! panics, timeouts, failures that compensate) and a worker killed and restarted midway:
//! no saga is lost, none is left running once the workers drain, no step ever runs twice at
//! the same time, and every local effect is recorded exactly once.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tx_saga::{Saga, SagaEngine, SagaId, SagaStatus, StepContext, StepError, StepOptions};
use tx_sqlx::TxPool;

use common::*;

#[derive(Clone, Serialize, Deserialize)]
struct Chaos {
    /// The step that fails for good, if any.
    fail_at: Option<usize>,
}

/// Which steps are running right now, in this process (all four workers are here).
#[derive(Default)]
struct InFlight {
    running: Mutex<HashSet<String>>,
    overlaps: AtomicUsize,
}

/// Marks a step as running until dropped (also when its future is dropped by a timeout or a
/// killed worker, or unwinds from a panic).
struct Entered(Arc<InFlight>, String);

impl Entered {
    fn new(f: &Arc<InFlight>, key: String) -> Entered {
        if !f.running.lock().unwrap().insert(key.clone()) {
            f.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        Entered(f.clone(), key)
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.0.running.lock().unwrap().remove(&self.1);
    }
}

const TIMEOUT: Duration = Duration::from_millis(300);

async fn effect<DB: TestDb>(
    db: &TxPool<DB>,
    table: &str,
    id: SagaId,
    step: usize,
    dir: &str,
) -> Result<(), StepError> {
    DB::exec(
        db,
        &format!("INSERT INTO {table} (saga_id, step, dir) VALUES (?, ?, ?)"),
        vec![id.into(), (step as i64).into(), dir.into()],
    )
    .await?;
    Ok(())
}

/// A random fault for one attempt: mostly none.
async fn fault(retry_only: bool) -> Result<(), StepError> {
    let r = fastrand::u32(0..1000);
    match r {
        0..80 => Err(StepError::Retry("transient fault".into())),
        80..100 if !retry_only => panic!("injected panic"),
        100..104 if !retry_only => {
            tokio::time::sleep(TIMEOUT * 3).await;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The saga as one worker runs it: its steps write through that worker's own pool, so each
/// write commits with the worker's record of the step.
fn chaos_saga<DB: TestDb>(db: TxPool<DB>, effects: String, inflight: Arc<InFlight>) -> Saga<Chaos> {
    let options = StepOptions::default()
        .timeout(TIMEOUT)
        .max_attempts(12)
        .compensation_max_attempts(50)
        .backoff(Duration::from_millis(2), Duration::from_millis(20));
    let mut saga = Saga::<Chaos>::named("chaos");
    for step in 0..3 {
        let (d1, d2, t1, t2, f1, f2) = (
            db.clone(),
            db.clone(),
            effects.clone(),
            effects.clone(),
            inflight.clone(),
            inflight.clone(),
        );
        saga = saga.step_with(
            format!("s{step}"),
            options.clone(),
            move |ctx: StepContext<Chaos>| async move {
                let _running = Entered::new(&f1, ctx.idempotency_key().to_owned());
                effect(&d1, &t1, ctx.saga_id(), step, "f").await?;
                fault(false).await?;
                if ctx.state().fail_at == Some(step) {
                    return Err(StepError::Fail("declined".into()));
                }
                Ok(ctx.into_state())
            },
            move |ctx: StepContext<Chaos>| async move {
                let _running = Entered::new(&f2, ctx.idempotency_key().to_owned());
                effect(&d2, &t2, ctx.saga_id(), step, "c").await?;
                fault(true).await?;
                Ok(ctx.into_state())
            },
        );
    }
    saga
}

/// `n` sagas run by four workers, each on its own pool of `pool` connections to the orders
/// database.
async fn many_sagas<DB: TestDb>(env: Env<DB>, n: usize, pool: u32) {
    let mut pools = Vec::new();
    for _ in 0..4 {
        let Some(p) = DB::open(&env.spec, "orders", pool).await else {
            return;
        };
        pools.push(p);
    }
    let effects = env.t("orders", "effects");
    DB::exec(&env.orders, &format!("CREATE TABLE {effects} (saga_id VARCHAR(36) NOT NULL, step BIGINT NOT NULL, dir VARCHAR(1) NOT NULL)"), vec![]).await.unwrap();
    let inflight = Arc::new(InFlight::default());
    let engine_on = |db: &TxPool<DB>| -> SagaEngine<DB> {
        SagaEngine::new(db.clone())
            .table(env.saga_table())
            .lease(Duration::from_secs(1))
            .poll_interval(Duration::from_millis(50))
            .register(chaos_saga(db.clone(), effects.clone(), inflight.clone()))
    };
    let engines: Vec<SagaEngine<DB>> = pools.iter().map(engine_on).collect();
    engines[0].install().await.unwrap();

    let mut expected: HashMap<SagaId, Option<usize>> = HashMap::new();
    for chunk in 0..n.div_ceil(100) {
        let batch: Vec<Option<usize>> = (0..100.min(n - chunk * 100))
            .map(|_| {
                if fastrand::u32(0..10) == 0 {
                    Some(fastrand::usize(0..3))
                } else {
                    None
                }
            })
            .collect();
        let engine = engines[0].clone();
        let ids = DB::template(&pools[0])
            .execute(move |_| {
                let (engine, batch) = (engine.clone(), batch.clone());
                async move {
                    let mut ids = Vec::new();
                    for fail_at in batch {
                        ids.push((engine.start("chaos", Chaos { fail_at }).await?, fail_at));
                    }
                    Ok::<_, tx_sqlx::TxError>(ids)
                }
            })
            .await
            .unwrap();
        expected.extend(ids);
    }

    let mut workers: Vec<Running> = engines.iter().map(spawn_worker).collect();
    // A worker dies mid-run and a new one takes its place.
    tokio::time::sleep(Duration::from_millis(700)).await;
    workers.remove(0).kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    workers.push(spawn_worker(&engine_on(&pools[0])));

    let ids: Vec<SagaId> = expected.keys().copied().collect();
    let statuses = settle(&engines[1], &ids, Duration::from_secs(60)).await;
    for w in workers {
        w.stop().await;
    }

    assert_eq!(
        inflight.overlaps.load(Ordering::SeqCst),
        0,
        "a step ran on two workers at once"
    );
    let saga_table = env.saga_table();
    for status in ["running", "compensating", "stuck"] {
        let c = DB::ints(
            &env.orders,
            &format!("SELECT COUNT(*) FROM {saga_table} WHERE status = ?"),
            vec![status.into()],
        )
        .await
        .unwrap();
        assert_eq!(c, vec![0], "sagas left {status}");
    }
    let total = DB::ints(
        &env.orders,
        &format!("SELECT COUNT(*) FROM {saga_table}"),
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(total, vec![n as i64], "no saga lost");

    // Every committed effect, per saga: (step, direction) -> count.
    let mut seen: HashMap<String, HashMap<(usize, char), usize>> = HashMap::new();
    for step in 0..3usize {
        for dir in ['f', 'c'] {
            let rows = DB::texts(
                &env.orders,
                &format!("SELECT saga_id FROM {effects} WHERE step = ? AND dir = ?"),
                vec![(step as i64).into(), dir.to_string().into()],
            )
            .await
            .unwrap();
            for id in rows {
                *seen.entry(id).or_default().entry((step, dir)).or_default() += 1;
            }
        }
    }
    for (id, status) in ids.iter().zip(&statuses) {
        let fail_at = expected[id];
        let mut want: HashMap<(usize, char), usize> = HashMap::new();
        match fail_at {
            None => {
                assert_eq!(*status, SagaStatus::Completed, "saga {id}");
                for s in 0..3 {
                    want.insert((s, 'f'), 1);
                }
            }
            Some(k) => {
                assert_eq!(
                    *status,
                    SagaStatus::Compensated,
                    "saga {id} failing at step {k}"
                );
                for s in 0..k {
                    want.insert((s, 'f'), 1);
                    want.insert((s, 'c'), 1);
                }
            }
        }
        let got = seen.remove(&id.to_string()).unwrap_or_default();
        assert_eq!(got, want, "effects of saga {id} (fail_at {fail_at:?})");
    }
    assert!(seen.is_empty(), "effects of unknown sagas: {seen:?}");
}

common::env_tests! {
    thousand_sagas_four_workers_postgres: sqlx::Postgres => |env| many_sagas(env, 1000, 6),
    many_sagas_four_workers_mysql: sqlx::MySql => |env| many_sagas(env, 300, 6),
    many_sagas_four_workers_sqlite: sqlx::Sqlite => |env| many_sagas(env, 200, 4),
}
