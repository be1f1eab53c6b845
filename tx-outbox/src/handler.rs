//! [`Handler`]: what a broker consumer runs for each message, through the inbox.

use std::fmt::Display;
use std::future::Future;

use tx_sqlx::TxError;

use crate::message::Delivery;

/// What the broker consumers (`nats::consume`, `amqp::consume`) run for each message, inside
/// the transaction [`Inbox::receive`](crate::Inbox::receive) opens for it.
///
/// Any `Fn(Delivery) -> impl Future<Output = Result<T, E>>` is a handler when `E` is
/// `From<TxError>` (the inbox's own failures) and `Display` (a failure is logged before the
/// message is handed back to the broker for redelivery). Implement it by hand for a type
/// that handles messages with state of its own.
///
/// ```
/// use tx_outbox::{Delivery, Handler};
/// use tx_sqlx::TxError;
///
/// fn accepts<H: Handler>(_: H) {}
///
/// accepts(|d: Delivery| async move {
///     let _payload = d.payload;
///     Ok::<_, TxError>(())
/// });
/// ```
pub trait Handler {
    /// What handling a message returns (the consumers drop it).
    type Output;
    /// Why handling failed: the transaction rolls back and the message is redelivered.
    type Error: From<TxError> + Display;
    /// The future of one message's handling.
    type Future: Future<Output = Result<Self::Output, Self::Error>>;

    /// Handles `delivery`. Its writes through the inbox's pool join the transaction that
    /// records the message id, so they commit only together with that record.
    fn handle(&self, delivery: Delivery) -> Self::Future;
}

impl<F, Fut, T, E> Handler for F
where
    F: Fn(Delivery) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: From<TxError> + Display,
{
    type Output = T;
    type Error = E;
    type Future = Fut;

    fn handle(&self, delivery: Delivery) -> Fut {
        self(delivery)
    }
}
