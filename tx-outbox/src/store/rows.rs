//! The rows the relay and the inspection calls read, and the row states.

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
