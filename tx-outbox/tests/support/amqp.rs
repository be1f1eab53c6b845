//! The RabbitMQ side of one test (or bench run): a topic exchange and a queue bound to it.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;

/// Declares the topic exchange `exchange` and the queue `queue` (durable or not), bound to it
/// for the topic `ev`.
pub async fn declare(channel: &lapin::Channel, exchange: &str, queue: &str, durable: bool) {
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let options = QueueDeclareOptions {
        durable,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "ev".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Deletes what [`declare`] made (whatever is left of it).
pub async fn delete(channel: &lapin::Channel, exchange: &str, queue: &str) {
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await;
}
