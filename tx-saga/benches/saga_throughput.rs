//! Sagas per second for a three-step local saga on PostgreSQL with four workers, and the
//! statements the engine adds per step, counted.
//!
//! `cargo bench -p tx-saga --bench saga_throughput [-- --sagas N --workers N --concurrency N]`
//! against `TX_BENCH_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`). Each step
//! inserts one row through the engine's pool, in the step's transaction.
//!
//! The count runs first: a tracing layer counts every statement sqlx executes (target
//! `sqlx::query`), by kind, while 200 sagas run; then the timed run, with the layer silent.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tx_saga::{Saga, SagaEngine, StepContext, StepOptions};
use tx_sqlx::{PgTxPool, TransactionTemplate, TxError};

static COUNTING: AtomicBool = AtomicBool::new(false);

/// Counts sqlx's statement events by kind while [`COUNTING`] is on.
#[derive(Clone, Default)]
struct Counter {
    kinds: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    saga_table: Arc<str>,
    effects: Arc<str>,
}

#[derive(Default)]
struct Sql(String);

impl Visit for Sql {
    fn record_str(&mut self, field: &Field, value: &str) {
        if matches!(field.name(), "summary" | "db.statement") {
            self.0.push_str(value);
            self.0.push(' ');
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "summary" | "db.statement") {
            self.0.push_str(&format!("{value:?} "));
        }
    }
}

impl<S: Subscriber> Layer<S> for Counter {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if meta.target() == "sqlx::query" {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _: Context<'_, S>) -> bool {
        meta.target() == "sqlx::query" && COUNTING.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut sql = Sql::default();
        event.record(&mut sql);
        let s = sql.0.to_lowercase();
        let t = self.saga_table.to_lowercase();
        let kind = if s.starts_with("begin") || s.starts_with("start") {
            "BEGIN (transaction control)"
        } else if s.starts_with("commit") {
            "COMMIT (transaction control)"
        } else if s.starts_with("rollback") {
            "ROLLBACK"
        } else if s.contains(&format!("insert into {}", self.effects.to_lowercase())) {
            "the steps' own INSERTs"
        } else if s.contains(&format!("update {t}")) && s.contains("returning") {
            "engine: claim (UPDATE .. RETURNING)"
        } else if s.contains(&format!("update {t}")) {
            "engine: record a step (UPDATE)"
        } else if s.contains(&format!("insert into {t}")) {
            "engine: start (INSERT)"
        } else {
            "other (the bench's progress polls)"
        };
        *self.kinds.lock().unwrap().entry(kind).or_default() += 1;
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn saga(db: &PgTxPool, effects: &str) -> Saga<u64> {
    let options = StepOptions::default().timeout(Duration::from_secs(10));
    let mut saga = Saga::<u64>::named("three_local");
    for step in 0..3i64 {
        let (db, sql) = (
            db.clone(),
            format!("INSERT INTO {effects} (saga_id, step) VALUES ($1, $2)"),
        );
        saga = saga.step_with(
            format!("s{step}"),
            options.clone(),
            move |ctx: StepContext<u64>| async move {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(ctx.saga_id().to_string())
                    .bind(step)
                    .execute(&db)
                    .await?;
                Ok(ctx.into_state())
            },
            |ctx: StepContext<u64>| async move { Ok(ctx.into_state()) },
        );
    }
    saga
}

async fn start_all(
    engine: &SagaEngine<sqlx::Postgres>,
    db: &PgTxPool,
    n: usize,
) -> Result<(), TxError> {
    for chunk in 0..n.div_ceil(100) {
        let count = 100.min(n - chunk * 100);
        let engine = engine.clone();
        TransactionTemplate::new(db.clone())
            .execute(move |_| {
                let engine = engine.clone();
                async move {
                    for i in 0..count {
                        engine.start("three_local", i as u64).await?;
                    }
                    Ok::<_, TxError>(())
                }
            })
            .await?;
    }
    Ok(())
}

async fn completed(db: &PgTxPool, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {table} WHERE status = 'completed'"
    )))
    .fetch_one(db.pool())
    .await
    .unwrap()
}

/// Runs `workers` workers until `n` sagas have completed; the time it took.
async fn drain(
    engines: &[SagaEngine<sqlx::Postgres>],
    db: &PgTxPool,
    table: &str,
    n: usize,
) -> Duration {
    let started = Instant::now();
    let mut stops = Vec::new();
    let mut joins = Vec::new();
    for e in engines {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let e = e.clone();
        joins.push(tokio::spawn(async move {
            e.run(async move {
                let _ = rx.await;
            })
            .await
        }));
        stops.push(tx);
    }
    while completed(db, table).await < n as i64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    for s in stops {
        let _ = s.send(());
    }
    for j in joins {
        j.await.unwrap().unwrap();
    }
    took
}

fn main() {
    let sagas = arg("--sagas", 4000);
    let workers = arg("--workers", 4);
    let concurrency = arg("--concurrency", 8);
    let pid = std::process::id();
    let table = format!("bench_saga_{pid}");
    let effects = format!("bench_saga_fx_{pid}");
    let counter = Counter {
        saga_table: Arc::from(table.as_str()),
        effects: Arc::from(effects.as_str()),
        ..Default::default()
    };
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(counter.clone()))
        .unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let url = std::env::var("TX_BENCH_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let mut pools = Vec::new();
        for _ in 0..workers {
            pools.push(PgTxPool::new(PgPoolOptions::new().max_connections(concurrency as u32 + 1).connect(&url).await.expect("PostgreSQL")));
        }
        let db = pools[0].clone();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE TABLE {effects} (saga_id VARCHAR(36) NOT NULL, step BIGINT NOT NULL)")))
            .execute(db.pool())
            .await
            .unwrap();
        let engines: Vec<_> = pools
            .iter()
            .map(|p| SagaEngine::new(p.clone()).table(table.clone()).concurrency(concurrency).poll_interval(Duration::from_millis(50)).register(saga(p, &effects)))
            .collect();
        engines[0].install().await.unwrap();

        // The count: 200 sagas, every statement classified.
        let counted = 200;
        COUNTING.store(true, Ordering::SeqCst);
        start_all(&engines[0], &db, counted).await.unwrap();
        drain(&engines, &db, &table, counted).await;
        COUNTING.store(false, Ordering::SeqCst);
        let steps = (counted * 3) as f64;
        println!("statements for {counted} sagas of 3 local steps ({} steps), {workers} workers x {concurrency}:", counted * 3);
        for (kind, n) in counter.kinds.lock().unwrap().iter() {
            println!("  {kind:<40} {n:>6}  {:.2} per step", *n as f64 / steps);
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("TRUNCATE {table}; TRUNCATE {effects}"))).execute(db.pool()).await.unwrap();

        // The timed run.
        start_all(&engines[0], &db, sagas).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}"))).execute(db.pool()).await.unwrap();
        let took = drain(&engines, &db, &table, sagas).await;
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {effects}"))).fetch_one(db.pool()).await.unwrap();
        let ok = rows == (sagas * 3) as i64;
        println!(
            "sagas={sagas} workers={workers} concurrency={concurrency} secs={:.2} sagas_per_s={:.0} steps_per_s={:.0} check={}",
            took.as_secs_f64(),
            sagas as f64 / took.as_secs_f64(),
            (sagas * 3) as f64 / took.as_secs_f64(),
            if ok { "ok" } else { "FAIL" }
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {table}; DROP TABLE {effects}"))).execute(db.pool()).await.unwrap();
        assert!(ok, "expected {} effect rows, found {rows}", sagas * 3);
    });
}
