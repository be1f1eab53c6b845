//! RabbitMQ over AMQP 0-9-1 (feature `amqp`): [`AmqpSink`] publishes outbox messages as
//! persistent messages with `message_id` = [`MessageId`](crate::MessageId) on a channel in
//! publisher-confirm mode and counts a message as sent when the broker confirms it;
//! [`consume`] handles deliveries through an [`Inbox`], acks after the handler's
//! transaction committed and nacks (requeue) when it failed.
//!
//! RabbitMQ does not de-duplicate: a message re-sent by the relay (after a crash or a lost
//! confirm) reaches the queue twice, and the inbox makes the second one a
//! [`Received::Duplicate`](crate::Received::Duplicate).

use std::future::Future;
use std::pin::pin;

use futures_util::StreamExt;
use futures_util::future::join_all;
use lapin::options::{
    BasicAckOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::handler::Handler;
use crate::inbox::Inbox;
use crate::message::{Delivery, Envelope, KEY_HEADER};
use crate::outbox::OutboxDatabase;
use crate::sink::{Sink, SinkError};

/// Publishes to an exchange with the message's topic as routing key, `mandatory` (a message
/// no queue takes is a failed send, not a silent loss), persistent (delivery mode 2).
/// Reconnects on the next send after the connection or channel failed.
///
/// ```no_run
/// # async fn run() -> Result<(), lapin::Error> {
/// let sink = tx_outbox::amqp::AmqpSink::connect("amqp://guest:guest@127.0.0.1:5672/%2f", "orders").await?;
/// # let _ = sink; Ok(()) }
/// ```
pub struct AmqpSink {
    uri: String,
    exchange: String,
    state: Mutex<Option<(Connection, Channel)>>,
}

impl std::fmt::Debug for AmqpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSink")
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

async fn open(uri: &str) -> Result<(Connection, Channel), lapin::Error> {
    let conn = Connection::connect(uri, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((conn, channel))
}

impl AmqpSink {
    /// Connects to `uri` and publishes to `exchange` (`""`: the default exchange, where the
    /// routing key is the queue name). The exchange must exist.
    ///
    /// # Errors
    /// The broker cannot be reached or refused the channel.
    ///
    /// # Cancel safety
    /// Nothing is sent while connecting: safe to cancel.
    pub async fn connect(uri: &str, exchange: &str) -> Result<Self, lapin::Error> {
        let state = open(uri).await?;
        Ok(AmqpSink {
            uri: uri.to_owned(),
            exchange: exchange.to_owned(),
            state: Mutex::new(Some(state)),
        })
    }
}

fn properties(m: &Envelope) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(k) = &m.key {
        headers.insert(KEY_HEADER.into(), AMQPValue::LongString(k.as_str().into()));
    }
    for (n, v) in m
        .headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(KEY_HEADER))
    {
        headers.insert(n.as_str().into(), AMQPValue::LongString(v.as_str().into()));
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(m.id.to_string()))
        .with_headers(headers);
    if let Some((_, ct)) = m
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
    {
        props = props.with_content_type(ct.as_str().into());
    }
    props
}

impl Sink for AmqpSink {
    async fn send(&self, batch: &[Envelope]) -> Vec<Result<(), SinkError>> {
        let mut state = self.state.lock().await;
        let usable = state
            .as_ref()
            .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected());
        if !usable {
            *state = None;
            match open(&self.uri).await {
                Ok(s) => *state = Some(s),
                Err(e) => {
                    let why = format!("cannot connect to RabbitMQ: {e}");
                    return batch
                        .iter()
                        .map(|_| Err(SinkError::new(why.clone())))
                        .collect();
                }
            }
        }
        let (_, channel) = state.as_ref().expect("connected above");
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let mut confirms = Vec::with_capacity(batch.len());
        for m in batch {
            let sent = channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    m.topic.as_str().into(),
                    options,
                    &m.payload,
                    properties(m),
                )
                .await;
            confirms.push(sent);
        }
        let results: Vec<Result<(), SinkError>> =
            join_all(confirms.into_iter().map(|sent| async move {
                match sent {
                    Ok(confirm) => match confirm.await {
                        Ok(Confirmation::Ack(None)) => Ok(()),
                        Ok(Confirmation::Ack(Some(_))) => Err(SinkError::new(
                            "returned by the broker: no queue is bound for this routing key",
                        )),
                        Ok(Confirmation::Nack(_)) => Err(SinkError::new("nacked by the broker")),
                        Ok(Confirmation::NotRequested) => {
                            Err(SinkError::new("the channel is not in confirm mode"))
                        }
                        Err(e) => Err(SinkError::new(e)),
                    },
                    Err(e) => Err(SinkError::new(e)),
                }
            }))
            .await;
        if results.iter().any(Result::is_err) {
            // A returned or nacked message leaves the channel usable; anything else may not:
            // start afresh next time.
            let broken = state
                .as_ref()
                .is_some_and(|(c, ch)| !c.status().connected() || !ch.status().connected());
            if broken {
                *state = None;
            }
        }
        results
    }
}

/// The [`Delivery`] of an AMQP message (its id from the `message_id` property).
#[must_use]
pub fn delivery(d: &lapin::message::Delivery) -> Option<Delivery> {
    let id = d.properties.message_id().as_ref()?.as_str().to_owned();
    let mut key = None;
    let mut headers = Vec::new();
    if let Some(table) = d.properties.headers() {
        for (n, v) in table.inner() {
            let text = match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_owned(),
                _ => continue,
            };
            if n.as_str() == KEY_HEADER {
                key = Some(text);
            } else {
                headers.push((n.as_str().to_owned(), text));
            }
        }
    }
    Some(Delivery {
        message_id: id,
        topic: d.routing_key.as_str().to_owned(),
        key,
        headers,
        payload: d.data.clone(),
        redelivered: d.redelivered,
    })
}

/// Consumes `consumer` (started with manual acks, i.e. `no_ack: false`) until `shutdown`
/// completes or the consumer ends: each delivery is handled through
/// `inbox.receive(name, message_id, ..)` and acked after that transaction committed (a
/// duplicate is acked without running `handler`); a failed handler's delivery is nacked with
/// requeue. A delivery without `message_id` cannot be de-duplicated: it is rejected without
/// requeue and logged.
///
/// # Errors
/// An ack or nack could not be sent (the channel is gone: the broker redelivers the
/// unacked messages to the next consumer).
///
/// # Cancel safety
/// Dropping the future mid-message rolls its transaction back and leaves it unacked: the
/// broker redelivers it when the channel closes.
pub async fn consume<DB: OutboxDatabase, H: Handler>(
    inbox: &Inbox<DB>,
    name: &str,
    mut consumer: lapin::Consumer,
    handler: H,
    shutdown: impl Future,
) -> Result<(), lapin::Error> {
    let mut shutdown = pin!(shutdown);
    loop {
        let next = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            next = consumer.next() => next,
        };
        let delivery_msg = match next {
            None => return Ok(()),
            Some(Err(e)) => return Err(e),
            Some(Ok(d)) => d,
        };
        let Some(d) = delivery(&delivery_msg) else {
            tracing::error!(target: "tx_outbox", routing_key = %delivery_msg.routing_key,
                "delivery without message_id: cannot de-duplicate it, rejecting it");
            delivery_msg.nack(nack(/* requeue: */ false)).await?;
            continue;
        };
        if inbox.handle(name, &handler, d).await {
            delivery_msg.ack(BasicAckOptions::default()).await?;
        } else {
            delivery_msg.nack(nack(/* requeue: */ true)).await?;
        }
    }
}

/// A nack of one delivery (not of every unacked one before it).
fn nack(requeue: bool) -> BasicNackOptions {
    BasicNackOptions {
        multiple: false,
        requeue,
    }
}
