//! The place-order workload (described in `BENCHMARKS.md`, "The workload"), two
//! implementations in one process, interleaved run by run: hand-written sqlx and tx.
//!
//! Run: `cargo bench -p tx-bench` (options after `--`: `--backend postgres|mysql|sqlite`,
//! default postgres; `--units N` per run, default 20000; `--rounds N`, default 3;
//! `--variants place_order,nested,empty,joined`; `--workers N`, default 8; `--only sqlx|tx`).
//! `TX_BENCH_PG_URL` overrides `postgres://postgres@127.0.0.1:5432/test`,
//! `TX_BENCH_MYSQL_URL` overrides `mysql://root@127.0.0.1:3306/test`; SQLite uses files in
//! the temp dir. Both peers' pools have the same options (16 connections, opened up front,
//! sqlx's default `test_before_acquire`: a ping per acquire, for `pool.begin()` and tx's
//! `BEGIN` alike).

use std::time::Duration;

use sqlx::pool::PoolOptions;
use tx_bench::harness::{median, run};
use tx_bench::workload::{Peer, Variant};
use tx_bench::{mysql, postgres, sqlite};

const POOL: u32 = 16;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn pool_options<DB: sqlx::Database>() -> PoolOptions<DB> {
    PoolOptions::new()
        .max_connections(POOL)
        .min_connections(POOL)
}

struct Args {
    units: u64,
    rounds: usize,
    workers: usize,
    variants: Vec<Variant>,
    /// `--only sqlx|tx`: one peer alone (for profiling; no ratio is printed).
    only: Option<String>,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args {
        units: arg("--units").map_or(20_000, |s| s.parse().expect("--units N")),
        rounds: arg("--rounds").map_or(3, |s| s.parse().expect("--rounds N")),
        workers: arg("--workers").map_or(8, |s| s.parse().expect("--workers N")),
        variants: arg("--variants")
            .unwrap_or_else(|| "place_order,nested,empty,joined".into())
            .split(',')
            .map(|v| Variant::parse(v).unwrap_or_else(|| panic!("unknown variant {v}")))
            .collect(),
        only: arg("--only"),
    };
    let backend = arg("--backend").unwrap_or_else(|| "postgres".into());
    let ok = match backend.as_str() {
        "postgres" => {
            let url = std::env::var("TX_BENCH_PG_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let options: sqlx::postgres::PgConnectOptions = url.parse().expect("TX_BENCH_PG_URL");
            let hand = postgres::pool(options.clone(), "bench_hand", pool_options()).await;
            let tx = postgres::pool(options, "bench_tx", pool_options()).await;
            compare(postgres::Hand::new(hand), postgres::Shop::new(tx), &args).await
        }
        "mysql" => {
            let url = std::env::var("TX_BENCH_MYSQL_URL")
                .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
            let options: sqlx::mysql::MySqlConnectOptions =
                url.parse().expect("TX_BENCH_MYSQL_URL");
            let hand = mysql::pool(options.clone(), "bench_hand", pool_options()).await;
            let tx = mysql::pool(options, "bench_tx", pool_options()).await;
            compare(mysql::Hand::new(hand), mysql::Shop::new(tx), &args).await
        }
        "sqlite" => {
            let dir = std::env::temp_dir();
            let hand = sqlite::pool(&dir.join("tx-bench-hand.db"), pool_options()).await;
            let tx = sqlite::pool(&dir.join("tx-bench-tx.db"), pool_options()).await;
            compare(sqlite::Hand::new(hand), sqlite::Shop::new(tx), &args).await
        }
        other => panic!("unknown backend {other} (postgres|mysql|sqlite)"),
    };
    if !ok {
        std::process::exit(1);
    }
}

/// Warms both peers up, then runs each variant `rounds` times per peer, alternating which
/// peer goes first, and prints the medians and ratios; false when a check failed.
async fn compare<H: Peer, T: Peer>(hand: H, shop: T, args: &Args) -> bool {
    let (units, rounds, workers) = (args.units, args.rounds, args.workers);
    run("hand-warmup", &hand, Variant::PlaceOrder, 1000, workers).await;
    run("tx-warmup", &shop, Variant::PlaceOrder, 1000, workers).await;

    let mut all_ok = true;
    let mut summary = Vec::new();
    for &v in &args.variants {
        let (mut hand_tps, mut tx_tps) = (Vec::new(), Vec::new());
        let (mut hand_cpu, mut tx_cpu) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternate which peer goes first, so drift in the machine favours neither.
            for first_hand in [round % 2 == 0, round % 2 != 0] {
                let name = if first_hand { "sqlx" } else { "tx" };
                if args.only.as_deref().is_some_and(|o| o != name) {
                    continue;
                }
                let r = if first_hand {
                    run(name, &hand, v, units, workers).await
                } else {
                    run(name, &shop, v, units, workers).await
                };
                all_ok &= r.ok;
                let (tps, cpu) = if first_hand {
                    (&mut hand_tps, &mut hand_cpu)
                } else {
                    (&mut tx_tps, &mut tx_cpu)
                };
                tps.push(r.tps);
                cpu.push(r.cpu_us);
            }
        }
        if args.only.is_some() {
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
    println!("\nmedians over {rounds} rounds, {units} units each, {workers} workers, pool {POOL}:");
    for line in summary {
        println!("{line}");
    }
    println!("checks: {}", if all_ok { "all ok" } else { "FAILED" });
    all_ok
}
