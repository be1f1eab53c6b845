//! The outbox end to end on the real brokers (NATS JetStream, RabbitMQ) with PostgreSQL, and
//! its faults: each test asserts the end state. Every message published in a committed
//! transaction arrives and is handled exactly once through the inbox; none from a rolled-back
//! transaction does.
//!
//! Modules: `fixtures` (the database side and the checks), `faults` (failing sinks),
//! `jetstream` and `rabbitmq` (each broker's fixture and tests); the database fault is here.

#[path = "../support/mod.rs"]
mod support;

mod faults;
mod fixtures;
mod jetstream;
mod rabbitmq;

use std::time::Duration;

use tx_sqlx::PgTxPool;

use support::unique;

/// The database side of [`support::database_fault`] without restarting the shared server:
/// every session of this test's pool (the publisher's, the relay's, its `LISTEN` connection,
/// the consumer's) is terminated, three times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sessions_killed_under_the_relay() {
    let app = unique("obkill");
    let opts: sqlx::postgres::PgConnectOptions = support::pg_url().parse().unwrap();
    let pool = match sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with(opts.application_name(&app))
        .await
    {
        Ok(p) => PgTxPool::new(p),
        Err(e) => return support::server_missing("PostgreSQL", &e),
    };
    support::database_fault::relay_through(pool, || async move {
        let killer = support::pg_pool(1).await.unwrap();
        for _ in 0..3 {
            sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
                .bind(&app)
                .execute(killer.pool())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}
