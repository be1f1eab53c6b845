//! The outbox through NATS JetStream: de-duplicated resends, relays aborted or killed and
//! restarted, a cut connection, a consumer failing half its deliveries, and 10,000 messages
//! over three relays with random faults.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use tx_outbox::Delivery;
use tx_outbox::nats::JetStreamSink;

use crate::faults::{Flaky, Slow};
use crate::fixtures::{
    LIMIT, Shop, assert_per_key_order, cut_four_times, drain, never, relay, spawn_relay, within_5s,
};
use crate::support::{self, CutProxy, Running, eventually, unique};

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

/// A stream and a shop for a JetStream test; `None` (the test is skipped) when a server is
/// missing.
async fn jetstream_and_shop(pool_size: u32) -> Option<(Stream, Shop)> {
    let stream = Stream::open().await?;
    Some((stream, Shop::open(pool_size).await?))
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
