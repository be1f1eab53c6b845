//! Issue 7 on MariaDB: under faults and load, nothing is lost, nothing is half-written,
//! nothing hangs. Cancellation at every poll, panics at every level, sessions killed by the
//! server (`KILL CONNECTION`), the connection cut while COMMIT is in flight, pool exhaustion,
//! and the bank.
//!
//! Every test asserts the final database state, read from a fresh connection, and the
//! server's view of the pool's sessions (`information_schema.innodb_trx`, filtered by the
//! connection ids the pool opened). Skips loudly when MariaDB is down, unless
//! `TX_TEST_REQUIRE_SERVERS=1`.
//!
//! A server restart during a run is covered by `reliability_restart.rs`, a binary of its own
//! (it restarts the shared servers, which cargo never does while another test binary runs).

use std::time::Duration;

use tx_tests::proxy::{CommitCutProxy, CutMode, Protocol};
use tx_tests::reliability::{self, BankConfig, KillWhen, MySqlBackend};

fn assert_none(what: &str, violations: Vec<String>) {
    assert!(
        violations.is_empty(),
        "{what}: {} violation(s):\n  {}",
        violations.len(),
        violations.join("\n  ")
    );
}

/// The transaction (hooks, RequiresNew audit, Nested steps, before_commit write) is cut
/// after 1, 2, 3, ... polls until it completes, through a proxy adding 1 ms of latency to
/// every reply so that every round trip suspends the future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_sweep() {
    let Some((b, proxy)) = proxied(3).await else {
        return;
    };
    proxy.set_reply_delay(Duration::from_millis(1));
    let report = reliability::cancellation_sweep(&b).await;
    eprintln!(
        "MariaDB cancellation sweep: {} cut points, {} with the outer work committed (COMMIT in flight)",
        report.cuts, report.committed_cuts
    );
    assert_none("cancellation sweep", report.violations);
    assert!(
        report.cuts >= 10,
        "suspiciously few cut points: {}",
        report.cuts
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_at_every_level() {
    let Some(b) = MySqlBackend::connect(3, Duration::from_secs(10)).await else {
        return;
    };
    assert_none("panic matrix", reliability::panic_matrix(&b).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_killed_between_statements() {
    let Some(b) = MySqlBackend::connect(2, Duration::from_secs(10)).await else {
        return;
    };
    assert_none(
        "kill",
        reliability::kill_mid_transaction(&b, KillWhen::BetweenStatements).await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_killed_during_statement() {
    let Some(b) = MySqlBackend::connect(2, Duration::from_secs(10)).await else {
        return;
    };
    assert_none(
        "kill",
        reliability::kill_mid_transaction(&b, KillWhen::DuringStatement).await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_killed_before_commit() {
    let Some(b) = MySqlBackend::connect(2, Duration::from_secs(10)).await else {
        return;
    };
    assert_none(
        "kill",
        reliability::kill_mid_transaction(&b, KillWhen::BeforeCommit).await,
    );
}

async fn proxied(max: u32) -> Option<(MySqlBackend, CommitCutProxy)> {
    let probe = tx_tests::mysql_pool(1).await?;
    probe.pool().close().await;
    let proxy = CommitCutProxy::start(Protocol::MySql, "127.0.0.1:3306")
        .await
        .expect("start the proxy");
    let b = MySqlBackend::connect_port(max, Duration::from_secs(10), Some(proxy.port())).await?;
    Some((b, proxy))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_outcome_unknown_when_commit_is_lost() {
    let Some((b, proxy)) = proxied(2).await else {
        return;
    };
    assert_none(
        "commit outcome unknown",
        reliability::commit_outcome_unknown(&b, &proxy, CutMode::DropCommit).await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_outcome_unknown_when_reply_is_lost() {
    let Some((b, proxy)) = proxied(2).await else {
        return;
    };
    assert_none(
        "commit outcome unknown",
        reliability::commit_outcome_unknown(&b, &proxy, CutMode::DropReply).await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requires_new_with_pool_exhausted() {
    let acquire = Duration::from_millis(500);
    for catch in [false, true] {
        let Some(b) = MySqlBackend::connect(1, acquire).await else {
            return;
        };
        assert_none(
            "pool exhaustion",
            reliability::requires_new_pool_exhausted(&b, acquire, catch).await,
        );
    }
}

/// 50 accounts, 16 tasks, thousands of transfers with faults; deadlocks retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank() {
    let Some(b) = MySqlBackend::connect(16, Duration::from_secs(30)).await else {
        return;
    };
    let cfg = BankConfig {
        accounts: 50,
        initial: 1_000,
        transfers: 4_000,
        tasks: 16,
        faults: true,
        deadlock_rounds: 4,
        serializable: false,
    };
    let r = tokio::time::timeout(Duration::from_secs(120), reliability::bank(&b, cfg))
        .await
        .expect("the bank hangs");
    eprintln!(
        "MariaDB bank: {} transfers in {:?}: {} committed, {} injected failures, {} insufficient, \
         {} cancelled ({} of them committed), {} other failures; fault-free {}/{} committed; {} retried; \
         forced deadlocks: {}/{} rounds both committed, {} retried",
        r.transfers,
        r.elapsed,
        r.committed,
        r.injected_failures,
        r.insufficient,
        r.unknown,
        r.unknown_committed,
        r.other_failures,
        r.clean_committed,
        r.clean,
        r.retried,
        r.deadlock_rounds_ok,
        r.deadlock_rounds,
        r.deadlock_rounds_retried,
    );
    for f in &r.other_failure_samples {
        eprintln!("MariaDB bank: {f}");
    }
    assert_none("bank", r.violations.clone());
    assert_eq!(r.transfers, cfg.transfers + cfg.deadlock_rounds * 16);
    assert!(
        r.injected_failures > 0 && r.unknown > 0,
        "the faults were injected"
    );
    assert!(
        r.unexpected_rollbacks > 0,
        "rollback-only participants give UnexpectedRollback"
    );
    assert_eq!(
        r.deadlock_rounds_ok, r.deadlock_rounds,
        "retry resolves every forced deadlock"
    );
    assert_eq!(
        r.deadlock_rounds_retried, r.deadlock_rounds,
        "every forced deadlock really happened"
    );
    // Retries converge: at most 1% of the fault-free transfers may run out of their 5
    // retries (hot accounts keep deadlocking).
    assert!(
        r.clean_committed * 100 >= r.clean * 99,
        "retries did not converge: {}/{} fault-free transfers committed",
        r.clean_committed,
        r.clean
    );
}
