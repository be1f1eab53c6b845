//! NATS JetStream (feature `nats`): [`JetStreamSink`] publishes outbox messages with
//! `Nats-Msg-Id` = [`MessageId`](crate::MessageId) and counts a message as sent when its
//! PubAck arrives; [`consume`] runs a durable pull consumer through an [`Inbox`] and acks
//! after the handler's transaction committed.
//!
//! JetStream drops a message whose `Nats-Msg-Id` it stored within the stream's
//! `duplicate_window` (2 minutes by default): a relay re-sending after a crash or a lost
//! PubAck does not store it twice. Make the window longer than a relay's lease.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures_util::StreamExt;
use futures_util::future::join_all;

use crate::handler::Handler;
use crate::inbox::Inbox;
use crate::message::{Delivery, Envelope, KEY_HEADER};
use crate::outbox::OutboxDatabase;
use crate::sink::{Sink, SinkError};

/// The header JetStream de-duplicates on.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Publishes to JetStream: the message's topic is the subject (after an optional prefix).
///
/// ```no_run
/// # async fn run() -> Result<(), async_nats::Error> {
/// let client = async_nats::connect("127.0.0.1:4222").await?;
/// let sink = tx_outbox::nats::JetStreamSink::new(async_nats::jetstream::new(client))
///     .subject_prefix("shop");           // topic "orders.placed" -> subject "shop.orders.placed"
/// # let _ = sink; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct JetStreamSink {
    js: jetstream::Context,
    prefix: Option<String>,
}

impl JetStreamSink {
    /// A sink on `js` (its timeout bounds the wait for each PubAck).
    #[must_use]
    pub fn new(js: jetstream::Context) -> Self {
        JetStreamSink { js, prefix: None }
    }

    /// Connects to `url`, reconnecting by itself whenever the connection drops; each PubAck
    /// is waited for at most 5 s (see [`ack_timeout`](Self::ack_timeout)).
    ///
    /// # Errors
    /// The server cannot be reached.
    ///
    /// # Cancel safety
    /// Nothing is sent while connecting: safe to cancel.
    pub async fn connect(url: &str) -> Result<Self, async_nats::ConnectError> {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(url)
            .await?;
        let mut js = jetstream::new(client);
        js.set_timeout(Duration::from_secs(5));
        Ok(JetStreamSink::new(js))
    }

    /// How long to wait for each PubAck before the send counts as failed (and is retried).
    #[must_use]
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.js.set_timeout(timeout);
        self
    }

    /// Publishes topic `t` on subject `prefix.t`.
    #[must_use]
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The JetStream context.
    #[must_use]
    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    fn subject(&self, topic: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}.{topic}"),
            None => topic.to_owned(),
        }
    }
}

impl Sink for JetStreamSink {
    async fn send(&self, batch: &[Envelope]) -> Vec<Result<(), SinkError>> {
        // Publish everything first (pipelined), then collect the PubAcks.
        let mut pending = Vec::with_capacity(batch.len());
        for m in batch {
            let mut headers = HeaderMap::new();
            headers.insert(MSG_ID_HEADER, m.id.to_string());
            if let Some(k) = &m.key {
                headers.insert(KEY_HEADER, k.as_str());
            }
            // The id and key headers are the outbox's own: a user header of that name would
            // break de-duplication or ordering, so it is not sent.
            for (n, v) in m.headers.iter().filter(|(n, _)| {
                !n.eq_ignore_ascii_case(MSG_ID_HEADER) && !n.eq_ignore_ascii_case(KEY_HEADER)
            }) {
                headers.append(n.as_str(), v.as_str());
            }
            let sent = self
                .js
                .publish_with_headers(self.subject(&m.topic), headers, m.payload.clone().into())
                .await;
            pending.push(sent);
        }
        join_all(pending.into_iter().map(|sent| async move {
            match sent {
                Ok(ack) => ack.await.map(|_| ()).map_err(SinkError::new),
                Err(e) => Err(SinkError::new(e)),
            }
        }))
        .await
    }
}

/// A durable pull consumer named `durable` on `stream`, created if missing, receiving
/// `filter` (empty: every subject) with explicit acks, redelivering after `ack_wait`.
///
/// # Errors
/// The stream does not exist, or the server refused the consumer.
///
/// # Cancel safety
/// Safe to cancel; the consumer may or may not have been created.
pub async fn durable_pull_consumer(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    filter: &str,
    ack_wait: Duration,
) -> Result<PullConsumer, async_nats::Error> {
    let stream = js.get_stream(stream).await?;
    let consumer = stream
        .get_or_create_consumer(
            durable,
            jetstream::consumer::pull::Config {
                durable_name: Some(durable.to_owned()),
                filter_subject: filter.to_owned(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait,
                ..Default::default()
            },
        )
        .await?;
    Ok(consumer)
}

/// The [`Delivery`] of a JetStream message (its id from `Nats-Msg-Id`).
#[must_use]
pub fn delivery(msg: &jetstream::Message) -> Option<Delivery> {
    let headers = msg.headers.as_ref()?;
    let id = headers.get(MSG_ID_HEADER)?.as_str().to_owned();
    let key = headers.get(KEY_HEADER).map(|v| v.as_str().to_owned());
    let mut rest = Vec::new();
    for (name, values) in headers.iter() {
        let n: &str = name.as_ref();
        if n.eq_ignore_ascii_case(MSG_ID_HEADER) || n.eq_ignore_ascii_case(KEY_HEADER) {
            continue;
        }
        for v in values {
            rest.push((n.to_owned(), v.as_str().to_owned()));
        }
    }
    let redelivered = msg.info().is_ok_and(|i| i.delivered > 1);
    Some(Delivery {
        message_id: id,
        topic: msg.subject.to_string(),
        key,
        headers: rest,
        payload: msg.payload.to_vec(),
        redelivered,
    })
}

/// How [`consume`] handles messages: how soon a failed message comes back, and how many
/// keys are handled at once.
///
/// ```
/// use std::time::Duration;
/// use tx_outbox::nats::ConsumeOptions;
///
/// let options = ConsumeOptions::default().retry_delay(Duration::from_millis(200)).lanes(4);
/// assert_eq!(options.get_lanes(), 4);
/// assert_eq!(ConsumeOptions::default().get_lanes(), 1);
/// assert_eq!(ConsumeOptions::default().get_retry_delay(), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumeOptions {
    retry_delay: Duration,
    lanes: usize,
}

impl Default for ConsumeOptions {
    /// A failed message comes back after 1 s; one message at a time.
    fn default() -> Self {
        ConsumeOptions {
            retry_delay: Duration::from_secs(1),
            lanes: 1,
        }
    }
}

impl ConsumeOptions {
    /// A failed handler's message is nak'ed and redelivered after `delay`.
    #[must_use]
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// Spreads messages over `lanes` concurrent lanes by key (0 counts as 1): messages of one
    /// key go to one lane and are handled one after another, in stream order, so per-key
    /// order is kept while different keys are handled at once (each lane holds a database
    /// connection while it handles a message). Messages without a key go round-robin.
    #[must_use]
    pub fn lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes.max(1);
        self
    }

    /// The delay set by [`retry_delay`](Self::retry_delay).
    #[must_use]
    pub fn get_retry_delay(&self) -> Duration {
        self.retry_delay
    }

    /// The lanes set by [`lanes`](Self::lanes).
    #[must_use]
    pub fn get_lanes(&self) -> usize {
        self.lanes
    }
}

/// Consumes `consumer` until `shutdown` completes: each message is handled through
/// `inbox.receive(name, id, ..)` and acked only after that transaction committed (a
/// duplicate is acked without running `handler`); a failed handler's message is nak'ed and
/// redelivered after the options' [`retry_delay`](ConsumeOptions::retry_delay). A message
/// without `Nats-Msg-Id` cannot be de-duplicated: it is terminated (never redelivered) and
/// logged. One message at a time, or one per [lane](ConsumeOptions::lanes) with messages of
/// one key kept in one lane.
///
/// Order: JetStream delivers in stream order; a nak'ed message comes back after later ones
/// unless the consumer has `max_ack_pending = 1`.
///
/// ```no_run
/// use std::time::Duration;
/// use tx_outbox::nats::{ConsumeOptions, consume, durable_pull_consumer};
/// use tx_outbox::{Delivery, Inbox};
/// use tx_sqlx::{PgTxPool, TxError};
///
/// # async fn run(db: PgTxPool, js: async_nats::jetstream::Context) -> Result<(), async_nats::Error> {
/// let consumer = durable_pull_consumer(&js, "ORDERS", "inventory", "", Duration::from_secs(30)).await?;
/// let handler = |d: Delivery| {
///     let db = db.clone();
///     async move {
///         sqlx::query("insert into reservations (message_id) values ($1)")
///             .bind(d.message_id)
///             .execute(&db)
///             .await?;
///         Ok::<_, TxError>(())
///     }
/// };
/// let options = ConsumeOptions::default().lanes(4);
/// consume(&Inbox::new(db.clone()), "inventory", &consumer, options, handler, tokio::signal::ctrl_c()).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// The consumer's message stream cannot be opened. Later stream errors (a reconnect) are
/// logged and consumption goes on.
///
/// # Cancel safety
/// Dropping the future mid-message rolls its transaction back and leaves it unacked: it is
/// redelivered after `ack_wait`.
pub async fn consume<DB: OutboxDatabase, H: Handler>(
    inbox: &Inbox<DB>,
    name: &str,
    consumer: &PullConsumer,
    options: ConsumeOptions,
    handler: H,
    shutdown: impl Future,
) -> Result<(), async_nats::Error> {
    let ConsumeOptions { retry_delay, lanes } = options;
    let mut shutdown = pin!(shutdown);
    let mut messages = consumer.messages().await?;
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..lanes)
        .map(|_| tokio::sync::mpsc::channel::<(jetstream::Message, Delivery)>(16))
        .unzip();
    let handler = &handler;
    let workers = join_all(receivers.into_iter().map(|mut rx| async move {
        while let Some((msg, d)) = rx.recv().await {
            handle_one(inbox, name, retry_delay, handler, msg, d).await;
        }
    }));
    let dispatch = async move {
        let mut next_lane = 0usize;
        loop {
            let next = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                next = messages.next() => next,
            };
            let msg = match next {
                None => {
                    messages = consumer.messages().await?;
                    continue;
                }
                Some(Err(e)) => {
                    tracing::debug!(target: "tx_outbox", error = %e, "JetStream consumer stream error");
                    continue;
                }
                Some(Ok(m)) => m,
            };
            let Some(d) = delivery(&msg) else {
                tracing::error!(target: "tx_outbox", subject = %msg.subject,
                    "message without Nats-Msg-Id: cannot de-duplicate it, terminating it");
                let _ = msg.ack_with(AckKind::Term).await;
                continue;
            };
            let lane = match &d.key {
                Some(k) => crate::store::hash_key(k) as usize % lanes,
                None => {
                    next_lane = (next_lane + 1) % lanes;
                    next_lane
                }
            };
            let sent = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                sent = senders[lane].send((msg, d)) => sent,
            };
            if sent.is_err() {
                return Ok(());
            }
        }
    };
    // The dispatcher ends first (shutdown or error) and drops the senders: the lanes finish
    // the message they are handling and stop; queued messages stay unacked (redelivered).
    let (result, _) = tokio::join!(dispatch, workers);
    result
}

async fn handle_one<DB: OutboxDatabase, H: Handler>(
    inbox: &Inbox<DB>,
    name: &str,
    retry_delay: Duration,
    handler: &H,
    msg: jetstream::Message,
    d: Delivery,
) {
    if inbox.handle(name, handler, d).await {
        if let Err(e) = msg.ack().await {
            // The transaction committed: a redelivery is a duplicate.
            tracing::debug!(target: "tx_outbox", error = %e, "ack failed");
        }
    } else {
        let _ = msg.ack_with(AckKind::Nak(Some(retry_delay))).await;
    }
}
