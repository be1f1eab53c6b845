//! Observing transactions: a process-wide listener and Prometheus metrics on a small bank
//! (SQLite in a temporary directory, no set-up).
//!
//! ```text
//! cargo run --example observe                    # listener lines, then the scraped metrics
//! RUST_LOG=tx=debug cargo run --example observe  # + the engine's lines inside each tx span
//! ```
//!
//! The engine reports to the `metrics` facade (tx-sqlx's feature `metrics`); this program
//! installs `metrics-exporter-prometheus` as the recorder and prints what a scrape of
//! `/metrics` would return, without serving it.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use metrics_exporter_prometheus::PrometheusBuilder;
use tx_examples::demo;
use tx_examples::observe::{ListenerLog, run_demo};

const BUCKETS: [f64; 6] = [0.001, 0.005, 0.025, 0.1, 0.5, 2.5];

#[tokio::main]
async fn main() -> ExitCode {
    demo::init_logging();

    // Latency buckets in seconds: histograms rather than the exporter's default summaries.
    let builder = PrometheusBuilder::new().set_buckets(&BUCKETS);
    let prometheus = match builder.and_then(PrometheusBuilder::install_recorder) {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("cannot install the Prometheus recorder: {e}");
            return ExitCode::FAILURE;
        }
    };
    tx_sqlx::describe_metrics();
    let listener = ListenerLog::default();
    tx_sqlx::add_transaction_listener(listener.clone());

    let dir = match demo::temp_dir() {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    let outcome = match run_demo(dir.path()).await {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("demo failed: {e}");
            return ExitCode::FAILURE;
        }
    };

    println!("What the transaction listener saw:");
    for line in listener.lines() {
        println!("  {line}");
    }
    println!();
    println!("  transfer of 500: {}", outcome.failed_transfer);
    println!("  slow report: {}", outcome.timed_out_report);
    println!(
        "  welcome bonus for carol: {}",
        if outcome.bonus_granted {
            "granted"
        } else {
            "refused, rolled back to its savepoint"
        }
    );
    println!("  balances (id, balance): {:?}", outcome.balances);
    println!();
    println!("What a Prometheus scrape returns:");
    print!("{}", prometheus.render());
    ExitCode::SUCCESS
}
