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

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::stream::StorageType;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use tx_outbox::amqp::AmqpSink;
use tx_outbox::nats::JetStreamSink;
use tx_outbox::{Envelope, Message, Outbox, Relay, Sink, SinkError};
use tx_sqlx::{PgTxPool, TransactionTemplate, TxError};

use support::jetstream::Stream;
use support::{Running, unique};

fn number(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |v| {
        v.parse().unwrap_or_else(|_| panic!("{name} is a number"))
    })
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
    let batch = number("BENCH_BATCH", 1000);
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
    let outbox = support::fresh_outbox(db).await;
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let sink = Timed {
        inner: sink,
        acked: acked.clone(),
    };
    let relay = Relay::new(outbox.clone(), sink)
        .wake_on_notify(notify)
        .poll_interval(if notify {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(10)
        });
    let running = Running::spawn(|stopped| async move {
        relay.run(stopped).await.unwrap();
    });
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
    running.stop().await;
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

/// What one broker measured: its own acknowledged-publish rate, the relay's, and the
/// commit-to-ack latencies (p50, p99) woken by `NOTIFY` and by polling.
struct Results {
    limit: f64,
    rate: f64,
    notify: (Duration, Duration),
    polling: (Duration, Duration),
}

impl Results {
    /// The relay's measures through sinks that `sink` makes, each run on a fresh outbox.
    async fn measure<S: Sink, F: Future<Output = S>>(
        db: &PgTxPool,
        n: usize,
        limit: f64,
        sink: impl Fn() -> F,
    ) -> Results {
        let outbox = support::fresh_outbox(db).await;
        let rate = relay_rate(db, &outbox, sink().await, n).await;
        drop_outbox(db, &outbox).await;
        Results {
            limit,
            rate,
            notify: latency(db, sink().await, true).await,
            polling: latency(db, sink().await, false).await,
        }
    }

    /// `limit` and `relay` name the first two lines.
    fn print(&self, title: &str, limit: &str, relay: &str) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!("{title}");
        println!("  {:<41}{:>8.0} msg/s", format!("{limit}:"), self.limit);
        println!(
            "  {:<41}{:>8.0} msg/s ({:.0}% of the broker's rate)",
            format!("{relay}:"),
            self.rate,
            100.0 * self.rate / self.limit
        );
        for (how, (p50, p99)) in [
            ("LISTEN/NOTIFY", self.notify),
            ("polling 10 ms", self.polling),
        ] {
            println!(
                "  {:<41}p50 {:>6.1} ms, p99 {:>6.1} ms",
                format!("commit-to-ack latency, {how}:"),
                ms(p50),
                ms(p99)
            );
        }
    }
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
    let n = number("BENCH_MESSAGES", 10_000);
    let db = support::pg_pool(8).await.expect("PostgreSQL");

    // JetStream (file storage, as a real deployment would use).
    let stream = Stream::open("bench", StorageType::File)
        .await
        .expect("NATS");
    let limit = nats_limit(&stream.js, &format!("{}.limit", stream.prefix), n).await;
    let sink = || async {
        JetStreamSink::connect(&support::nats_url())
            .await
            .unwrap()
            .subject_prefix(stream.prefix.clone())
    };
    let jetstream = Results::measure(&db, n, limit, sink).await;
    stream.cleanup().await;
    jetstream.print(
        &format!("PostgreSQL + JetStream, {n} messages of 100 bytes"),
        "JetStream acked publish, one process",
        "relay, commit to PubAck",
    );

    // RabbitMQ (durable queue, persistent messages, publisher confirms).
    let url = support::amqp_url();
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let ch = conn.create_channel().await.unwrap();
    let (exchange, queue) = (unique("bench_x"), unique("bench_q"));
    support::amqp::declare(&ch, &exchange, &queue, true).await;
    let limit = amqp_limit(&url, &exchange, n).await;
    let sink = || async { AmqpSink::connect(&url, &exchange).await.unwrap() };
    let rabbitmq = Results::measure(&db, n, limit, sink).await;
    support::amqp::delete(&ch, &exchange, &queue).await;
    rabbitmq.print(
        &format!("PostgreSQL + RabbitMQ, {n} messages of 100 bytes"),
        "RabbitMQ confirmed publish, one process",
        "relay, commit to confirm",
    );
}
