//! The rows the relay and the inspection calls read, and the row states.

use std::time::Duration;

/// Row states.
pub(crate) const PENDING: i32 = 0;
pub(crate) const FAILED: i32 = 2;

/// A pending message as the relay reads it.
#[derive(Debug, Clone)]
pub(crate) struct PendingRow {
    pub id: i64,
    pub message_id: String,
    pub topic: String,
    pub key: Option<String>,
    pub headers: String,
    pub payload: Vec<u8>,
    pub attempts: i32,
    pub created_ms: i64,
}

/// Which pending messages a relay reads next: of the partitions leased to `token`, up to
/// `limit` with an id above `after`, leaving out the keys in `skip`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window<'a> {
    pub token: &'a str,
    pub after: i64,
    pub skip: &'a [String],
    pub limit: usize,
}

/// A failed send of a pending message, as the relay records it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failure<'a> {
    /// Failed sends so far, this one included.
    pub attempts: i32,
    /// Parked as failed (no more retries) rather than retried after `retry_in`.
    pub park: bool,
    pub retry_in: Duration,
    pub error: &'a str,
}

/// Which records a purge deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purge {
    /// Delivered outbox messages.
    Delivered,
    /// Inbox records.
    Inbox,
}

/// A parked message.
#[derive(Debug, Clone)]
pub(crate) struct FailedRow {
    pub message_id: String,
    pub topic: String,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_ms: i64,
}

/// What `stats()` reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StatsRow {
    pub pending: i64,
    pub failed: i64,
    pub oldest_pending_ms: Option<i64>,
    pub now_ms: i64,
}
