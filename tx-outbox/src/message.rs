//! What is published ([`Message`]), how it is identified ([`MessageId`]), what a sink sends
//! ([`Envelope`]) and what a consumer receives ([`Delivery`]).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Longest topic and key accepted, in bytes (they are indexed columns on every backend).
pub const MAX_NAME_LEN: usize = 255;

/// The unique id of a published message: a UUID (version 7, time-ordered).
///
/// It is the broker-side de-duplication id (`Nats-Msg-Id` on JetStream, `message_id` on
/// RabbitMQ) and the id an [`Inbox`](crate::Inbox) records, so a message re-sent by the relay
/// is recognised as the same message everywhere.
///
/// ```
/// use tx_outbox::MessageId;
///
/// let id = MessageId::new();
/// let parsed: MessageId = id.to_string().parse().unwrap();
/// assert_eq!(id, parsed);
/// assert!("not-a-uuid".parse::<MessageId>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(uuid::Uuid);

impl MessageId {
    /// The nil UUID: no message has it.
    pub const NIL: MessageId = MessageId(uuid::Uuid::nil());

    /// A fresh id.
    #[must_use]
    #[allow(clippy::new_without_default)] // a default id would be a meaningless constant
    pub fn new() -> MessageId {
        MessageId(uuid::Uuid::now_v7())
    }

    /// The UUID.
    #[must_use]
    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

/// The text is not a UUID.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid message id {0:?}: expected a UUID such as 0190b0b5-6e4a-7c3d-9a51-2f0e5f1a9b3c")]
pub struct InvalidMessageId(String);

impl FromStr for MessageId {
    type Err = InvalidMessageId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(MessageId)
            .map_err(|_| InvalidMessageId(s.to_owned()))
    }
}

/// A message to publish through an [`Outbox`](crate::Outbox).
///
/// ```
/// use tx_outbox::Message;
///
/// #[derive(serde::Serialize)]
/// struct OrderPlaced { order_id: i64, item: String, quantity: i32 }
///
/// let m = Message::json("orders.placed", &OrderPlaced { order_id: 7, item: "book".into(), quantity: 2 })
///     .unwrap()
///     .key("order-7")
///     .header("source", "shop");
/// assert_eq!(m.topic(), "orders.placed");
/// assert_eq!(m.key_str(), Some("order-7"));
///
/// let raw = Message::new("audit", b"plain bytes".to_vec());
/// assert_eq!(raw.payload(), b"plain bytes");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub(crate) topic: String,
    pub(crate) key: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) payload: Vec<u8>,
}

impl Message {
    /// A message for `topic` (the NATS subject, or the AMQP routing key) with `payload`.
    #[must_use]
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Message {
        Message {
            topic: topic.into(),
            key: None,
            headers: Vec::new(),
            payload: payload.into(),
        }
    }

    /// A message whose payload is `value` as JSON (content type `application/json`).
    ///
    /// # Errors
    /// The value could not be serialized (e.g. a map with non-string keys).
    pub fn json<T: Serialize + ?Sized>(
        topic: impl Into<String>,
        value: &T,
    ) -> Result<Message, serde_json::Error> {
        Ok(Message::new(topic, serde_json::to_vec(value)?)
            .header("content-type", "application/json"))
    }

    /// The ordering key (e.g. the aggregate id): messages with the same key reach the broker
    /// in the order their transactions committed. Messages without a key are not ordered.
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Message {
        self.key = Some(key.into());
        self
    }

    /// Adds a header (sent as a NATS header or an AMQP header table entry). `Nats-Msg-Id`
    /// and [`KEY_HEADER`] are the outbox's own and are not sent from here.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Message {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The topic.
    #[must_use]
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The ordering key, if any.
    #[must_use]
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The headers, in the order they were added.
    #[must_use]
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The payload.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Why this message cannot be stored, if it cannot.
    pub(crate) fn invalid(&self) -> Option<String> {
        if self.topic.is_empty() {
            return Some("the topic is empty".into());
        }
        if self.topic.len() > MAX_NAME_LEN {
            return Some(format!("the topic is longer than {MAX_NAME_LEN} bytes"));
        }
        if let Some(k) = &self.key {
            if k.is_empty() {
                return Some("the key is empty (leave it unset for an unordered message)".into());
            }
            if k.len() > MAX_NAME_LEN {
                return Some(format!("the key is longer than {MAX_NAME_LEN} bytes"));
            }
        }
        if let Some((n, _)) = self.headers.iter().find(|(n, _)| n.is_empty()) {
            return Some(format!("a header name is empty ({n:?})"));
        }
        None
    }
}

/// A committed message as the relay hands it to a [`Sink`](crate::Sink).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Envelope {
    /// The de-duplication id.
    pub id: MessageId,
    /// The topic (subject, routing key).
    pub topic: String,
    /// The ordering key.
    pub key: Option<String>,
    /// Headers given at publish time.
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub payload: Vec<u8>,
    /// How many sends of this message failed before this one.
    pub attempt: u32,
    /// When it was published (database clock).
    pub created_at: SystemTime,
}

/// A message as a consumer received it from the broker.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Delivery {
    /// The id the outbox gave it (what the inbox records).
    pub message_id: String,
    /// The subject or routing key it arrived on.
    pub topic: String,
    /// Its ordering key, when it was published with one.
    pub key: Option<String>,
    /// Its headers, without the ones the sinks add for themselves.
    pub headers: Vec<(String, String)>,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Whether the broker says it delivered this message before.
    pub redelivered: bool,
}

impl Delivery {
    /// The payload as JSON.
    ///
    /// # Errors
    /// The payload is not valid JSON for `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }

    /// The value of header `name` (the first one, if repeated).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Milliseconds since the epoch as a `SystemTime`.
pub(crate) fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The header the sinks carry the ordering key in.
pub const KEY_HEADER: &str = "Tx-Outbox-Key";
