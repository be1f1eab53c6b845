//! The outbox end to end on the real brokers (NATS JetStream, RabbitMQ) with PostgreSQL, and
//! its faults: each test asserts the end state. Every message published in a committed
//! transaction arrives and is handled exactly once through the inbox; none from a rolled-back
//! transaction does.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicQosOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use support::{CutProxy, Running, eventually, unique};
use tx_outbox::amqp::AmqpSink;
use tx_outbox::nats::JetStreamSink;
use tx_outbox::{Delivery, Envelope, Inbox, Message, Outbox, Relay, Sink, SinkError};
use tx_sqlx::{PgTxPool, TransactionTemplate, TxError};

type Pg = sqlx::Postgres;

const LIMIT: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------------------------------------
// Servers and fixtures
// ---------------------------------------------------------------------------------------------

/// A broker connection, or `None` (the test is skipped) when `what` cannot be reached within
/// 5 s.
async fn within_5s<T, E: std::fmt::Display>(
    what: &str,
    connect: impl std::future::Future<Output = Result<T, E>>,
) -> Option<T> {
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            support::server_missing(what, &e);
            None
        }
        Err(e) => {
            support::server_missing(what, &e);
            None
        }
    }
}

/// A JetStream stream of this test (memory storage), deleted by `cleanup`.
struct Stream {
    js: jetstream::Context,
    name: String,
    prefix: String,
}

impl Stream {
    async fn open() -> Option<Stream> {
        let client = within_5s("NATS", async_nats::connect(support::nats_url())).await?;
        let js = jetstream::new(client);
        let prefix = unique("ob");
        let name = prefix.to_uppercase();
        js.create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            storage: jetstream::stream::StorageType::Memory,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("create the test stream");
        Some(Stream { js, name, prefix })
    }

    /// A sink on its own connection (optionally through `via`), publishing under the prefix.
    async fn sink(&self, via: Option<&str>) -> JetStreamSink {
        let url = via.map_or_else(support::nats_url, str::to_owned);
        JetStreamSink::connect(&url)
            .await
            .expect("connect the sink")
            .ack_timeout(Duration::from_secs(2))
            .subject_prefix(self.prefix.clone())
    }

    async fn count(&self) -> u64 {
        let mut s = self.js.get_stream(&self.name).await.unwrap();
        s.info().await.unwrap().state.messages
    }

    async fn cleanup(self) {
        let _ = self.js.delete_stream(&self.name).await;
    }
}

/// The database side of a test: the outbox, the consumer's inbox and its `handled` table.
struct Shop {
    db: PgTxPool,
    outbox: Outbox<Pg>,
    inbox: Inbox<Pg>,
    handled: String,
}

impl Shop {
    async fn open(pool_size: u32) -> Option<Shop> {
        Shop::on(support::pg_pool(pool_size).await?).await
    }

    async fn on(db: PgTxPool) -> Option<Shop> {
        let outbox = Outbox::with_table(db.clone(), &unique("ob")).unwrap();
        outbox.install().await.unwrap();
        let inbox = Inbox::with_table(db.clone(), &unique("ib")).unwrap();
        inbox.install().await.unwrap();
        let handled = unique("handled");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {handled} (message_id TEXT NOT NULL, k TEXT NOT NULL, seq BIGINT NOT NULL)"
        )))
        .execute(db.pool())
        .await
        .unwrap();
        Some(Shop {
            db,
            outbox,
            inbox,
            handled,
        })
    }

    /// Runs `sql` (naming the outbox table `{t}`) outside any transaction.
    async fn on_outbox(&self, sql: &str) {
        let sql = sql.replace("{t}", self.outbox.table());
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(self.db.pool())
            .await
            .unwrap();
    }

    /// Publishes `(key, seq)` messages in one transaction that commits or rolls back.
    async fn publish(&self, items: &[(String, i64)], commit: bool) {
        let r: Result<(), TxError> = TransactionTemplate::new(self.db.clone())
            .execute(|_| {
                let (outbox, items) = (self.outbox.clone(), items.to_vec());
                async move {
                    for (k, seq) in items {
                        let body = serde_json::json!({ "k": k, "seq": seq, "committed": commit });
                        outbox
                            .publish(Message::json("ev", &body).unwrap().key(k))
                            .await?;
                    }
                    if commit {
                        Ok(())
                    } else {
                        Err(TxError::UnexpectedRollback)
                    }
                }
            })
            .await;
        assert_eq!(r.is_ok(), commit);
    }

    /// Publishes `keys` x `per_key` committed messages (interleaved, `chunk` per transaction)
    /// and a rolled-back transaction after every fourth one; returns the committed count.
    async fn publish_load(&self, keys: usize, per_key: i64, chunk: usize) -> usize {
        let mut all = Vec::new();
        for seq in 0..per_key {
            for k in 0..keys {
                all.push((format!("k{k}"), seq));
            }
        }
        for (n, c) in all.chunks(chunk).enumerate() {
            self.publish(c, true).await;
            if n.is_multiple_of(4) {
                let ghost: Vec<(String, i64)> = c.iter().map(|(k, _)| (k.clone(), -1)).collect();
                self.publish(&ghost[..ghost.len().min(3)], false).await;
            }
        }
        all.len()
    }

    /// The consumer's handler: records the message in the `handled` table (in the inbox's
    /// transaction) and in `order` (in handling order).
    fn handler(
        &self,
        order: Arc<Mutex<Vec<(String, i64)>>>,
        fail: Arc<dyn Fn(&Delivery) -> bool + Send + Sync>,
    ) -> impl Fn(
        Delivery,
    )
        -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), TxError>> + Send>>
    + Clone
    + Send
    + Sync
    + 'static {
        let db = self.db.clone();
        let insert = format!(
            "INSERT INTO {} (message_id, k, seq) VALUES ($1, $2, $3)",
            self.handled
        );
        move |d: Delivery| {
            let (db, insert, order, fail) =
                (db.clone(), insert.clone(), order.clone(), fail.clone());
            Box::pin(async move {
                let body: serde_json::Value = d
                    .json()
                    .map_err(|e| TxError::database(tx_sqlx::Operation::Statement, false, e))?;
                assert_eq!(
                    body["committed"], true,
                    "a rolled-back message arrived: {body}"
                );
                let k = body["k"].as_str().unwrap().to_owned();
                let seq = body["seq"].as_i64().unwrap();
                assert_eq!(
                    d.key.as_deref(),
                    Some(k.as_str()),
                    "the key travels with the message"
                );
                if fail(&d) {
                    return Err(TxError::UnexpectedRollback);
                }
                sqlx::query(sqlx::AssertSqlSafe(insert))
                    .bind(&d.message_id)
                    .bind(&k)
                    .bind(seq)
                    .execute(&db)
                    .await?;
                order.lock().unwrap().push((k, seq));
                Ok(())
            })
        }
    }

    /// Waits until `expected` messages are handled, then checks the end state: each handled
    /// exactly once (by message id and by key/seq), none from a rolled-back transaction,
    /// nothing pending or parked in the outbox.
    async fn assert_end_state(&self, expected: usize) {
        let count = format!("SELECT COUNT(*) FROM {}", self.handled);
        eventually(LIMIT, "every committed message handled", || async {
            let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(count.clone()))
                .fetch_one(self.db.pool())
                .await
                .unwrap();
            assert!(
                n as usize <= expected,
                "more handled ({n}) than published ({expected})"
            );
            (n as usize == expected).then_some(())
        })
        .await;
        let (ids, pairs, ghosts): (i64, i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(DISTINCT message_id), COUNT(DISTINCT (k, seq)), COUNT(*) FILTER (WHERE seq < 0) FROM {}",
            self.handled
        )))
        .fetch_one(self.db.pool())
        .await
        .unwrap();
        assert_eq!(
            (ids as usize, pairs as usize, ghosts),
            (expected, expected, 0)
        );
        // The relay records a delivery after the broker's acknowledgement, which may come
        // after the consumer already handled the message.
        eventually(LIMIT, "the outbox drained", || async {
            let stats = self.outbox.stats().await.unwrap();
            assert_eq!(stats.failed, 0, "nothing parked");
            (stats.pending == 0).then_some(())
        })
        .await;
    }
}

/// A stream and a shop for a JetStream test; `None` (the test is skipped) when a server is
/// missing.
async fn jetstream_and_shop(pool_size: u32) -> Option<(Stream, Shop)> {
    let stream = Stream::open().await?;
    Some((stream, Shop::open(pool_size).await?))
}

/// An exchange, a queue and a shop for a RabbitMQ test; `None` when a server is missing.
async fn rabbitmq_and_shop(pool_size: u32) -> Option<(Rabbit, Shop)> {
    let rabbit = Rabbit::open().await?;
    Some((rabbit, Shop::open(pool_size).await?))
}

/// Each key's handled sequence numbers are 0, 1, 2, ... in order.
fn assert_per_key_order(order: &[(String, i64)], keys: usize, per_key: i64) {
    let mut by_key: HashMap<&str, Vec<i64>> = HashMap::new();
    for (k, s) in order {
        by_key.entry(k).or_default().push(*s);
    }
    assert_eq!(by_key.len(), keys);
    let want: Vec<i64> = (0..per_key).collect();
    for (k, seqs) in by_key {
        assert_eq!(seqs, want, "order of key {k}");
    }
}

/// A JetStream consumer through the inbox, as a task.
fn spawn_js_consumer(
    shop: &Shop,
    stream: &Stream,
    order: Arc<Mutex<Vec<(String, i64)>>>,
    fail: Arc<dyn Fn(&Delivery) -> bool + Send + Sync>,
) -> Running {
    spawn_js_consumer_in_lanes(shop, stream, order, fail, 1)
}

/// The same, handling `lanes` keys at once (per-key order kept).
fn spawn_js_consumer_in_lanes(
    shop: &Shop,
    stream: &Stream,
    order: Arc<Mutex<Vec<(String, i64)>>>,
    fail: Arc<dyn Fn(&Delivery) -> bool + Send + Sync>,
    lanes: usize,
) -> Running {
    let handler = shop.handler(order, fail);
    let inbox = shop.inbox.clone();
    let js = stream.js.clone();
    let name = stream.name.clone();
    Running::spawn(|stopped| async move {
        let consumer = tx_outbox::nats::durable_pull_consumer(
            &js,
            &name,
            "inventory",
            "",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        tx_outbox::nats::consume_in_lanes(
            &inbox,
            "inventory",
            &consumer,
            Duration::from_millis(10),
            lanes,
            handler,
            stopped,
        )
        .await
        .unwrap();
    })
}

/// Runs `relay` once at a time until the outbox of `shop` has nothing pending.
async fn drain<S: Sink>(relay: &Relay<Pg, S>, shop: &Shop, what: &str) {
    eventually(LIMIT, what, || async {
        relay.run_once().await.unwrap();
        (shop.outbox.stats().await.unwrap().pending == 0).then_some(())
    })
    .await;
}

/// Cuts the connections through `proxy` four times at random moments, and checks that at
/// least one cut came while work was pending.
async fn cut_four_times(proxy: &CutProxy, shop: &Shop) {
    let mut cuts_mid_run = 0;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(30..80))).await;
        if shop.outbox.stats().await.unwrap().pending > 0 {
            cuts_mid_run += 1;
        }
        proxy.cut();
    }
    assert!(cuts_mid_run > 0, "no cut happened while work was pending");
}

/// Starts a JetStream consumer and waits until the `expected` committed messages (`keys` x
/// `per_key`) are handled: each once, stored once in the stream, in order per key. The
/// consumer goes on running.
async fn consume_all_once(
    shop: &Shop,
    stream: &Stream,
    expected: usize,
    keys: usize,
    per_key: i64,
) -> Running {
    let order = Arc::new(Mutex::new(Vec::new()));
    let consumer = spawn_js_consumer(shop, stream, order.clone(), never());
    shop.assert_end_state(expected).await;
    assert_eq!(stream.count().await, expected as u64);
    assert_per_key_order(&order.lock().unwrap(), keys, per_key);
    consumer
}

fn never() -> Arc<dyn Fn(&Delivery) -> bool + Send + Sync> {
    Arc::new(|_| false)
}

fn relay<S: Sink>(shop: &Shop, sink: S) -> Relay<Pg, S> {
    Relay::new(shop.outbox.clone(), sink)
        .batch(50)
        .lease(Duration::from_millis(800))
        .backoff(Duration::from_millis(5), Duration::from_millis(50))
        .poll_interval(Duration::from_millis(20))
        .max_attempts(1000)
}

/// Runs `relay.run` as a task.
fn spawn_relay<S: Sink>(relay: Arc<Relay<Pg, S>>) -> Running {
    Running::spawn(|stopped| async move {
        relay.run(stopped).await.unwrap();
    })
}

// ---------------------------------------------------------------------------------------------
// JetStream
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_gets_committed_messages_once_and_drops_resends() {
    let Some((stream, shop)) = jetstream_and_shop(8).await else {
        return;
    };
    let expected = shop.publish_load(4, 5, 6).await;
    let relay = relay(&shop, stream.sink(None).await);
    drain(&relay, &shop, "the outbox drained").await;
    assert_eq!(stream.count().await, expected as u64);
    // Make the relay send everything again (as after a crash before recording): JetStream
    // recognises each Nats-Msg-Id and stores nothing twice.
    shop.on_outbox("UPDATE {t} SET state = 0").await;
    drain(&relay, &shop, "the outbox drained again").await;
    assert_eq!(stream.count().await, expected as u64);
    let order = Arc::new(Mutex::new(Vec::new()));
    let consumer = spawn_js_consumer(&shop, &stream, order.clone(), never());
    shop.assert_end_state(expected).await;
    assert_per_key_order(&order.lock().unwrap(), 4, 5);
    consumer.stop().await;
    stream.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_task_aborted_mid_batch_and_restarted() {
    let Some((stream, shop)) = jetstream_and_shop(8).await else {
        return;
    };
    let expected = shop.publish_load(10, 30, 25).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let consumer = spawn_js_consumer(&shop, &stream, order.clone(), never());
    // A slow sink, so that the aborts land while a batch is in flight.
    let sink = Arc::new(Slow(stream.sink(None).await, Duration::from_millis(4)));
    let mut aborted_mid_run = 0;
    for _ in 0..8 {
        let r = Arc::new(
            relay(&shop, sink.clone())
                .batch(20)
                .lease(Duration::from_millis(300)),
        );
        let relay_task = spawn_relay(r);
        tokio::time::sleep(Duration::from_millis(fastrand::u64(15..60))).await;
        relay_task.abort().await;
        if shop.outbox.stats().await.unwrap().pending > 0 {
            aborted_mid_run += 1;
        }
    }
    assert!(
        aborted_mid_run > 0,
        "no abort happened while work was pending"
    );
    let r = Arc::new(relay(&shop, sink.clone()));
    let relay_task = spawn_relay(r);
    shop.assert_end_state(expected).await;
    assert_eq!(
        stream.count().await,
        expected as u64,
        "resends were de-duplicated"
    );
    assert_per_key_order(&order.lock().unwrap(), 10, 30);
    relay_task.stop().await;
    consumer.stop().await;
    stream.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_process_killed_and_restarted() {
    let Some((stream, shop)) = jetstream_and_shop(8).await else {
        return;
    };
    let expected = shop.publish_load(8, 50, 40).await;
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tx-outbox-relay"))
            .env("DATABASE_URL", support::pg_url())
            .env("NATS_URL", support::nats_url())
            .env("TX_OUTBOX_TABLE", shop.outbox.table())
            .env("TX_OUTBOX_SUBJECT_PREFIX", &stream.prefix)
            .env("TX_OUTBOX_BATCH", "10")
            .env("TX_OUTBOX_LEASE_MS", "500")
            .env("TX_OUTBOX_POLL_MS", "20")
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start the relay process")
    };
    let mut child = spawn();
    eventually(LIMIT, "the relay process to deliver something", || async {
        (stream.count().await > 0).then_some(())
    })
    .await;
    child.kill().expect("SIGKILL the relay"); // std's kill is SIGKILL on Unix
    child.wait().unwrap();
    let pending = shop.outbox.stats().await.unwrap().pending;
    assert!(pending > 0, "the relay finished before it was killed");
    let mut child = spawn();
    let consumer = consume_all_once(&shop, &stream, expected, 8, 50).await;
    child.kill().unwrap();
    child.wait().unwrap();
    consumer.stop().await;
    stream.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_connection_cut_mid_batch() {
    let Some((stream, shop)) = jetstream_and_shop(8).await else {
        return;
    };
    let proxy = CutProxy::start(&support::nats_url()).await.unwrap();
    let expected = shop.publish_load(6, 40, 30).await;
    let sink = Slow(
        stream.sink(Some(&proxy.addr())).await,
        Duration::from_millis(3),
    );
    let r = Arc::new(relay(&shop, sink).batch(20));
    let relay_task = spawn_relay(r);
    cut_four_times(&proxy, &shop).await;
    let consumer = consume_all_once(&shop, &stream, expected, 6, 40).await;
    relay_task.stop().await;
    consumer.stop().await;
    stream.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_consumer_failing_half_its_deliveries() {
    let Some((stream, shop)) = jetstream_and_shop(8).await else {
        return;
    };
    let expected = shop.publish_load(5, 8, 10).await;
    let relay = relay(&shop, stream.sink(None).await);
    let relay_task = spawn_relay(Arc::new(relay));
    // Every delivery that is a message's first fails, and so does every other one after.
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let deliveries = Arc::new(AtomicUsize::new(0));
    let (s, d) = (seen.clone(), deliveries.clone());
    let fail: Arc<dyn Fn(&Delivery) -> bool + Send + Sync> = Arc::new(move |m: &Delivery| {
        let n = d.fetch_add(1, Ordering::SeqCst);
        s.lock().unwrap().insert(m.message_id.clone()) || n.is_multiple_of(2)
    });
    let order = Arc::new(Mutex::new(Vec::new()));
    let consumer = spawn_js_consumer(&shop, &stream, order.clone(), fail);
    shop.assert_end_state(expected).await;
    assert!(
        deliveries.load(Ordering::SeqCst) >= 2 * expected,
        "each message failed at least once"
    );
    relay_task.stop().await;
    consumer.stop().await;
    stream.cleanup().await;
}

/// The big one: 10,000 messages over 200 keys, three relays, sends failing at random (some
/// before reaching the broker, some after, as a lost PubAck), relays aborted at random; the
/// consumer checks each key's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_over_200_keys_three_relays_random_faults() {
    let Some((stream, shop)) = jetstream_and_shop(12).await else {
        return;
    };
    let expected = shop.publish_load(200, 50, 400).await;
    assert_eq!(expected, 10_000);
    let order = Arc::new(Mutex::new(Vec::new()));
    let consumer = spawn_js_consumer_in_lanes(&shop, &stream, order.clone(), never(), 8);
    let sink = Arc::new(Flaky {
        inner: stream.sink(None).await,
        before: 2,
        after: 2,
    });
    let make = |i: usize| {
        Arc::new(
            relay(&shop, sink.clone())
                .batch(200)
                .lease(Duration::from_millis(600))
                .name(format!("relay{i}")),
        )
    };
    let mut relays: Vec<_> = (0..3).map(|i| spawn_relay(make(i))).collect();
    // Abort a random relay now and then while work is pending, and start a fresh one.
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(100..300))).await;
        if shop.outbox.stats().await.unwrap().pending == 0 {
            break;
        }
        let victim = fastrand::usize(..relays.len());
        relays.swap_remove(victim).abort().await;
        relays.push(spawn_relay(make(10 + round)));
    }
    shop.assert_end_state(expected).await;
    assert_per_key_order(&order.lock().unwrap(), 200, 50);
    assert_eq!(
        stream.count().await,
        expected as u64,
        "no message stored twice"
    );
    for relay_task in relays {
        relay_task.stop().await;
    }
    consumer.stop().await;
    stream.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ
// ---------------------------------------------------------------------------------------------

/// An exchange and a queue of this test, bound with `#`.
struct Rabbit {
    conn: lapin::Connection,
    channel: lapin::Channel,
    exchange: String,
    queue: String,
}

impl Rabbit {
    async fn open() -> Option<Rabbit> {
        let conn = within_5s(
            "RabbitMQ",
            lapin::Connection::connect(
                &support::amqp_url(),
                lapin::ConnectionProperties::default(),
            ),
        )
        .await?;
        let channel = conn.create_channel().await.unwrap();
        let exchange = unique("ob_x");
        let queue = unique("ob_q");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "ev".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Some(Rabbit {
            conn,
            channel,
            exchange,
            queue,
        })
    }

    /// `host:port` of the broker.
    fn host_port() -> String {
        let url = support::amqp_url();
        let rest = url.rsplit_once('@').map_or(url.as_str(), |(_, r)| r);
        let rest = rest.split_once("://").map_or(rest, |(_, r)| r);
        rest.split('/').next().unwrap_or(rest).to_owned()
    }

    fn url_via(port: u16) -> String {
        let url = support::amqp_url();
        let (scheme_auth, rest) = url.rsplit_once('@').unwrap_or(("amqp://", &url));
        let path = rest.split_once('/').map_or("", |(_, p)| p);
        format!("{scheme_auth}@127.0.0.1:{port}/{path}")
    }

    async fn sink(&self, via: Option<u16>) -> AmqpSink {
        let url = via.map_or_else(support::amqp_url, Rabbit::url_via);
        AmqpSink::connect(&url, &self.exchange).await.unwrap()
    }

    /// An inbox consumer on the queue, as a task.
    async fn spawn_consumer(
        &self,
        shop: &Shop,
        order: Arc<Mutex<Vec<(String, i64)>>>,
        fail: Arc<dyn Fn(&Delivery) -> bool + Send + Sync>,
    ) -> Running {
        let channel = self.conn.create_channel().await.unwrap();
        channel
            .basic_qos(20, BasicQosOptions::default())
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let handler = shop.handler(order, fail);
        let inbox = shop.inbox.clone();
        Running::spawn(|stopped| async move {
            let _channel = channel;
            tx_outbox::amqp::consume(&inbox, "inventory", consumer, handler, stopped)
                .await
                .unwrap();
        })
    }

    async fn cleanup(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self
            .channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_gets_persistent_confirmed_messages_handled_once() {
    let Some((rabbit, shop)) = rabbitmq_and_shop(8).await else {
        return;
    };
    // One message first, to look at what the broker got.
    shop.publish(&[("k0".to_owned(), 0)], true).await;
    let relay = relay(&shop, rabbit.sink(None).await);
    drain(&relay, &shop, "the first message sent").await;
    let got = rabbit
        .channel
        .basic_get(
            rabbit.queue.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the message is in the queue");
    let props = &got.delivery.properties;
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");
    let id = props
        .message_id()
        .as_ref()
        .expect("message_id set")
        .as_str()
        .to_owned();
    assert!(id.parse::<tx_outbox::MessageId>().is_ok(), "{id}");
    let (stored,): (String,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT message_id FROM {}",
        shop.outbox.table()
    )))
    .fetch_one(shop.db.pool())
    .await
    .unwrap();
    assert_eq!(id, stored);
    // Unroutable (no queue bound for the topic): a failed send, parked, never lost silently.
    TransactionTemplate::new(shop.db.clone())
        .execute(|_| {
            let outbox = shop.outbox.clone();
            async move { outbox.publish(Message::new("nowhere", b"x".to_vec())).await }
        })
        .await
        .unwrap();
    let strict = Relay::new(shop.outbox.clone(), rabbit.sink(None).await)
        .max_attempts(2)
        .backoff(Duration::from_millis(1), Duration::from_millis(2));
    eventually(LIMIT, "the unroutable message parked", || async {
        strict.run_once().await.unwrap();
        (shop.outbox.stats().await.unwrap().failed == 1).then_some(())
    })
    .await;
    let failed = shop.outbox.failed(5).await.unwrap();
    assert!(
        failed[0].last_error.contains("no queue is bound"),
        "{}",
        failed[0].last_error
    );
    shop.on_outbox("DELETE FROM {t}").await;
    // The rest, through the inbox consumer; then every message is sent again (RabbitMQ does
    // not de-duplicate): the inbox turns the copies into duplicates.
    let more = shop.publish_load(4, 6, 5).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let consumer = rabbit.spawn_consumer(&shop, order.clone(), never()).await;
    let relay_task = spawn_relay(Arc::new(relay));
    shop.assert_end_state(more).await;
    assert_per_key_order(&order.lock().unwrap(), 4, 6);
    shop.on_outbox("UPDATE {t} SET state = 0").await;
    shop.assert_end_state(more).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    shop.assert_end_state(more).await;
    relay_task.stop().await;
    consumer.stop().await;
    rabbit.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_connection_cut_mid_batch_and_consumer_failing_half() {
    let Some((rabbit, shop)) = rabbitmq_and_shop(8).await else {
        return;
    };
    let proxy = CutProxy::start(&Rabbit::host_port()).await.unwrap();
    let expected = shop.publish_load(6, 30, 30).await;
    let sink = Slow(
        rabbit.sink(Some(proxy.port())).await,
        Duration::from_millis(3),
    );
    let relay_task = spawn_relay(Arc::new(relay(&shop, sink).batch(20)));
    let deliveries = Arc::new(AtomicUsize::new(0));
    let d = deliveries.clone();
    let fail: Arc<dyn Fn(&Delivery) -> bool + Send + Sync> =
        Arc::new(move |_| d.fetch_add(1, Ordering::SeqCst).is_multiple_of(2));
    let order = Arc::new(Mutex::new(Vec::new()));
    let consumer = rabbit.spawn_consumer(&shop, order.clone(), fail).await;
    cut_four_times(&proxy, &shop).await;
    shop.assert_end_state(expected).await;
    assert!(
        deliveries.load(Ordering::SeqCst) >= 2 * expected - 1,
        "half the deliveries failed"
    );
    relay_task.stop().await;
    consumer.stop().await;
    rabbit.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Sink wrappers for faults
// ---------------------------------------------------------------------------------------------

/// Waits before each send (so faults land mid-batch).
struct Slow<S>(S, Duration);

impl<S: Sink> Sink for Slow<S> {
    async fn send(&self, batch: &[Envelope]) -> Vec<Result<(), SinkError>> {
        tokio::time::sleep(self.1).await;
        self.0.send(batch).await
    }
}

/// Fails `before`% of messages without sending them and reports `after`% of the sent ones
/// as failed (a lost acknowledgement).
struct Flaky<S> {
    inner: S,
    before: u8,
    after: u8,
}

impl<S: Sink> Sink for Flaky<S> {
    async fn send(&self, batch: &[Envelope]) -> Vec<Result<(), SinkError>> {
        let keep: Vec<bool> = batch
            .iter()
            .map(|_| fastrand::u8(0..100) >= self.before)
            .collect();
        let to_send: Vec<Envelope> = batch
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(m, _)| m.clone())
            .collect();
        let mut sent = self.inner.send(&to_send).await.into_iter();
        keep.iter()
            .map(|k| {
                if !k {
                    return Err(SinkError::new("injected: not sent"));
                }
                let r = sent
                    .next()
                    .unwrap_or_else(|| Err(SinkError::new("missing result")));
                if r.is_ok() && fastrand::u8(0..100) < self.after {
                    return Err(SinkError::new("injected: acknowledgement lost"));
                }
                r
            })
            .collect()
    }
}

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
