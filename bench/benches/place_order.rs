//! The place-order workload (described in `BENCHMARKS.md`, "The workload") on PostgreSQL, two
//! implementations in one process, interleaved run by run: hand-written sqlx and tx.
//!
//! Run: `cargo bench -p tx-bench` (options after `--`: `--units N` per run, default 20000;
//! `--rounds N`, default 3; `--variants place_order,nested,empty,joined`; `--workers N`,
//! default 8).
//! `TX_BENCH_PG_URL` overrides `postgres://postgres@127.0.0.1:5432/test`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Row};
use tx_sqlx::{PgTxPool, TxError, transactional};

/// Concurrent workers (the workload's 8); `--workers N` changes it for diagnosis.
static WORKERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

fn workers() -> usize {
    *WORKERS.get().unwrap_or(&8)
}
const POOL: u32 = 16;
const ROWS: i32 = 1000;

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("no stock / no balance")]
    NoRow,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Tx(#[from] TxError),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    PlaceOrder,
    Nested,
    Empty,
    Joined,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::PlaceOrder => "place_order",
            Variant::Nested => "nested",
            Variant::Empty => "empty",
            Variant::Joined => "joined",
        }
    }
}

fn pick() -> (i32, i32) {
    (fastrand::i32(1..=ROWS), fastrand::i32(1..=ROWS))
}

// ---------------------------------------------------------------- hand-written sqlx

#[derive(Clone)]
struct Hand {
    pool: PgPool,
    counter: Arc<AtomicU64>,
}

impl Hand {
    async fn unit(&self, variant: Variant) -> Result<(), BenchError> {
        let (u, p) = pick();
        let mut tx = self.pool.begin().await?;
        if variant == Variant::Empty {
            tx.commit().await?;
            self.counter.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let n = sqlx::query("UPDATE products SET stock = stock - 1 WHERE id = $1 AND stock >= 1")
            .bind(p)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n != 1 {
            return Err(BenchError::NoRow);
        }
        let id: i64 = sqlx::query(
            "INSERT INTO orders (user_id, product_id, qty) VALUES ($1, $2, 1) RETURNING id",
        )
        .bind(u)
        .bind(p)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        let charge = sqlx::query(
            "UPDATE users SET balance = balance - 100 WHERE id = $1 AND balance >= 100",
        )
        .bind(u);
        let n = if variant == Variant::Nested {
            let mut sp = tx.begin().await?;
            let n = charge.execute(&mut *sp).await?.rows_affected();
            sp.commit().await?;
            n
        } else {
            charge.execute(&mut *tx).await?.rows_affected()
        };
        if n != 1 {
            return Err(BenchError::NoRow);
        }
        let mut audit = self.pool.begin().await?;
        sqlx::query("INSERT INTO audit (note) VALUES ($1)")
            .bind(format!("order {id}"))
            .execute(&mut *audit)
            .await?;
        audit.commit().await?;
        tx.commit().await?;
        self.counter.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

// ---------------------------------------------------------------- tx

#[derive(Clone)]
struct Shop {
    db: PgTxPool,
    audit: Audit,
    counter: Arc<AtomicU64>,
}

#[derive(Clone)]
struct Audit {
    db: PgTxPool,
}

impl Audit {
    #[transactional(manager = self.db, propagation = RequiresNew)]
    async fn record(&self, id: i64) -> Result<(), BenchError> {
        sqlx::query("INSERT INTO audit (note) VALUES ($1)")
            .bind(format!("order {id}"))
            .execute(&self.db)
            .await?;
        Ok(())
    }
}

impl Shop {
    #[transactional(manager = self.db)]
    async fn empty(&self) -> Result<(), BenchError> {
        Ok(())
    }

    #[transactional(manager = self.db)]
    async fn place_order(&self, variant: Variant) -> Result<(), BenchError> {
        let (u, p) = pick();
        let id = if variant == Variant::Joined {
            self.deduct(p).await?;
            let id = self.create(u, p).await?;
            self.charge(u).await?;
            id
        } else {
            let n =
                sqlx::query("UPDATE products SET stock = stock - 1 WHERE id = $1 AND stock >= 1")
                    .bind(p)
                    .execute(&self.db)
                    .await?
                    .rows_affected();
            if n != 1 {
                return Err(BenchError::NoRow);
            }
            let id: i64 = sqlx::query(
                "INSERT INTO orders (user_id, product_id, qty) VALUES ($1, $2, 1) RETURNING id",
            )
            .bind(u)
            .bind(p)
            .fetch_one(&self.db)
            .await?
            .get(0);
            if variant == Variant::Nested {
                self.charge_nested(u).await?;
            } else {
                self.charge_inline(u).await?;
            }
            id
        };
        self.audit.record(id).await?;
        let counter = self.counter.clone();
        tx_sqlx::after_commit(async move {
            counter.fetch_add(1, Ordering::Relaxed);
        })?;
        Ok(())
    }

    async fn charge_inline(&self, u: i32) -> Result<(), BenchError> {
        let n = sqlx::query(
            "UPDATE users SET balance = balance - 100 WHERE id = $1 AND balance >= 100",
        )
        .bind(u)
        .execute(&self.db)
        .await?
        .rows_affected();
        if n != 1 {
            return Err(BenchError::NoRow);
        }
        Ok(())
    }

    #[transactional(manager = self.db, propagation = Nested)]
    async fn charge_nested(&self, u: i32) -> Result<(), BenchError> {
        self.charge_inline(u).await
    }

    #[transactional(manager = self.db)]
    async fn deduct(&self, p: i32) -> Result<(), BenchError> {
        let n = sqlx::query("UPDATE products SET stock = stock - 1 WHERE id = $1 AND stock >= 1")
            .bind(p)
            .execute(&self.db)
            .await?
            .rows_affected();
        if n != 1 {
            return Err(BenchError::NoRow);
        }
        Ok(())
    }

    #[transactional(manager = self.db)]
    async fn create(&self, u: i32, p: i32) -> Result<i64, BenchError> {
        Ok(sqlx::query(
            "INSERT INTO orders (user_id, product_id, qty) VALUES ($1, $2, 1) RETURNING id",
        )
        .bind(u)
        .bind(p)
        .fetch_one(&self.db)
        .await?
        .get(0))
    }

    #[transactional(manager = self.db)]
    async fn charge(&self, u: i32) -> Result<(), BenchError> {
        self.charge_inline(u).await
    }

    async fn unit(&self, variant: Variant) -> Result<(), BenchError> {
        match variant {
            Variant::Empty => {
                self.empty().await?;
                self.counter.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            v => self.place_order(v).await,
        }
    }
}

// ---------------------------------------------------------------- harness

async fn pool_for(url: &str, schema: &'static str) -> PgPool {
    let admin = PgPool::connect(url).await.expect("PostgreSQL reachable");
    sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
                 CREATE TABLE {schema}.products (id int PRIMARY KEY, stock bigint NOT NULL CHECK (stock >= 0));
                 CREATE TABLE {schema}.users (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
                 CREATE TABLE {schema}.orders (id bigserial PRIMARY KEY, user_id int NOT NULL, product_id int NOT NULL, qty int NOT NULL);
                 CREATE TABLE {schema}.audit (id bigserial PRIMARY KEY, note text NOT NULL);
                 INSERT INTO {schema}.products SELECT g, 1000000000000 FROM generate_series(1, {ROWS}) g;
                 INSERT INTO {schema}.users SELECT g, 1000000000000000 FROM generate_series(1, {ROWS}) g;"
    )))
    .execute(&admin)
    .await
    .expect("schema");
    // Settle the freshly loaded tables so the first timed runs don't pay for it (one
    // statement at a time: VACUUM cannot run in a multi-statement query's implicit transaction).
    for sql in [
        format!("VACUUM ANALYZE {schema}.products"),
        format!("VACUUM ANALYZE {schema}.users"),
        "CHECKPOINT".to_owned(),
    ] {
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .expect("vacuum");
    }
    admin.close().await;
    PgPoolOptions::new()
        .max_connections(POOL)
        .min_connections(POOL)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                sqlx::raw_sql(AssertSqlSafe(format!("SET search_path TO {schema}")))
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .expect("pool")
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .expect("count")
        .get(0)
}

struct RunResult {
    tps: f64,
    /// This process's CPU time (user + system) per unit, in microseconds.
    cpu_us: f64,
    ok: bool,
}

/// CPU time of this process so far (utime + stime from /proc/self/stat, clock ticks of 10 ms).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15 of the line: 11th and 12th after the name.
    match (f.get(10), f.get(11)) {
        (Some(u), Some(s)) => Duration::from_millis((u + s) * 10),
        _ => Duration::ZERO,
    }
}

/// Runs `units` units on [`workers()`] workers; `unit` is one unit of work.
async fn run<F, Fut>(
    peer: &str,
    variant: Variant,
    units: u64,
    pool: &PgPool,
    counter: &AtomicU64,
    unit: F,
) -> RunResult
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), BenchError>> + Send,
{
    let orders0 = count(pool, "orders").await;
    let audit0 = count(pool, "audit").await;
    let counter0 = counter.load(Ordering::Relaxed);
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let cpu0 = process_cpu();
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers())
        .map(|_| {
            let (unit, next, failed) = (unit.clone(), next.clone(), failed.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < units {
                    if let Err(e) = unit().await {
                        eprintln!("unit failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in tasks {
        w.await.expect("worker");
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_us = (process_cpu() - cpu0).as_secs_f64() * 1e6 / units as f64;
    let committed = units - failed.load(Ordering::Relaxed);
    let counted = counter.load(Ordering::Relaxed) - counter0;
    let orders = (count(pool, "orders").await - orders0) as u64;
    let audits = (count(pool, "audit").await - audit0) as u64;
    let expect_rows = if variant == Variant::Empty {
        0
    } else {
        committed
    };
    let ok = counted == committed
        && orders == expect_rows
        && audits == expect_rows
        && committed == units;
    let tps = units as f64 / secs;
    println!(
        "peer={peer} variant={} workers={} units={units} secs={secs:.2} tps={tps:.0} client_cpu_us_per_unit={cpu_us:.1} check={}",
        variant.name(),
        workers(),
        if ok { "ok" } else { "FAIL" }
    );
    if !ok {
        println!("  counter={counted} committed={committed} orders={orders} audit={audits}");
    }
    RunResult { tps, cpu_us, ok }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let url = std::env::var("TX_BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let units: u64 = arg("--units").map_or(20_000, |s| s.parse().expect("--units N"));
    let rounds: usize = arg("--rounds").map_or(3, |s| s.parse().expect("--rounds N"));
    // `--only sqlx|tx`: one peer alone (for profiling; no ratio is printed).
    let only = arg("--only");
    let only = only.as_deref();
    if let Some(n) = arg("--workers") {
        WORKERS
            .set(n.parse().expect("--workers N"))
            .expect("set once");
    }
    let variants: Vec<Variant> = arg("--variants")
        .unwrap_or_else(|| "place_order,nested,empty,joined".into())
        .split(',')
        .map(|v| match v {
            "place_order" => Variant::PlaceOrder,
            "nested" => Variant::Nested,
            "empty" => Variant::Empty,
            "joined" => Variant::Joined,
            other => panic!("unknown variant {other}"),
        })
        .collect();

    let hand = Hand {
        pool: pool_for(&url, "bench_hand").await,
        counter: Arc::new(AtomicU64::new(0)),
    };
    let tx_pool = pool_for(&url, "bench_tx").await;
    let db = PgTxPool::new(tx_pool.clone());
    let shop = Shop {
        db: db.clone(),
        audit: Audit { db },
        counter: Arc::new(AtomicU64::new(0)),
    };

    // Warm-up: 1000 units of each peer.
    for v in [Variant::PlaceOrder] {
        let h = hand.clone();
        run(
            "hand-warmup",
            v,
            1000,
            &hand.pool,
            &hand.counter,
            move || {
                let h = h.clone();
                async move { h.unit(v).await }
            },
        )
        .await;
        let s = shop.clone();
        run("tx-warmup", v, 1000, &tx_pool, &shop.counter, move || {
            let s = s.clone();
            async move { s.unit(v).await }
        })
        .await;
    }

    let mut all_ok = true;
    let mut summary = Vec::new();
    for &v in &variants {
        let (mut hand_tps, mut tx_tps) = (Vec::new(), Vec::new());
        let (mut hand_cpu, mut tx_cpu) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternate which peer goes first, so drift in the machine favours neither.
            for first_hand in [round % 2 == 0, round % 2 != 0] {
                if only.is_some_and(|o| o != if first_hand { "sqlx" } else { "tx" }) {
                    continue;
                }
                if first_hand {
                    let h = hand.clone();
                    let r = run("sqlx", v, units, &hand.pool, &hand.counter, move || {
                        let h = h.clone();
                        async move { h.unit(v).await }
                    })
                    .await;
                    all_ok &= r.ok;
                    hand_tps.push(r.tps);
                    hand_cpu.push(r.cpu_us);
                } else {
                    let s = shop.clone();
                    let r = run("tx", v, units, &tx_pool, &shop.counter, move || {
                        let s = s.clone();
                        async move { s.unit(v).await }
                    })
                    .await;
                    all_ok &= r.ok;
                    tx_tps.push(r.tps);
                    tx_cpu.push(r.cpu_us);
                }
            }
        }
        if only.is_some() {
            continue;
        }
        // Throughput drifts over a long run (the tables grow, the server checkpoints), so the
        // ratio of each round's two runs, taken back to back, is the fairer comparison.
        let round_ratios: Vec<f64> = tx_tps.iter().zip(&hand_tps).map(|(t, h)| t / h).collect();
        let (h, t) = (median(hand_tps), median(tx_tps));
        summary.push(format!(
            "variant={:<12} sqlx_tps={h:>8.0} tx_tps={t:>8.0} ratio_of_medians={:.3} median_round_ratio={:.3}  client_cpu_us_per_unit: sqlx={:.1} tx={:.1}",
            v.name(),
            t / h,
            median(round_ratios),
            median(hand_cpu),
            median(tx_cpu),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "\nmedians over {rounds} rounds, {units} units each, {} workers, pool {POOL}:",
        workers()
    );
    for line in summary {
        println!("{line}");
    }
    println!("checks: {}", if all_ok { "all ok" } else { "FAILED" });
    if !all_ok {
        std::process::exit(1);
    }
}
