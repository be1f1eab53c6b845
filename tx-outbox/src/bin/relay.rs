//! `tx-outbox-relay`: a standalone relay process from an outbox table to NATS JetStream.
//!
//! Configured by environment variables:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `DATABASE_URL` | `postgres://..`, `mysql://..` or `sqlite://..` | required |
//! | `NATS_URL` | the NATS server | `127.0.0.1:4222` |
//! | `TX_OUTBOX_TABLE` | the outbox table | `tx_outbox` |
//! | `TX_OUTBOX_SUBJECT_PREFIX` | prefix of every subject (`prefix.topic`) | none |
//! | `TX_OUTBOX_BATCH` | messages per round | 100 |
//! | `TX_OUTBOX_LEASE_MS` | partition lease | 30000 |
//! | `TX_OUTBOX_POLL_MS` | poll interval | 1000 |
//! | `TX_OUTBOX_MAX_ATTEMPTS` | sends before a message is parked | 10 |
//!
//! It runs until SIGINT or SIGTERM, finishing the round in progress. Run as many as you like.

use std::time::Duration;

use tx_outbox::nats::JetStreamSink;
use tx_outbox::{Outbox, OutboxDatabase, Relay};
use tx_sqlx::TxPool;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn env_num(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a number")),
    }
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run<DB: OutboxDatabase>(db: TxPool<DB>, sink: JetStreamSink) -> Result<(), String> {
    let table = env_or("TX_OUTBOX_TABLE", tx_outbox::DEFAULT_OUTBOX_TABLE);
    let outbox = Outbox::with_table(db, &table).map_err(|e| e.to_string())?;
    let relay = Relay::new(outbox, sink)
        .batch(env_num("TX_OUTBOX_BATCH", 100)? as usize)
        .lease(Duration::from_millis(env_num(
            "TX_OUTBOX_LEASE_MS",
            30_000,
        )?))
        .poll_interval(Duration::from_millis(env_num("TX_OUTBOX_POLL_MS", 1000)?))
        .max_attempts(env_num("TX_OUTBOX_MAX_ATTEMPTS", 10)? as u32);
    eprintln!("tx-outbox-relay: relaying table {table}");
    relay.run(shutdown()).await.map_err(|e| e.to_string())
}

async fn main_() -> Result<(), String> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL".to_owned())?;
    let nats = env_or("NATS_URL", "127.0.0.1:4222");
    let mut sink = JetStreamSink::connect(&nats)
        .await
        .map_err(|e| format!("NATS at {nats}: {e}"))?;
    if let Ok(prefix) = std::env::var("TX_OUTBOX_SUBJECT_PREFIX") {
        sink = sink.subject_prefix(prefix);
    }
    let connect_err = |e: sqlx::Error| format!("database {url}: {e}");
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(&url).await.map_err(connect_err)?;
        run(TxPool::new(pool), sink).await
    } else if url.starts_with("mysql") || url.starts_with("mariadb") {
        let pool = sqlx::MySqlPool::connect(&url).await.map_err(connect_err)?;
        run(TxPool::new(pool), sink).await
    } else if url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(&url).await.map_err(connect_err)?;
        run(TxPool::new(pool), sink).await
    } else {
        Err(format!(
            "DATABASE_URL {url:?}: expected postgres://, mysql:// or sqlite://"
        ))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = main_().await {
        eprintln!("tx-outbox-relay: {e}");
        std::process::exit(1);
    }
}
