//! The outbox through NATS JetStream: de-duplicated resends, relays aborted or killed and
//! restarted, a cut connection, a consumer failing half its deliveries, and 10,000 messages
//! over three relays with random faults.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::stream::StorageType;
use tx_outbox::Delivery;
use tx_outbox::nats::ConsumeOptions;

use crate::faults::{Flaky, Slow};
use crate::fixtures::{
    Fail, LIMIT, Load, Order, Shop, assert_per_key_order, cut_four_times, drain, never, relay,
    spawn_relay, stop_all,
};
use crate::support::jetstream::Stream;
use crate::support::{self, CutProxy, Running, eventually};

/// A JetStream test: its stream and its shop, with `load` published (`expected` committed
/// messages).
struct Js {
    stream: Stream,
    shop: Shop,
    load: Load,
    expected: usize,
}

impl Js {
    /// `None` (the test is skipped) when a server is missing.
    async fn start(pool_size: u32, load: Load) -> Option<Js> {
        let stream = Stream::open("ob", StorageType::Memory).await?;
        let shop = Shop::open(pool_size).await?;
        let expected = shop.publish_load(load).await;
        Some(Js {
            stream,
            shop,
            load,
            expected,
        })
    }

    /// A consumer through the inbox, as a task, handling `lanes` keys at once (per-key order
    /// kept); and the order it handles messages in.
    fn spawn_consumer(&self, fail: Fail, lanes: usize) -> (Running, Order) {
        let order = Order::default();
        let handler = self.shop.handler(order.clone(), fail);
        let inbox = self.shop.inbox.clone();
        let stream = self.stream.clone();
        let consumer = Running::spawn(|stopped| async move {
            let consumer = stream.consumer("inventory", Duration::from_secs(5)).await;
            let options = ConsumeOptions::default()
                .retry_delay(Duration::from_millis(10))
                .lanes(lanes);
            tx_outbox::nats::consume(&inbox, "inventory", &consumer, options, handler, stopped)
                .await
                .unwrap();
        });
        (consumer, order)
    }

    /// Waits until every committed message is handled: each once, stored once in the stream,
    /// in order per key (as `order` saw them).
    async fn assert_all_once(&self, order: &Order) {
        self.shop.assert_end_state(self.expected).await;
        assert_eq!(
            self.stream.count().await,
            self.expected as u64,
            "stored once"
        );
        assert_per_key_order(order, self.load);
    }

    /// Starts a consumer and [`assert_all_once`](Js::assert_all_once). The consumer goes on
    /// running.
    async fn consume_all_once(&self) -> Running {
        let (consumer, order) = self.spawn_consumer(never(), 1);
        self.assert_all_once(&order).await;
        consumer
    }

    /// Stops `tasks`, then deletes the stream.
    async fn finish(self, tasks: impl IntoIterator<Item = Running>) {
        stop_all(tasks).await;
        self.stream.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_gets_committed_messages_once_and_drops_resends() {
    let Some(js) = Js::start(8, Load::new(4, 5, 6)).await else {
        return;
    };
    let relay = relay(&js.shop, js.stream.sink(None).await);
    drain(&relay, &js.shop, "the outbox drained").await;
    assert_eq!(js.stream.count().await, js.expected as u64);
    // Make the relay send everything again (as after a crash before recording): JetStream
    // recognises each Nats-Msg-Id and stores nothing twice.
    js.shop.on_outbox("UPDATE {t} SET state = 0").await;
    drain(&relay, &js.shop, "the outbox drained again").await;
    let consumer = js.consume_all_once().await;
    js.finish([consumer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_task_aborted_mid_batch_and_restarted() {
    let Some(js) = Js::start(8, Load::new(10, 30, 25)).await else {
        return;
    };
    let (consumer, order) = js.spawn_consumer(never(), 1);
    // A slow sink, so that the aborts land while a batch is in flight.
    let sink = Arc::new(Slow(js.stream.sink(None).await, Duration::from_millis(4)));
    let mut aborted_mid_run = 0;
    for _ in 0..8 {
        let short_lease = relay(&js.shop, sink.clone())
            .batch(20)
            .lease(Duration::from_millis(300));
        let relay_task = spawn_relay(short_lease);
        tokio::time::sleep(Duration::from_millis(fastrand::u64(15..60))).await;
        relay_task.abort().await;
        if js.shop.outbox.stats().await.unwrap().pending > 0 {
            aborted_mid_run += 1;
        }
    }
    assert!(
        aborted_mid_run > 0,
        "no abort happened while work was pending"
    );
    // Every resend is de-duplicated.
    let relay_task = spawn_relay(relay(&js.shop, sink.clone()));
    js.assert_all_once(&order).await;
    js.finish([relay_task, consumer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_process_killed_and_restarted() {
    let Some(js) = Js::start(8, Load::new(8, 50, 40)).await else {
        return;
    };
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tx-outbox-relay"))
            .env("DATABASE_URL", support::pg_url())
            .env("NATS_URL", support::nats_url())
            .env("TX_OUTBOX_TABLE", js.shop.outbox.table())
            .env("TX_OUTBOX_SUBJECT_PREFIX", &js.stream.prefix)
            .env("TX_OUTBOX_BATCH", "10")
            .env("TX_OUTBOX_LEASE_MS", "500")
            .env("TX_OUTBOX_POLL_MS", "20")
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start the relay process")
    };
    let mut child = spawn();
    eventually(LIMIT, "the relay process to deliver something", || async {
        (js.stream.count().await > 0).then_some(())
    })
    .await;
    child.kill().expect("SIGKILL the relay"); // std's kill is SIGKILL on Unix
    child.wait().unwrap();
    let pending = js.shop.outbox.stats().await.unwrap().pending;
    assert!(pending > 0, "the relay finished before it was killed");
    let mut child = spawn();
    let consumer = js.consume_all_once().await;
    child.kill().unwrap();
    child.wait().unwrap();
    js.finish([consumer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_connection_cut_mid_batch() {
    let Some(js) = Js::start(8, Load::new(6, 40, 30)).await else {
        return;
    };
    let proxy = CutProxy::start(&support::nats_url()).await.unwrap();
    let sink = Slow(
        js.stream.sink(Some(&proxy.addr())).await,
        Duration::from_millis(3),
    );
    let relay_task = spawn_relay(relay(&js.shop, sink).batch(20));
    cut_four_times(&proxy, &js.shop).await;
    let consumer = js.consume_all_once().await;
    js.finish([relay_task, consumer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_consumer_failing_half_its_deliveries() {
    let Some(js) = Js::start(8, Load::new(5, 8, 10)).await else {
        return;
    };
    let relay_task = spawn_relay(relay(&js.shop, js.stream.sink(None).await));
    // Every delivery that is a message's first fails, and so does every other one after.
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let deliveries = Arc::new(AtomicUsize::new(0));
    let (s, d) = (seen.clone(), deliveries.clone());
    let fail: Fail = Arc::new(move |m: &Delivery| {
        let n = d.fetch_add(1, Ordering::SeqCst);
        s.lock().unwrap().insert(m.message_id.clone()) || n.is_multiple_of(2)
    });
    let (consumer, _) = js.spawn_consumer(fail, 1);
    js.shop.assert_end_state(js.expected).await;
    assert!(
        deliveries.load(Ordering::SeqCst) >= 2 * js.expected,
        "each message failed at least once"
    );
    js.finish([relay_task, consumer]).await;
}

/// The big one: 10,000 messages over 200 keys, three relays, sends failing at random (some
/// before reaching the broker, some after, as a lost PubAck), relays aborted at random; the
/// consumer checks each key's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_over_200_keys_three_relays_random_faults() {
    let Some(js) = Js::start(12, Load::new(200, 50, 400)).await else {
        return;
    };
    assert_eq!(js.expected, 10_000);
    let (consumer, order) = js.spawn_consumer(never(), 8);
    let sink = Arc::new(Flaky {
        inner: js.stream.sink(None).await,
        before: 2,
        after: 2,
    });
    let make = |i: usize| {
        relay(&js.shop, sink.clone())
            .batch(200)
            .lease(Duration::from_millis(600))
            .name(format!("relay{i}"))
    };
    let mut relays: Vec<_> = (0..3).map(|i| spawn_relay(make(i))).collect();
    // Abort a random relay now and then while work is pending, and start a fresh one.
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(100..300))).await;
        if js.shop.outbox.stats().await.unwrap().pending == 0 {
            break;
        }
        let victim = fastrand::usize(..relays.len());
        relays.swap_remove(victim).abort().await;
        relays.push(spawn_relay(make(10 + round)));
    }
    js.assert_all_once(&order).await;
    relays.push(consumer);
    js.finish(relays).await;
}
