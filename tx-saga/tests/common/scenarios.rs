//! Behaviour every backend must show, written once over [`TestDb`]; each backend's test file
//! runs them against its server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tx_saga::{Saga, SagaEngine, SagaId, SagaStatus, StepContext, StepError, StepOptions};
use tx_sqlx::TxError;

use super::*;

const SETTLE: Duration = Duration::from_secs(30);

/// Starts saga `name` on `state` and runs a worker until it settled: its id and final status.
async fn run_one<DB: TestDb, S: Serialize + 'static>(
    engine: &SagaEngine<DB>,
    name: &str,
    state: S,
) -> (SagaId, SagaStatus) {
    let id = engine.start(name, state).await.unwrap();
    let mut statuses = run_until_settled(engine, &[id], SETTLE).await;
    (id, statuses.remove(0))
}

/// An order with enough stock and money: every service changed once.
pub async fn order_completes_across_three_services<DB: TestDb>(env: Env<DB>) {
    env.seed("book", 10, &[("alice", 100)]).await;
    let engine = env.installed(env.order_saga(None)).await;
    engine.install().await.expect("install is idempotent");

    let id = DB::template(&env.orders)
        .execute(|_| {
            let engine = engine.clone();
            async move {
                engine
                    .start("place_order", order("book", 2, "alice", 30))
                    .await
            }
        })
        .await
        .unwrap();
    assert_eq!(engine.status(id).await.unwrap(), SagaStatus::Running);

    assert_eq!(
        run_until_settled(&engine, &[id], SETTLE).await,
        vec![SagaStatus::Completed]
    );
    assert_eq!(env.stock_of("book").await, 8);
    assert_eq!(env.balance_of("alice").await, 70);
    env.assert_order_completed(id).await;
}

/// The payment is declined: the order is cancelled, then the stock is put back (reverse
/// order), and nothing is charged.
pub async fn payment_failure_compensates_in_reverse_order<DB: TestDb>(env: Env<DB>) {
    env.seed("book", 10, &[("bob", 10)]).await;
    let engine = env.installed(env.order_saga(None)).await;
    let (id, status) = run_one(&engine, "place_order", order("book", 3, "bob", 30)).await;
    assert_eq!(status, SagaStatus::Compensated);
    env.assert_order_compensated(id).await;
    assert_eq!(env.stock_of("book").await, 10);
    assert_eq!(env.balance_of("bob").await, 10);
}

/// `start` writes in the caller's transaction: a rollback leaves no saga at all.
pub async fn start_joins_the_callers_transaction<DB: TestDb>(env: Env<DB>) {
    env.seed("book", 10, &[("carol", 100)]).await;
    let engine = env.installed(env.order_saga(None)).await;

    #[derive(Debug)]
    enum AppError {
        Tx(TxError),
        Declined(tx_saga::SagaId),
    }
    impl From<TxError> for AppError {
        fn from(e: TxError) -> Self {
            AppError::Tx(e)
        }
    }
    let rolled_back = DB::template(&env.orders)
        .execute(|_| {
            let engine = engine.clone();
            async move {
                let id = engine
                    .start("place_order", order("book", 1, "carol", 5))
                    .await?;
                Err::<(), _>(AppError::Declined(id))
            }
        })
        .await;
    let Err(AppError::Declined(ghost)) = rolled_back else {
        panic!("expected the body's error, got {rolled_back:?}")
    };
    let err = engine
        .status(ghost)
        .await
        .expect_err("a rolled-back saga does not exist");
    assert!(matches!(err, TxError::InvalidArgument { .. }), "{err}");
    assert!(err.to_string().contains("no saga"), "{err}");

    let (_, status) = run_one(&engine, "place_order", order("book", 1, "carol", 5)).await;
    assert_eq!(status, SagaStatus::Completed);
    let rows = DB::ints(
        &env.orders,
        &format!("SELECT COUNT(*) FROM {}", env.saga_table()),
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(rows, vec![1], "only the committed saga was recorded");
    assert_eq!(
        env.stock_of("book").await,
        9,
        "the rolled-back saga never ran"
    );
    assert!(env.journal(ghost).await.is_empty());
}

/// A flaky step is retried with the same idempotency key and succeeds; the writes of its
/// failed attempts were rolled back; a later failure compensates it with another key, and the
/// compensation is retried after a `Fail` too.
pub async fn retries_keep_the_key_and_roll_back_failed_attempts<DB: TestDb>(env: Env<DB>) {
    type Seen = Mutex<Vec<(String, u32, String)>>;
    /// Notes an attempt: its direction, number and idempotency key.
    fn note(seen: &Seen, ctx: &StepContext<u32>) {
        let key = ctx.idempotency_key().to_owned();
        seen.lock()
            .unwrap()
            .push((ctx.direction().to_string(), ctx.attempt(), key));
    }
    let seen: Arc<Seen> = Arc::default();
    let fast = StepOptions::default()
        .max_attempts(5)
        .backoff(Duration::from_millis(5), Duration::from_millis(20));
    let (e1, e2, s1, s2) = (env.clone(), env.clone(), seen.clone(), seen.clone());
    let saga = Saga::<u32>::named("flaky")
        .step_with(
            "a",
            fast.clone(),
            move |ctx: StepContext<u32>| async move {
                e1.log_step(&ctx).await?;
                note(&s1, &ctx);
                if ctx.attempt() < 3 {
                    return Err(StepError::Retry(format!("flake {}", ctx.attempt()).into()));
                }
                Ok(ctx.into_state() + 1)
            },
            move |ctx: StepContext<u32>| async move {
                e2.log_step(&ctx).await?;
                note(&s2, &ctx);
                if ctx.attempt() == 1 {
                    // A compensation is retried even on Fail: it must succeed eventually.
                    return Err(StepError::Fail("refund service hiccup".into()));
                }
                assert_eq!(
                    *ctx.state(),
                    1,
                    "the compensation sees the state the forward step returned"
                );
                Ok(ctx.into_state() - 1)
            },
        )
        .step(
            "b",
            |_ctx: StepContext<u32>| async move { Err(StepError::Fail("no".into())) },
            |ctx: StepContext<u32>| async move { Ok(ctx.into_state()) },
        );
    let (id, status) = run_one(&env.installed(saga).await, "flaky", 0u32).await;
    assert_eq!(status, SagaStatus::Compensated);

    let seen = seen.lock().unwrap().clone();
    let fwd_key = format!("{id}:a:forward");
    let comp_key = format!("{id}:a:compensate");
    assert_eq!(
        seen,
        vec![
            ("forward".into(), 1, fwd_key.clone()),
            ("forward".into(), 2, fwd_key.clone()),
            ("forward".into(), 3, fwd_key),
            ("compensate".into(), 1, comp_key.clone()),
            ("compensate".into(), 2, comp_key)
        ]
    );
    assert_eq!(
        env.journal(id).await,
        vec!["a:forward", "a:compensate"],
        "failed attempts left nothing"
    );
}

/// A panic, a timeout and a retryable error each count as a failed attempt (rolled back,
/// never a lost saga); at the limit the step counts as failed and compensation runs.
pub async fn panics_and_timeouts_are_failed_attempts<DB: TestDb>(env: Env<DB>) {
    let attempts: Arc<Mutex<Vec<u32>>> = Arc::default();
    let (e3, a) = (env.clone(), attempts.clone());
    let opts = StepOptions::default()
        .timeout(Duration::from_millis(300))
        .max_attempts(3)
        .backoff(Duration::from_millis(5), Duration::from_millis(20));
    let saga = Saga::<u32>::named("faulty")
        .step("a", env.journal_step(), env.journal_step())
        .step_with(
            "b",
            opts,
            move |ctx: StepContext<u32>| async move {
                e3.log_step(&ctx).await?;
                a.lock().unwrap().push(ctx.attempt());
                match ctx.attempt() {
                    1 => panic!("b exploded"),
                    2 => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        Ok(ctx.into_state())
                    }
                    _ => Err(StepError::Retry("still failing".into())),
                }
            },
            |ctx: StepContext<u32>| async move { Ok(ctx.into_state()) },
        );
    let (id, status) = run_one(&env.installed(saga).await, "faulty", 7u32).await;
    assert_eq!(status, SagaStatus::Compensated);
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2, 3]);
    assert_eq!(env.journal(id).await, vec!["a:forward", "a:compensate"]);
}

/// A compensation that keeps failing leaves the saga stuck with its error, listed for an
/// operator; once the cause is fixed, `resume` finishes it.
pub async fn stuck_sagas_are_listed_and_resumed<DB: TestDb>(env: Env<DB>) {
    let broken = Arc::new(AtomicBool::new(true));
    let (e2, b) = (env.clone(), broken.clone());
    let comp = StepOptions::default()
        .compensation_max_attempts(2)
        .backoff(Duration::from_millis(5), Duration::from_millis(10));
    let saga = Saga::<u32>::named("fragile")
        .step_with(
            "a",
            comp,
            env.journal_step(),
            move |ctx: StepContext<u32>| async move {
                if b.load(Ordering::SeqCst) {
                    return Err(StepError::Retry("refund service down".into()));
                }
                e2.log_step(&ctx).await?;
                Ok(ctx.into_state())
            },
        )
        .step(
            "b",
            |_ctx: StepContext<u32>| async move { Err(StepError::Fail("declined".into())) },
            |ctx: StepContext<u32>| async move { Ok(ctx.into_state()) },
        );
    let engine = env.installed(saga).await;
    let id = engine.start("fragile", 1u32).await.unwrap();
    let worker = spawn_worker(&engine);
    let status = settle(&engine, &[id], SETTLE).await.remove(0);
    let SagaStatus::Stuck(error) = status else {
        panic!("expected stuck, got {status:?}")
    };
    assert!(
        error.contains("compensation of step `a`") && error.contains("refund service down"),
        "{error}"
    );

    let stuck = engine.stuck(Duration::ZERO).await.unwrap();
    assert_eq!(stuck.len(), 1, "{stuck:?}");
    assert_eq!(
        (stuck[0].id, stuck[0].name.as_str(), stuck[0].step.as_str()),
        (id, "fragile", "a")
    );
    assert!(stuck[0].compensating);
    assert_eq!(stuck[0].attempts, 2);
    assert!(
        engine
            .stuck(Duration::from_secs(3600))
            .await
            .unwrap()
            .is_empty()
    );

    broken.store(false, Ordering::SeqCst);
    engine.resume(id).await.unwrap();
    assert_eq!(
        settle(&engine, &[id], SETTLE).await,
        vec![SagaStatus::Compensated]
    );
    worker.stop().await;
    assert_eq!(env.journal(id).await, vec!["a:forward", "a:compensate"]);
    let again = engine.resume(id).await.expect_err("not stuck any more");
    assert!(again.to_string().contains("not stuck"), "{again}");
    assert!(engine.stuck(Duration::ZERO).await.unwrap().is_empty());
}

/// Misuse is a typed error saying what to do, never a hang or a silent no-op.
pub async fn misuse_is_reported<DB: TestDb>(env: Env<DB>) {
    let engine = env.installed(env.order_saga(None)).await;
    let e = engine.start("no_such_saga", 1u32).await.unwrap_err();
    assert!(
        e.to_string().contains("no saga named `no_such_saga`")
            && e.to_string().contains("place_order"),
        "{e}"
    );
    let e = engine.start("place_order", 1u32).await.unwrap_err();
    assert!(e.to_string().contains("state type"), "{e}");
    let e = engine
        .status(tx_saga::SagaId::from_str_checked(
            "00000000-0000-4000-8000-000000000001",
        ))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no saga"), "{e}");

    let e = env
        .engine()
        .lease(Duration::from_millis(10))
        .register(env.order_saga(None))
        .install()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("lease"), "{e}");

    let twice = env
        .engine()
        .register(env.order_saga(None))
        .register(env.order_saga(None));
    let e = twice
        .start("place_order", order("x", 1, "y", 1))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unique"), "{e}");

    let empty = env.engine();
    let e = empty.run(async {}).await.unwrap_err();
    assert!(e.to_string().contains("no saga is registered"), "{e}");
    let bad_table = env
        .engine()
        .table("x; drop table y")
        .register(env.order_saga(None));
    assert!(
        bad_table
            .install()
            .await
            .unwrap_err()
            .to_string()
            .contains("table name")
    );
}

/// A worker told to stop lets the step in flight finish, records it, and hands the saga
/// back at once: another worker goes on without waiting for the lease (30 s here) to expire.
pub async fn shutdown_finishes_the_step_and_hands_the_saga_back<DB: TestDb>(env: Env<DB>) {
    let entered = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (e1, n1, r1) = (env.clone(), entered.clone(), release.clone());
    let saga = Saga::<u32>::named("handover")
        .step(
            "a",
            move |ctx: StepContext<u32>| async move {
                e1.log_step(&ctx).await?;
                n1.notify_one();
                r1.notified().await;
                Ok(ctx.into_state())
            },
            |ctx: StepContext<u32>| async move { Ok(ctx.into_state()) },
        )
        .step("b", env.journal_step(), env.journal_step());
    let engine = env.engine().lease(Duration::from_secs(30)).register(saga);
    engine.install().await.unwrap();
    let id = engine.start("handover", 0u32).await.unwrap();
    let first = spawn_worker(&engine);
    entered.notified().await;
    let stopping = tokio::spawn(first.stop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !stopping.is_finished(),
        "the worker waits for its step in flight"
    );
    release.notify_one();
    stopping.await.unwrap();
    assert_eq!(
        env.journal(id).await,
        vec!["a:forward"],
        "step a was recorded, b not started"
    );
    assert_eq!(engine.status(id).await.unwrap(), SagaStatus::Running);

    assert_eq!(
        run_until_settled(&engine, &[id], Duration::from_secs(10)).await,
        vec![SagaStatus::Completed]
    );
    assert_eq!(env.journal(id).await, vec!["a:forward", "b:forward"]);
}

/// Installing from several tasks at once (several processes starting together) succeeds
/// everywhere.
pub async fn concurrent_installs_succeed<DB: TestDb>(env: Env<DB>) {
    let engine = env.engine().register(env.order_saga(None));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let e = engine.clone();
        tasks.push(tokio::spawn(async move { e.install().await }));
    }
    for t in tasks {
        t.await.unwrap().expect("every concurrent install succeeds");
    }
    let id = engine
        .start("place_order", order("x", 1, "y", 1))
        .await
        .unwrap();
    assert_eq!(engine.status(id).await.unwrap(), SagaStatus::Running);
}

/// One test per scenario above, each on a fresh environment of database `$db` (skipped when
/// its server is missing).
macro_rules! saga_suite {
    ($db:ty) => {
        $crate::common::scenarios::saga_suite!(
            @each $db;
            order_completes_across_three_services,
            payment_failure_compensates_in_reverse_order,
            start_joins_the_callers_transaction,
            retries_keep_the_key_and_roll_back_failed_attempts,
            panics_and_timeouts_are_failed_attempts,
            stuck_sagas_are_listed_and_resumed,
            misuse_is_reported,
            shutdown_finishes_the_step_and_hands_the_saga_back,
            concurrent_installs_succeed,
        );
    };
    (@each $db:ty; $($scenario:ident),+ $(,)?) => {
        $crate::common::env_tests! {
            $($scenario: $db => $crate::common::scenarios::$scenario),+
        }
    };
}
pub(crate) use saga_suite;
