//! What the outbox, inbox and relay ask of a backend: every statement the crate runs, and the
//! "new work" wake-ups.

use std::time::Duration;

use futures_util::future::BoxFuture;
use tx_sqlx::TxError;

use super::dialect::Dialect;
use super::rows::{FailedRow, Failure, PendingRow, Purge, StatsRow, Window};
use crate::message::{Message, MessageId};

/// Waits for "new work" notifications (PostgreSQL `LISTEN`).
pub(crate) trait Listener: Send {
    /// Resolves on the next notification (or after a lost connection was re-established).
    fn wait(&mut self) -> BoxFuture<'_, ()>;
}

/// Every statement the crate runs.
pub(crate) trait Store: Send + Sync + 'static {
    fn dialect(&self) -> Dialect;
    fn table(&self) -> &str;

    fn install(&self) -> BoxFuture<'_, Result<(), TxError>>;
    /// Inserts on the transaction bound to this task; `NoTransaction` when there is none.
    fn insert<'a>(
        &'a self,
        msg: &'a Message,
        id: MessageId,
        part: i32,
    ) -> BoxFuture<'a, Result<(), TxError>>;

    /// Free partitions that have due pending messages.
    fn partitions_with_work(&self) -> BoxFuture<'_, Result<Vec<i32>, TxError>>;
    /// Leases `parts` (those still free) to `token`; returns the ones leased.
    fn claim<'a>(
        &'a self,
        token: &'a str,
        parts: &'a [i32],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<i32>, TxError>>;
    fn release<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<(), TxError>>;
    /// The pending messages of `window`, in publication order, each with whether it may be
    /// sent now (due, and final: no message with a smaller id can still appear).
    fn fetch<'a>(
        &'a self,
        window: Window<'a>,
    ) -> BoxFuture<'a, Result<Vec<(PendingRow, bool)>, TxError>>;
    fn mark_delivered<'a>(
        &'a self,
        ids: &'a [i64],
        delete: bool,
    ) -> BoxFuture<'a, Result<(), TxError>>;
    fn mark_failed<'a>(
        &'a self,
        id: i64,
        failure: Failure<'a>,
    ) -> BoxFuture<'a, Result<(), TxError>>;

    fn stats(&self) -> BoxFuture<'_, Result<StatsRow, TxError>>;
    fn failed(&self, limit: usize) -> BoxFuture<'_, Result<Vec<FailedRow>, TxError>>;
    fn retry_failed(&self, id: MessageId) -> BoxFuture<'_, Result<bool, TxError>>;
    /// Deletes the records of `what` older than `older_than`; returns how many.
    fn purge(&self, what: Purge, older_than: Duration) -> BoxFuture<'_, Result<u64, TxError>>;
    /// A notification listener, on backends that have one.
    fn listener(&self) -> BoxFuture<'_, Result<Option<Box<dyn Listener>>, TxError>>;

    fn inbox_install(&self) -> BoxFuture<'_, Result<(), TxError>>;
    /// Records `(consumer, message_id)` on the bound transaction; false if already recorded.
    fn inbox_record<'a>(
        &'a self,
        consumer: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, TxError>>;
}
