//! Where the relay sends committed messages.

use std::future::Future;

use crate::message::Envelope;

/// A broker (or anything else) the [`Relay`](crate::Relay) delivers committed messages to.
///
/// `send` gets a batch and answers with one result per message, in the batch's order: `Ok`
/// once the broker has taken responsibility for the message (a JetStream PubAck, an AMQP
/// publisher confirm), `Err` otherwise. Messages of one call never share a key, so a sink may
/// send them all at once (pipelined); the relay sends a key's next message only after the
/// previous one was acknowledged, which is how per-key order survives failures.
///
/// A sink may see a message again after a crash or a lost acknowledgement (delivery is at
/// least once): use [`Envelope::id`] as the broker's de-duplication id.
///
/// ```
/// use std::sync::Mutex;
/// use tx_outbox::{Envelope, Sink, SinkError};
///
/// /// Keeps what it is sent (a test double).
/// #[derive(Default)]
/// struct Memory(Mutex<Vec<String>>);
///
/// impl Sink for Memory {
///     async fn send(&self, batch: &[Envelope]) -> Vec<Result<(), SinkError>> {
///         let mut seen = self.0.lock().unwrap();
///         batch
///             .iter()
///             .map(|m| {
///                 if m.topic.is_empty() {
///                     return Err(SinkError::new("no topic"));
///                 }
///                 seen.push(m.id.to_string());
///                 Ok(())
///             })
///             .collect()
///     }
/// }
/// ```
pub trait Sink: Send + Sync + 'static {
    /// Sends `batch`; one result per message, in order.
    ///
    /// # Cancel safety
    /// The relay may drop the future at its deadline; messages whose results were not
    /// reported count as not sent and are sent again.
    fn send(&self, batch: &[Envelope]) -> impl Future<Output = Vec<Result<(), SinkError>>> + Send;
}

impl<S: Sink> Sink for std::sync::Arc<S> {
    fn send(&self, batch: &[Envelope]) -> impl Future<Output = Vec<Result<(), SinkError>>> + Send {
        (**self).send(batch)
    }
}

/// Why a sink could not deliver a message; the relay retries it with backoff and parks it
/// after `max_attempts`.
///
/// ```
/// let e = tx_outbox::SinkError::new("broker unreachable");
/// assert_eq!(e.to_string(), "broker unreachable");
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(#[source] pub tx_sqlx::BoxError);

impl SinkError {
    /// Wraps any error (or a message).
    pub fn new(err: impl Into<tx_sqlx::BoxError>) -> SinkError {
        SinkError(err.into())
    }
}
