//! The outbox through RabbitMQ: persistent, confirmed messages handled once (also when all
//! are sent again), a parked unroutable message, a cut connection and a failing consumer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicGetOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tx_outbox::amqp::AmqpSink;
use tx_outbox::{Message, Relay};
use tx_sqlx::TransactionTemplate;

use crate::faults::Slow;
use crate::fixtures::{
    Fail, LIMIT, Load, Order, Shop, assert_per_key_order, cut_four_times, drain, never, relay,
    spawn_relay, stop_all,
};
use crate::support::{self, CutProxy, Running, eventually, unique, within_5s};

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
        support::amqp::declare(&channel, &exchange, &queue, false).await;
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

    /// An inbox consumer on the queue, as a task; and the order it handles messages in.
    async fn spawn_consumer(&self, shop: &Shop, fail: Fail) -> (Running, Order) {
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
        let order = Order::default();
        let handler = shop.handler(order.clone(), fail);
        let inbox = shop.inbox.clone();
        let consumer = Running::spawn(|stopped| async move {
            let _channel = channel;
            tx_outbox::amqp::consume(&inbox, "inventory", consumer, handler, stopped)
                .await
                .unwrap();
        });
        (consumer, order)
    }

    async fn cleanup(self) {
        support::amqp::delete(&self.channel, &self.exchange, &self.queue).await;
    }
}

/// An exchange, a queue and a shop for a RabbitMQ test; `None` when a server is missing.
async fn rabbitmq_and_shop(pool_size: u32) -> Option<(Rabbit, Shop)> {
    let rabbit = Rabbit::open().await?;
    Some((rabbit, Shop::open(pool_size).await?))
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
    let load = Load::new(4, 6, 5);
    let more = shop.publish_load(load).await;
    let (consumer, order) = rabbit.spawn_consumer(&shop, never()).await;
    let relay_task = spawn_relay(relay);
    shop.assert_end_state(more).await;
    assert_per_key_order(&order, load);
    shop.on_outbox("UPDATE {t} SET state = 0").await;
    shop.assert_end_state(more).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    shop.assert_end_state(more).await;
    stop_all([relay_task, consumer]).await;
    rabbit.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_connection_cut_mid_batch_and_consumer_failing_half() {
    let Some((rabbit, shop)) = rabbitmq_and_shop(8).await else {
        return;
    };
    let proxy = CutProxy::start(&Rabbit::host_port()).await.unwrap();
    let expected = shop.publish_load(Load::new(6, 30, 30)).await;
    let sink = Slow(
        rabbit.sink(Some(proxy.port())).await,
        Duration::from_millis(3),
    );
    let relay_task = spawn_relay(relay(&shop, sink).batch(20));
    let deliveries = Arc::new(AtomicUsize::new(0));
    let d = deliveries.clone();
    let fail: Fail = Arc::new(move |_| d.fetch_add(1, Ordering::SeqCst).is_multiple_of(2));
    let (consumer, _) = rabbit.spawn_consumer(&shop, fail).await;
    cut_four_times(&proxy, &shop).await;
    shop.assert_end_state(expected).await;
    assert!(
        deliveries.load(Ordering::SeqCst) >= 2 * expected - 1,
        "half the deliveries failed"
    );
    stop_all([relay_task, consumer]).await;
    rabbit.cleanup().await;
}
