//! Workers killed with SIGKILL (a child process running the worker) at every step boundary
//! and in the middle of every step, going forward and while compensating, then restarted:
//! every saga ends completed or compensated, and every service's effects happened exactly
//! once. And a compensation calling a payment service over HTTP, killed after the refund
//! call and retried, refunds once thanks to its idempotency key.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tx_saga::{Saga, SagaEngine, SagaId, SagaStatus, StepContext, StepError, StepOptions};

use common::*;

/// What the child worker process is told.
#[derive(Serialize, Deserialize)]
struct ChildConfig {
    spec: EnvSpec,
    /// Crash points that already fired: not again.
    crashed: Vec<String>,
    lease_ms: u64,
    timeout_ms: u64,
    /// `order` or `refund`.
    scenario: String,
    /// The payment service of the `refund` scenario.
    payment_url: Option<String>,
}

const CHILD_ENV: &str = "TX_SAGA_CRASH_CHILD";

/// Prints the crash line the parent waits for, then hangs until killed. The thread is
/// blocked, not the future suspended: no timeout of the engine can cut the hang short, so the
/// process is really stopped at this point when the kill arrives.
async fn crash_here(point: &str) {
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "\nCRASH {point}");
        let _ = out.flush();
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A hook that crashes at `order.crash_at` unless that point already fired: `mid` right here
/// (before the step returns, its transaction open), `after` right after the step's
/// transaction committed.
fn crash_hook(crashed: Vec<String>) -> Hook {
    let crashed: Arc<BTreeSet<String>> = Arc::new(crashed.into_iter().collect());
    Arc::new(move |_id: SagaId, point: String, order: Order| {
        let crashed = crashed.clone();
        Box::pin(async move {
            let Some(at) = order.crash_at.clone() else {
                return;
            };
            if crashed.contains(&at) {
                return;
            }
            if at == format!("{point}:mid") {
                crash_here(&at).await;
            } else if at == format!("{point}:after") {
                tx_sqlx::after_commit(async move { crash_here(&at).await })
                    .expect("inside the step's transaction");
            }
        })
    })
}

/// The child: a worker that runs until it is killed.
#[test]
#[ignore = "the worker process of the crash tests, started by them"]
fn crash_worker_child() {
    let Ok(cfg) = std::env::var(CHILD_ENV) else {
        eprintln!(
            "crash_worker_child is the crash tests' worker process; it does nothing on its own"
        );
        return;
    };
    let cfg: ChildConfig = serde_json::from_str(&cfg).expect("child config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match cfg.spec.kind {
        Kind::Sqlite => rt.block_on(run_child::<sqlx::Sqlite>(cfg)),
        Kind::Postgres => rt.block_on(run_child::<sqlx::Postgres>(cfg)),
        Kind::MySql => rt.block_on(run_child::<sqlx::MySql>(cfg)),
    }
}

/// The child's worker on the services of `cfg.spec`, running until the process is killed.
async fn run_child<DB: TestDb>(cfg: ChildConfig) {
    let env = Env::<DB>::open(cfg.spec.clone(), 8)
        .await
        .expect("the test's database server");
    let lease = Duration::from_millis(cfg.lease_ms);
    let options = StepOptions::default()
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .backoff(Duration::from_millis(5), Duration::from_millis(50));
    child_engine(&env, &cfg, lease, options)
        .run(std::future::pending::<()>())
        .await
        .unwrap();
}

fn child_engine<DB: TestDb>(
    env: &Env<DB>,
    cfg: &ChildConfig,
    lease: Duration,
    options: StepOptions,
) -> SagaEngine<DB> {
    // One saga at a time: the kill then stops exactly the saga at its crash point (with more
    // in flight, one could be stopped between a commit and its crash point, unrecorded).
    let engine = env.engine().lease(lease).concurrency(1);
    match cfg.scenario.as_str() {
        "order" => {
            engine.register(env.order_saga_with(Some(crash_hook(cfg.crashed.clone())), options))
        }
        "refund" => engine.register(checkout_saga(
            cfg.payment_url.clone().expect("payment url"),
            cfg.crashed.clone(),
            options,
        )),
        other => panic!("unknown scenario {other}"),
    }
}

/// Runs child workers until every saga in `ids` is final: each time a child reports a crash
/// point it is killed with SIGKILL and a new one is started that will not crash there again.
/// Returns the crash points that fired, in order.
async fn run_crashing_children<DB: TestDb>(
    engine: &SagaEngine<DB>,
    mut cfg: ChildConfig,
    ids: &[SagaId],
    limit: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    loop {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "crash_worker_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, serde_json::to_string(&cfg).unwrap())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the worker process");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let crashed = loop {
            assert!(
                Instant::now() < deadline,
                "sagas not done within {limit:?}; crash points fired: {:?}",
                cfg.crashed
            );
            tokio::select! {
                line = lines.next_line() => match line.expect("child stdout") {
                    // The test harness's "test crash_worker_child ... " may precede it.
                    Some(l) if l.contains("CRASH ") => break Some(l[l.find("CRASH ").unwrap() + 6..].trim().to_owned()),
                    Some(_) => {}
                    None => panic!("the worker process exited on its own: {:?}", child.wait().await),
                },
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    let mut done = true;
                    for id in ids {
                        if !engine.status(*id).await.unwrap().is_final() {
                            done = false;
                            break;
                        }
                    }
                    if done {
                        break None;
                    }
                }
            }
        };
        // SIGKILL: no destructor, no rollback sent, no lease handed back.
        child.kill().await.expect("kill the worker process");
        let Some(point) = crashed else {
            return cfg.crashed;
        };
        cfg.crashed.push(point);
        // Another saga may have reached its crash point at the same moment (on the other
        // thread): it was stopped there too.
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(i) = l.find("CRASH ") {
                cfg.crashed.push(l[i + 6..].trim().to_owned());
            }
        }
    }
}

/// Every crash point of `steps` in `direction`: in the middle of each and right after it.
fn crash_points(steps: &[&str], direction: &str) -> Vec<String> {
    let each = |s: &&str| ["mid", "after"].map(|when| format!("{s}:{direction}:{when}"));
    steps.iter().flat_map(each).collect()
}

/// Starts an order saga paid from `account` per crash point in `points`, and one that never
/// crashes.
async fn start_orders<DB: TestDb>(
    engine: &SagaEngine<DB>,
    account: &str,
    amount: i64,
    points: &[String],
) -> Vec<SagaId> {
    let mut ids = Vec::new();
    for p in points.iter().map(Some).chain([None]) {
        let mut o = order("book", 1, account, amount);
        o.crash_at = p.cloned();
        ids.push(engine.start("place_order", o).await.unwrap());
    }
    ids
}

async fn crash_everywhere<DB: TestDb>(env: Env<DB>) {
    env.seed("book", 100, &[("alice", 1000), ("broke", 0)])
        .await;
    let engine = env.installed(env.order_saga(None)).await;

    let steps = ["reserve_stock", "create_order", "charge_payment"];
    let points_ok = crash_points(&steps, "forward");
    let points_fail = crash_points(&["create_order", "reserve_stock"], "compensate");
    let ok_ids = start_orders(&engine, "alice", 10, &points_ok).await;
    let fail_ids = start_orders(&engine, "broke", 50, &points_fail).await;
    let all: Vec<SagaId> = ok_ids.iter().chain(&fail_ids).copied().collect();

    let cfg = ChildConfig {
        spec: env.spec.clone(),
        crashed: Vec::new(),
        lease_ms: 500,
        timeout_ms: 500,
        scenario: "order".into(),
        payment_url: None,
    };
    let fired = run_crashing_children(&engine, cfg, &all, Duration::from_secs(50)).await;
    let fired: BTreeSet<String> = fired.into_iter().collect();
    let expected: BTreeSet<String> = points_ok.iter().chain(&points_fail).cloned().collect();
    assert_eq!(
        fired, expected,
        "every crash point was reached and killed the worker"
    );

    for id in &ok_ids {
        assert_eq!(engine.status(*id).await.unwrap(), SagaStatus::Completed);
        env.assert_order_completed(*id).await;
    }
    for id in &fail_ids {
        assert_eq!(engine.status(*id).await.unwrap(), SagaStatus::Compensated);
        env.assert_order_compensated(*id).await;
    }
    let completed = ok_ids.len() as i64;
    assert_eq!(
        env.stock_of("book").await,
        100 - completed,
        "stock moved once per completed saga"
    );
    assert_eq!(
        env.balance_of("alice").await,
        1000 - 10 * completed,
        "charged once per completed saga"
    );
    assert_eq!(env.balance_of("broke").await, 0);
}

common::env_tests! {
    killed_workers_resume_every_saga_sqlite: sqlx::Sqlite => crash_everywhere,
    killed_workers_resume_every_saga_postgres: sqlx::Postgres => crash_everywhere,
    killed_workers_resume_every_saga_mysql: sqlx::MySql => crash_everywhere,
}

// ---- A refund over HTTP, retried after a crash ----

/// A fake payment service: charges and refunds, each applied once per `Idempotency-Key`.
#[derive(Default)]
struct PaymentService {
    balance: Mutex<i64>,
    applied: Mutex<HashMap<String, i64>>,
    calls: Mutex<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
struct Amount {
    amount: i64,
}

async fn apply(
    State(svc): State<Arc<PaymentService>>,
    headers: HeaderMap,
    Json(body): Json<Amount>,
) -> (StatusCode, String) {
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return (StatusCode::BAD_REQUEST, "Idempotency-Key required".into());
    };
    svc.calls.lock().unwrap().push(key.clone());
    let mut applied = svc.applied.lock().unwrap();
    if applied.contains_key(&key) {
        return (StatusCode::OK, "duplicate".into());
    }
    applied.insert(key, body.amount);
    *svc.balance.lock().unwrap() += body.amount;
    (StatusCode::OK, "applied".into())
}

#[derive(Clone, Serialize, Deserialize)]
struct Checkout {
    amount: i64,
}

async fn call(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    amount: i64,
) -> Result<(), StepError> {
    let resp = client
        .post(url)
        .header("Idempotency-Key", key)
        .json(&Amount { amount })
        .send()
        .await
        .map_err(StepError::retry)?;
    if !resp.status().is_success() {
        return Err(StepError::Retry(
            format!("payment service answered {}", resp.status()).into(),
        ));
    }
    Ok(())
}

/// Charge over HTTP, then a step that fails: the charge is refunded over HTTP. The refund
/// crashes its worker right after the call, the first time.
fn checkout_saga(url: String, crashed: Vec<String>, options: StepOptions) -> Saga<Checkout> {
    let client = reqwest::Client::new();
    let (c1, c2, u1, u2) = (
        client.clone(),
        client,
        format!("{url}/apply"),
        format!("{url}/apply"),
    );
    Saga::<Checkout>::named("checkout")
        .step_with(
            "charge",
            options.clone(),
            move |ctx: StepContext<Checkout>| async move {
                call(&c1, &u1, ctx.idempotency_key(), -ctx.state().amount).await?;
                Ok(ctx.into_state())
            },
            move |ctx: StepContext<Checkout>| async move {
                call(&c2, &u2, ctx.idempotency_key(), ctx.state().amount).await?;
                if !crashed.iter().any(|c| c == "refund:mid") {
                    crash_here("refund:mid").await;
                }
                Ok(ctx.into_state())
            },
        )
        .step_with(
            "ship",
            options,
            |_ctx: StepContext<Checkout>| async move { Err(StepError::Fail("out of stock".into())) },
            |ctx: StepContext<Checkout>| async move { Ok(ctx.into_state()) },
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_retried_after_a_crash_happens_once() {
    let svc = Arc::new(PaymentService {
        balance: Mutex::new(100),
        ..Default::default()
    });
    let app = axum::Router::new()
        .route("/apply", axum::routing::post(apply))
        .with_state(svc.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let env = Env::<sqlx::Sqlite>::new().await.expect("SQLite");
    let opts = StepOptions::default().timeout(Duration::from_millis(500));
    let engine = env
        .engine()
        .register(checkout_saga(url.clone(), vec![], opts));
    engine.install().await.unwrap();
    let id = engine
        .start("checkout", Checkout { amount: 30 })
        .await
        .unwrap();

    let cfg = ChildConfig {
        spec: env.spec.clone(),
        crashed: Vec::new(),
        lease_ms: 500,
        timeout_ms: 500,
        scenario: "refund".into(),
        payment_url: Some(url),
    };
    let fired = run_crashing_children(&engine, cfg, &[id], Duration::from_secs(30)).await;
    assert_eq!(fired, vec!["refund:mid"]);
    assert_eq!(engine.status(id).await.unwrap(), SagaStatus::Compensated);

    let refund_key = format!("{id}:charge:compensate");
    let calls = svc.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            format!("{id}:charge:forward"),
            refund_key.clone(),
            refund_key
        ],
        "the refund was called again after the crash"
    );
    assert_eq!(
        svc.applied.lock().unwrap().len(),
        2,
        "one charge and one refund applied"
    );
    assert_eq!(
        *svc.balance.lock().unwrap(),
        100,
        "charged 30, refunded 30, once"
    );
    server.abort();
}
