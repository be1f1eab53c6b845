//! Nesting cost: `#[transactional]` calls nested `depth` deep (1, 8, 64), each level a
//! separate call (boxed: async recursion).
//!
//! * `joins`: `Required` levels joining one transaction whose body runs no statement, so
//!   nothing reaches the database (SQLite in memory, never begun): engine time only. Each
//!   figure is paired with the same recursion without the attribute, and the difference is
//!   divided by the levels: the engine's cost per joined level.
//! * `savepoints`: `Nested` levels (SAVEPOINT / RELEASE SAVEPOINT each) inside a begun
//!   transaction, the innermost running `SELECT 1`, on SQLite (a file, WAL) or PostgreSQL
//!   (`TX_BENCH_PG_URL`); paired with the `SELECT 1` alone, per level.
//!
//! Run: `cargo bench -p tx-bench --bench nesting` (options after `--`: `--case joins|savepoints`,
//! `--backend sqlite|postgres` for savepoints, `--iters N` calls of the innermost level per
//! figure, `--rounds N`, `--depth D` and `--plain` to run one chain alone, for callgrind:
//! `bench/nesting-instructions.sh`).

use std::time::Duration;

use sqlx::pool::PoolOptions;
use tx_bench::harness::median;
use tx_bench::workload::BenchError;
use tx_bench::{postgres, sqlite};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

const DEPTHS: [u32; 3] = [1, 8, 64];

/// The savepoint case on a backend's `Shop` (the workload's tx peer).
macro_rules! savepoint_case {
    ($shop:ident) => {
        /// Time of `calls` savepoint chains `depth` deep (0: the `SELECT 1` alone).
        pub async fn savepoints(
            shop: &$shop,
            depth: u32,
            calls: u64,
        ) -> Result<Duration, BenchError> {
            if depth == 0 {
                shop.in_transaction(true, calls, || shop.select_one()).await
            } else {
                shop.in_transaction(true, calls, || shop.nest_chain(depth))
                    .await
            }
        }
    };
}

/// Time of `calls` chains `depth` deep, joined (`plain`: without the attribute).
async fn joins(shop: &sqlite::Shop, depth: u32, calls: u64, plain: bool) -> Duration {
    let r = if plain {
        shop.in_transaction(false, calls, || shop.plain_chain(depth))
            .await
    } else {
        shop.in_transaction(false, calls, || shop.join_chain(depth))
            .await
    };
    r.expect("joins")
}

mod on_sqlite {
    use super::*;
    use tx_bench::sqlite::Shop;
    savepoint_case!(Shop);
}

mod on_postgres {
    use super::*;
    use tx_bench::postgres::Shop;
    savepoint_case!(Shop);
}

fn main() {
    let case = arg("--case");
    let rounds: usize = arg("--rounds").map_or(5, |s| s.parse().expect("--rounds N"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = std::env::temp_dir();
        if case.as_deref().is_none_or(|c| c == "joins") {
            let iters: u64 = arg("--iters").map_or(640_000, |s| s.parse().expect("--iters N"));
            let shop = sqlite::Shop::new(
                sqlite::pool(&dir.join("tx-bench-nesting.db"), PoolOptions::new()).await,
            );
            if let Some(depth) = arg("--depth") {
                // One chain alone (for callgrind): `--iters` levels in all.
                let depth: u32 = depth.parse().expect("--depth D");
                let plain = std::env::args().any(|a| a == "--plain");
                joins(&shop, depth, iters / u64::from(depth), plain).await;
                return;
            }
            for depth in DEPTHS {
                let calls = iters / u64::from(depth);
                let (mut tx, mut plain) = (Vec::new(), Vec::new());
                for _ in 0..rounds {
                    tx.push(joins(&shop, depth, calls, false).await);
                    plain.push(joins(&shop, depth, calls, true).await);
                }
                let levels = (calls * u64::from(depth)) as f64;
                let ns = |v: Vec<Duration>| median(v.iter().map(|d| d.as_nanos() as f64 / levels).collect());
                let (t, p) = (ns(tx), ns(plain));
                println!(
                    "nesting case=joins depth={depth} calls={calls} ns_per_level_tx={t:.1} ns_per_level_plain={p:.1} engine_ns_per_level={:.1}",
                    t - p
                );
            }
        }
        if case.as_deref().is_none_or(|c| c == "savepoints") {
            let iters: u64 = arg("--iters").map_or(6_400, |s| s.parse().expect("--iters N"));
            let backend = arg("--backend").unwrap_or_else(|| "sqlite".into());
            for depth in DEPTHS {
                let calls = (iters / u64::from(depth)).max(1);
                let (mut nested, mut alone) = (Vec::new(), Vec::new());
                for _ in 0..rounds {
                    let (n, a) = match backend.as_str() {
                        "sqlite" => {
                            let shop = sqlite::Shop::new(
                                sqlite::pool(&dir.join("tx-bench-nesting.db"), PoolOptions::new()).await,
                            );
                            (
                                on_sqlite::savepoints(&shop, depth, calls).await,
                                on_sqlite::savepoints(&shop, 0, calls).await,
                            )
                        }
                        "postgres" => {
                            let url = std::env::var("TX_BENCH_PG_URL")
                                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
                            let shop = postgres::Shop::new(
                                postgres::pool(url.parse().expect("TX_BENCH_PG_URL"), "bench_nesting", PoolOptions::new()).await,
                            );
                            (
                                on_postgres::savepoints(&shop, depth, calls).await,
                                on_postgres::savepoints(&shop, 0, calls).await,
                            )
                        }
                        other => panic!("unknown backend {other} (sqlite|postgres)"),
                    };
                    nested.push(n.expect("savepoints"));
                    alone.push(a.expect("select"));
                }
                let per = |v: Vec<Duration>| median(v.iter().map(|d| d.as_secs_f64() * 1e6 / calls as f64).collect());
                let (n, a) = (per(nested), per(alone));
                println!(
                    "nesting case=savepoints backend={backend} depth={depth} calls={calls} us_per_call={n:.1} us_select_alone={a:.1} us_per_level={:.2}",
                    (n - a) / f64::from(depth)
                );
            }
        }
    });
}
