//! Relay throughput and latency on PostgreSQL with NATS JetStream and RabbitMQ, next to each
//! broker's own acknowledged-publish rate from one process (the limit a relay can reach).
//!
//! ```text
//! cargo bench -p tx-outbox --features nats,amqp --bench relay
//! TX_TEST_PG_URL=... TX_TEST_NATS_URL=... TX_TEST_AMQP_URL=... BENCH_MESSAGES=20000 cargo bench ...
//! ```
//!
//! * **broker limit**: `BENCH_MESSAGES` messages published from one connection, pipelined in
//!   windows of 200, each counted when its PubAck / publisher confirm arrives.
//! * **relay throughput**: the same number of messages committed to the outbox first (over
//!   200 keys), then one relay started (batches of `BENCH_BATCH`, default 1000); messages per second from its start until the last
//!   broker acknowledgement was recorded in the outbox.
//! * **commit-to-ack latency**: one message per transaction at a steady rate well below
//!   saturation (200/s); for each, the time from the return of its `COMMIT` to its broker
//!   acknowledgement, with `LISTEN`/`NOTIFY` and with polling every 10 ms.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use tx_outbox::amqp::AmqpSink;
use tx_outbox::nats::JetStreamSink;
use tx_outbox::{Envelope, Message, Outbox, Relay, Sink, SinkError};
use tx_sqlx::{PgTxPool, TransactionTemplate, TxError};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn messages() -> usize {
    env("BENCH_MESSAGES", "10000")
        .parse()
        .expect("BENCH_MESSAGES is a number")
}

fn name(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), fastrand::u32(..))
}

async fn pool() -> PgTxPool {
    let url = env("TX_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432/test");
    PgTxPool::new(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await
            .expect("PostgreSQL"),
    )
}

async fn fresh_outbox(db: &PgTxPool) -> Outbox<sqlx::Postgres> {
    let outbox = Outbox::with_table(db.clone(), &name("bench_ob")).unwrap();
    outbox.install().await.unwrap();
    outbox
}

async fn drop_outbox(db: &PgTxPool, outbox: &Outbox<sqlx::Postgres>) {
    for t in [
        outbox.table().to_owned(),
        format!("{}_partitions", outbox.table()),
    ] {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {t}")))
            .execute(db.pool())
            .await;
    }
}

/// Commits `n` messages over 200 keys, 100 per transaction.
async fn fill(db: &PgTxPool, outbox: &Outbox<sqlx::Postgres>, n: usize) {
    for start in (0..n).step_by(100) {
        TransactionTemplate::new(db.clone())
            .execute(|_| {
                let outbox = outbox.clone();
                async move {
                    for i in start..(start + 100).min(n) {
                        outbox
                            .publish(
                                Message::new("ev", vec![b'x'; 100]).key(format!("k{}", i % 200)),
                            )
                            .await?;
                    }
                    Ok::<_, TxError>(())
                }
            })
            .await
            .unwrap();
    }
}

/// Relays everything pending with one relay; messages per second.
async fn relay_rate<S: Sink>(
    db: &PgTxPool,
    outbox: &Outbox<sqlx::Postgres>,
    sink: S,
    n: usize,
) -> f64 {
    fill(db, outbox, n).await;
    let batch = env("BENCH_BATCH", "1000")
        .parse()
        .expect("BENCH_BATCH is a number");
    let relay = Relay::new(outbox.clone(), sink).batch(batch);
    let start = Instant::now();
    while outbox.stats().await.unwrap().pending > 0 {
        relay.run_once().await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Records when each message's acknowledgement came back.
struct Timed<S> {
    inner: S,
    acked: Arc<Mutex<HashMap<String, Instant>>>,
}

impl<S: Sink> Sink for Timed<S> {
    async fn send(&self, batch: &[Envelope]) -> Vec<Result<(), SinkError>> {
        let r = self.inner.send(batch).await;
        let now = Instant::now();
        let mut acked = self.acked.lock().unwrap();
        for (m, res) in batch.iter().zip(&r) {
            if res.is_ok() {
                acked.insert(m.id.to_string(), now);
            }
        }
        r
    }
}

/// p50 and p99 of commit-to-ack over 400 messages at 200/s.
async fn latency<S: Sink>(db: &PgTxPool, sink: S, notify: bool) -> (Duration, Duration) {
    let outbox = fresh_outbox(db).await;
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let relay = Arc::new(
        Relay::new(
            outbox.clone(),
            Timed {
                inner: sink,
                acked: acked.clone(),
            },
        )
        .wake_on_notify(notify)
        .poll_interval(if notify {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(10)
        }),
    );
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let task = {
        let relay = relay.clone();
        tokio::spawn(async move {
            relay
                .run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .unwrap();
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut committed = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for i in 0..400 {
        tick.tick().await;
        let id = TransactionTemplate::new(db.clone())
            .execute(|_| {
                let outbox = outbox.clone();
                async move {
                    outbox
                        .publish(Message::new("ev", vec![b'x'; 100]).key(format!("k{}", i % 20)))
                        .await
                }
            })
            .await
            .unwrap();
        committed.push((id.to_string(), Instant::now()));
    }
    while outbox.stats().await.unwrap().pending > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    let mut lat: Vec<Duration> = {
        let acked = acked.lock().unwrap();
        committed
            .iter()
            .map(|(id, at)| acked[id].saturating_duration_since(*at))
            .collect()
    };
    lat.sort();
    drop_outbox(db, &outbox).await;
    (lat[lat.len() / 2], lat[lat.len() * 99 / 100])
}

async fn nats_limit(js: &jetstream::Context, subject: &str, n: usize) -> f64 {
    let start = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let mut acks = Vec::new();
        for i in chunk {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("limit-{i}-{}", std::process::id()));
            acks.push(
                js.publish_with_headers(subject.to_owned(), h, vec![b'x'; 100].into())
                    .await
                    .unwrap(),
            );
        }
        for a in acks {
            a.await.unwrap();
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn amqp_limit(url: &str, exchange: &str, n: usize) -> f64 {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let start = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let mut confirms = Vec::new();
        for _ in chunk {
            confirms.push(
                ch.basic_publish(
                    exchange.into(),
                    "ev".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &[b'x'; 100],
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap(),
            );
        }
        for c in confirms {
            c.await.unwrap();
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let n = messages();
    let db = pool().await;

    // JetStream (file storage, as a real deployment would use).
    let client = async_nats::connect(env("TX_TEST_NATS_URL", "127.0.0.1:4222"))
        .await
        .expect("NATS");
    let js = jetstream::new(client);
    let prefix = name("bench");
    let stream = prefix.to_uppercase();
    js.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let limit = nats_limit(&js, &format!("{prefix}.limit"), n).await;
    let outbox = fresh_outbox(&db).await;
    let sink = || async {
        JetStreamSink::connect(&env("TX_TEST_NATS_URL", "127.0.0.1:4222"))
            .await
            .unwrap()
            .subject_prefix(prefix.clone())
    };
    let rate = relay_rate(&db, &outbox, sink().await, n).await;
    drop_outbox(&db, &outbox).await;
    let (n50, n99) = latency(&db, sink().await, true).await;
    let (p50, p99) = latency(&db, sink().await, false).await;
    let _ = js.delete_stream(&stream).await;
    println!("PostgreSQL + JetStream, {n} messages of 100 bytes");
    println!("  JetStream acked publish, one process:   {limit:>8.0} msg/s");
    println!(
        "  relay, commit to PubAck:                {rate:>8.0} msg/s ({:.0}% of the broker's rate)",
        100.0 * rate / limit
    );
    println!(
        "  commit-to-ack latency, LISTEN/NOTIFY:   p50 {:>6.1} ms, p99 {:>6.1} ms",
        ms(n50),
        ms(n99)
    );
    println!(
        "  commit-to-ack latency, polling 10 ms:   p50 {:>6.1} ms, p99 {:>6.1} ms",
        ms(p50),
        ms(p99)
    );

    // RabbitMQ (durable queue, persistent messages, publisher confirms).
    let url = env("TX_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let ch = conn.create_channel().await.unwrap();
    let (exchange, queue) = (name("bench_x"), name("bench_q"));
    ch.exchange_declare(
        exchange.as_str().into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "ev".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let limit = amqp_limit(&url, &exchange, n).await;
    let outbox = fresh_outbox(&db).await;
    let rate = relay_rate(
        &db,
        &outbox,
        AmqpSink::connect(&url, &exchange).await.unwrap(),
        n,
    )
    .await;
    drop_outbox(&db, &outbox).await;
    let (n50, n99) = latency(&db, AmqpSink::connect(&url, &exchange).await.unwrap(), true).await;
    let (p50, p99) = latency(
        &db,
        AmqpSink::connect(&url, &exchange).await.unwrap(),
        false,
    )
    .await;
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = ch
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    println!("PostgreSQL + RabbitMQ, {n} messages of 100 bytes");
    println!("  RabbitMQ confirmed publish, one process: {limit:>8.0} msg/s");
    println!(
        "  relay, commit to confirm:                {rate:>8.0} msg/s ({:.0}% of the broker's rate)",
        100.0 * rate / limit
    );
    println!(
        "  commit-to-ack latency, LISTEN/NOTIFY:    p50 {:>6.1} ms, p99 {:>6.1} ms",
        ms(n50),
        ms(n99)
    );
    println!(
        "  commit-to-ack latency, polling 10 ms:    p50 {:>6.1} ms, p99 {:>6.1} ms",
        ms(p50),
        ms(p99)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
