//! The observe demo (`cargo run --example observe`) run end to end on SQLite with a Prometheus
//! recorder installed: what its listener saw, line by line, the rows it left, and the
//! counters and histograms a scrape returns (savepoints and joined calls count nothing).

use metrics_exporter_prometheus::PrometheusBuilder;
use tx_examples::observe::{ListenerLog, run_demo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_demo_reports_every_transaction_to_the_listener_and_the_recorder() {
    let prometheus = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1, 1.0])
        .unwrap()
        .install_recorder()
        .expect("the only recorder of this test binary");
    tx_sqlx::describe_metrics();
    let listener = ListenerLog::default();
    tx_sqlx::add_transaction_listener(listener.clone());
    let dir = tempfile::tempdir().unwrap();

    let outcome = run_demo(dir.path()).await.unwrap();
    assert_eq!(outcome.balances, [(0, 5), (1, 70), (2, 80), (3, 0)]);
    assert!(!outcome.bonus_granted);
    assert_eq!(outcome.failed_transfer, "insufficient balance in account 2");
    assert!(outcome.timed_out_report.contains("timed out"));

    let lines = listener.lines();
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l.split(" [").next().unwrap())
        .collect();
    // Ids are unique per process and grow: a savepoint names its transaction.
    let (t1, t2, t3, t5) = (ids[0], ids[2], ids[4], ids[8]);
    let savepoint = ids[5];
    assert!(savepoint.starts_with("savepoint ") && savepoint.ends_with(&format!("of {t3}")));
    let expected = [
        format!("{t1} [bank::transfer] on sqlite: began"),
        format!("{t1} [bank::transfer] on sqlite: committed"),
        format!("{t2} [bank::transfer] on sqlite: began"),
        format!("{t2} [bank::transfer] on sqlite: rolled back (error)"),
        format!("{t3} [bank::open_account] on sqlite: began"),
        format!("{savepoint} [bank::welcome_bonus] on sqlite: began"),
        format!("{savepoint} [bank::welcome_bonus] on sqlite: rolled back (error)"),
        format!("{t3} [bank::open_account] on sqlite: committed"),
        format!("{t5} [bank::slow_report] on sqlite: began"),
        format!("{t5} [bank::slow_report] on sqlite: rolled back (timeout)"),
    ];
    assert_eq!(lines, expected);
    assert!(t1 != t2 && t2 != t3 && t3 != t5);

    let scraped = prometheus.render();
    for line in [
        "# TYPE tx_transactions_total counter",
        r#"tx_transactions_total{name="bank::transfer",outcome="committed"} 1"#,
        r#"tx_transactions_total{name="bank::transfer",outcome="rolled_back"} 1"#,
        r#"tx_transactions_total{name="bank::open_account",outcome="committed"} 1"#,
        r#"tx_transactions_total{name="bank::slow_report",outcome="rolled_back"} 1"#,
        r#"tx_rollbacks_total{name="bank::transfer",cause="error"} 1"#,
        r#"tx_rollbacks_total{name="bank::slow_report",cause="timeout"} 1"#,
        r#"tx_timeouts_total{name="bank::slow_report"} 1"#,
        "# TYPE tx_transaction_duration_seconds histogram",
        r#"tx_transaction_duration_seconds_count{name="bank::transfer"} 2"#,
        r#"tx_transaction_duration_seconds_count{name="bank::slow_report"} 1"#,
        r#"tx_connection_hold_seconds_count{name="bank::transfer"} 2"#,
        r#"tx_connection_hold_seconds_count{name="bank::open_account"} 1"#,
        // The report held its connection past its 50 ms deadline, until the rollback.
        r#"tx_connection_hold_seconds_bucket{name="bank::slow_report",le="0.01"} 0"#,
    ] {
        assert!(
            scraped.lines().any(|l| l == line),
            "missing {line:?} in:\n{scraped}"
        );
    }
    assert!(
        !scraped.contains("welcome_bonus"),
        "savepoints are not transactions"
    );
    assert!(!scraped.contains("tx_retries_total"), "nothing was retried");
}
