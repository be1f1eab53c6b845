//! Under faults and load, nothing is lost, nothing is half-written, nothing hangs, on
//! PostgreSQL and on MariaDB: cancellation at every poll, panics at every level, sessions
//! killed by the server (`pg_terminate_backend`, `KILL CONNECTION`), the connection cut while
//! COMMIT is in flight, pool exhaustion, and the bank.
//!
//! Every test asserts the final database state, read from a fresh connection, and the
//! server's view of the pool's sessions (`pg_stat_activity` filtered by an `application_name`
//! unique to the test; `information_schema.innodb_trx` filtered by the connection ids the pool
//! opened). Skips loudly when the server is down, unless `TX_TEST_REQUIRE_SERVERS=1`.
//!
//! The scenarios live in `tx_tests::reliability`; [`reliability_suite!`] runs each on one
//! server. A server restart during a run is covered by `reliability_restart.rs`, a binary of
//! its own (it restarts the shared servers, which cargo never does while another test binary
//! runs).

use std::time::Duration;

use futures_util::FutureExt;
use tx_tests::proxy::{CommitCutProxy, CutMode, Protocol};
use tx_tests::reliability::{self, BankConfig, BankReport, KillWhen, MySqlBackend, PgBackend};
use tx_tests::reliability::{BoxFut, Server};

/// A server the suite runs on: how to open a pool on it, directly or through a proxy.
pub trait ServerUnderTest: Server {
    /// The wire protocol (for the proxy).
    const PROTOCOL: Protocol;
    /// The server's address (for the proxy).
    const ADDR: &'static str;

    /// A pool of `max` connections; `None` (test skipped) when the server is down. `tag` names
    /// the sessions where the server can show it.
    fn connect(max: u32, acquire: Duration, tag: &'static str) -> BoxFut<'static, Option<Self>>;

    /// Like [`connect`](Self::connect), through `127.0.0.1:port` (a proxy).
    fn connect_port(
        max: u32,
        acquire: Duration,
        tag: &'static str,
        port: u16,
    ) -> BoxFut<'static, Option<Self>>;

    /// Applies the shared "server missing" policy: `None` when the test must be skipped.
    fn probe() -> BoxFut<'static, Option<()>>;
}

impl ServerUnderTest for PgBackend {
    const PROTOCOL: Protocol = Protocol::Postgres;
    const ADDR: &'static str = "127.0.0.1:5432";

    fn connect(max: u32, acquire: Duration, tag: &'static str) -> BoxFut<'static, Option<Self>> {
        PgBackend::connect(max, acquire, tag).boxed()
    }

    fn connect_port(
        max: u32,
        acquire: Duration,
        tag: &'static str,
        port: u16,
    ) -> BoxFut<'static, Option<Self>> {
        PgBackend::connect_port(max, acquire, tag, Some(port)).boxed()
    }

    fn probe() -> BoxFut<'static, Option<()>> {
        tx_tests::probe_and_close(tx_tests::pg_pool(1)).boxed()
    }
}

impl ServerUnderTest for MySqlBackend {
    const PROTOCOL: Protocol = Protocol::MySql;
    const ADDR: &'static str = "127.0.0.1:3306";

    fn connect(max: u32, acquire: Duration, _tag: &'static str) -> BoxFut<'static, Option<Self>> {
        MySqlBackend::connect(max, acquire).boxed()
    }

    fn connect_port(
        max: u32,
        acquire: Duration,
        _tag: &'static str,
        port: u16,
    ) -> BoxFut<'static, Option<Self>> {
        MySqlBackend::connect_port(max, acquire, Some(port)).boxed()
    }

    fn probe() -> BoxFut<'static, Option<()>> {
        tx_tests::probe_and_close(tx_tests::mysql_pool(1)).boxed()
    }
}

fn assert_none(what: &str, violations: Vec<String>) {
    assert!(
        violations.is_empty(),
        "{what}: {} violation(s):\n  {}",
        violations.len(),
        violations.join("\n  ")
    );
}

/// A pool talking to the server through a proxy that can delay replies and cut the COMMIT.
async fn proxied<B: ServerUnderTest>(tag: &'static str, max: u32) -> Option<(B, CommitCutProxy)> {
    // Skip policy first (the proxy would hide a missing server).
    B::probe().await?;
    let proxy = CommitCutProxy::start(B::PROTOCOL, B::ADDR)
        .await
        .expect("start the proxy");
    let b = B::connect_port(max, Duration::from_secs(10), tag, proxy.port()).await?;
    Some((b, proxy))
}

/// The transaction (hooks, RequiresNew audit, Nested steps, before_commit write) is cut
/// after 1, 2, 3, ... polls until it completes. The pool talks to the server through a
/// proxy adding 1 ms of latency to every reply, so that every round trip suspends the future
/// (on loopback the answer is often already there when the client reads, and whole
/// statements would pass without a cut point between them).
pub async fn cancellation_sweep<B: ServerUnderTest>() {
    let Some((b, proxy)) = proxied::<B>("sweep", 3).await else {
        return;
    };
    proxy.set_reply_delay(Duration::from_millis(1));
    let report = reliability::cancellation_sweep(&b).await;
    eprintln!(
        "{} cancellation sweep: {} cut points, {} with the outer work committed (COMMIT in flight)",
        b.name(),
        report.cuts,
        report.committed_cuts
    );
    assert_none("cancellation sweep", report.violations);
    assert!(
        report.cuts >= 10,
        "suspiciously few cut points: {}",
        report.cuts
    );
}

/// Panics in the body, a before_commit hook and an after_commit hook, at every level.
pub async fn panics_at_every_level<B: ServerUnderTest>() {
    let Some(b) = B::connect(3, Duration::from_secs(10), "panics").await else {
        return;
    };
    assert_none("panic matrix", reliability::panic_matrix(&b).await);
}

/// The server kills the session at `when`.
async fn session_killed<B: ServerUnderTest>(tag: &'static str, when: KillWhen) {
    let Some(b) = B::connect(2, Duration::from_secs(10), tag).await else {
        return;
    };
    assert_none("kill", reliability::kill_mid_transaction(&b, when).await);
}

pub async fn session_killed_between_statements<B: ServerUnderTest>() {
    session_killed::<B>("kill_between", KillWhen::BetweenStatements).await;
}

pub async fn session_killed_during_statement<B: ServerUnderTest>() {
    session_killed::<B>("kill_during", KillWhen::DuringStatement).await;
}

pub async fn session_killed_before_commit<B: ServerUnderTest>() {
    session_killed::<B>("kill_commit", KillWhen::BeforeCommit).await;
}

/// The proxy cuts the COMMIT round trip in `mode`: the outcome is reported as unknown.
async fn commit_outcome_unknown<B: ServerUnderTest>(tag: &'static str, mode: CutMode) {
    let Some((b, proxy)) = proxied::<B>(tag, 2).await else {
        return;
    };
    assert_none(
        "commit outcome unknown",
        reliability::commit_outcome_unknown(&b, &proxy, mode).await,
    );
}

/// The COMMIT never reaches the server: it rolls back, the client cannot know.
pub async fn commit_outcome_unknown_when_commit_is_lost<B: ServerUnderTest>() {
    commit_outcome_unknown::<B>("unknown_lost", CutMode::DropCommit).await;
}

/// The server commits, the reply is lost: the client cannot know either.
pub async fn commit_outcome_unknown_when_reply_is_lost<B: ServerUnderTest>() {
    commit_outcome_unknown::<B>("unknown_reply", CutMode::DropReply).await;
}

pub async fn requires_new_with_pool_exhausted<B: ServerUnderTest>() {
    let acquire = Duration::from_millis(500);
    for catch in [false, true] {
        let Some(b) = B::connect(1, acquire, "exhaust").await else {
            return;
        };
        assert_none(
            "pool exhaustion",
            reliability::requires_new_pool_exhausted(&b, acquire, catch).await,
        );
    }
}

fn print(label: &str, r: &BankReport) {
    eprintln!(
        "{label}: {} transfers in {:?}: {} committed, {} injected failures, {} insufficient, \
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
        eprintln!("{label}: {f}");
    }
}

/// The bank on 50 accounts from 16 tasks with faults: `transfers` transfers, then
/// `deadlock_rounds` rounds of forced deadlocks, at SERIALIZABLE or the default isolation
/// (giving up after two minutes). Prints the report and asserts no invariant broke; `None`
/// (skipped) when the server is down.
async fn faulty_bank<B: ServerUnderTest>(
    tag: &'static str,
    transfers: usize,
    deadlock_rounds: usize,
    serializable: bool,
) -> Option<(BankConfig, BankReport)> {
    let b = B::connect(16, Duration::from_secs(30), tag).await?;
    let cfg = BankConfig {
        accounts: 50,
        initial: 1_000,
        transfers,
        tasks: 16,
        faults: true,
        deadlock_rounds,
        serializable,
    };
    let label = if serializable {
        "SERIALIZABLE"
    } else {
        "READ COMMITTED"
    };
    let r = tokio::time::timeout(Duration::from_secs(120), reliability::bank(&b, cfg))
        .await
        .expect("the bank hangs");
    print(&format!("{} bank ({label})", b.name()), &r);
    assert_none(&format!("bank ({label})"), r.violations.clone());
    Some((cfg, r))
}

/// 50 accounts, 16 tasks, thousands of transfers with faults; deadlocks retried.
pub async fn bank<B: ServerUnderTest>() {
    let Some((cfg, r)) = faulty_bank::<B>("bank", 4_000, 4, false).await else {
        return;
    };
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
    // Hot accounts keep deadlocking: some fault-free transfers run out of their 5 retries.
    assert_converged(&r, 1);
}

/// Retries converge: at most `percent` % of the fault-free transfers ran out of retries.
fn assert_converged(r: &BankReport, percent: usize) {
    assert!(
        r.clean_committed * 100 >= r.clean * (100 - percent),
        "retries did not converge: {}/{} fault-free transfers committed",
        r.clean_committed,
        r.clean
    );
}

/// One `#[tokio::test]` per scenario, on server `$server` (a [`ServerUnderTest`]).
macro_rules! reliability_suite {
    ($server:ty) => {
        tx_tests::generic_tests!(crate::reliability for $server:
            cancellation_sweep,
            panics_at_every_level,
            session_killed_between_statements,
            session_killed_during_statement,
            session_killed_before_commit,
            commit_outcome_unknown_when_commit_is_lost,
            commit_outcome_unknown_when_reply_is_lost,
            requires_new_with_pool_exhausted,
            bank,
        );
    };
}

mod postgres {
    use tx_tests::reliability::PgBackend;

    use super::{assert_converged, faulty_bank};

    reliability_suite!(PgBackend);

    /// The bank at SERIALIZABLE: serialization failures are retried and converge.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bank_serializable() {
        let Some((_, r)) = faulty_bank::<PgBackend>("bank_ser", 2_000, 2, true).await else {
            return;
        };
        assert!(
            r.retried > 0,
            "SERIALIZABLE under contention must have retried"
        );
        assert_eq!(r.deadlock_rounds_ok, r.deadlock_rounds);
        assert_converged(&r, 2);
    }
}

mod mariadb {
    use tx_tests::reliability::MySqlBackend;

    reliability_suite!(MySqlBackend);
}
