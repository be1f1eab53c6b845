//! What the services work with besides the database: the stand-ins for the message queue
//! and the remote risk service, the timeline the demo prints, and a synchronization hook
//! that logs its phases. Nothing here depends on the backend.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tx_sqlx::{BoxError, Completion, TransactionSynchronization};

use super::error::ShopError;

/// Where every order ships to, unless a test leaves it out.
pub const ADDRESS: &str = "1 Nanjing Road, Shanghai";

/// An ordered log of what happened around a transaction (hook phases, messages sent), shared
/// by the services and read by the demo.
#[derive(Debug, Clone, Default)]
pub struct Timeline(Arc<Mutex<Vec<String>>>);

impl Timeline {
    /// Appends an entry.
    pub fn push(&self, entry: impl Into<String>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry.into());
    }

    /// Takes every entry so far, leaving the timeline empty.
    #[must_use]
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A stand-in for RabbitMQ: records the messages it "sends" (and logs them in the timeline).
#[derive(Debug, Clone, Default)]
pub struct MessageQueue {
    sent: Arc<Mutex<Vec<String>>>,
    timeline: Timeline,
}

impl MessageQueue {
    /// A queue that also logs into `timeline`.
    #[must_use]
    pub fn new(timeline: Timeline) -> Self {
        MessageQueue {
            sent: Arc::default(),
            timeline,
        }
    }

    /// Sends a message: once sent, it cannot be taken back.
    pub fn send(&self, topic: &str, payload: impl std::fmt::Display) {
        let message = format!("{topic} {payload}");
        self.timeline.push(format!("MQ sent: {message}"));
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
    }

    /// Every message sent so far.
    #[must_use]
    pub fn sent(&self) -> Vec<String> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A [`TransactionSynchronization`] that logs each phase it sees (the four hooks).
#[derive(Debug, Clone)]
pub struct PhaseLogger(pub Timeline);

impl TransactionSynchronization for PhaseLogger {
    async fn before_commit(&self, read_only: bool) -> Result<(), BoxError> {
        self.0.push(format!("before_commit(read_only={read_only})"));
        Ok(())
    }

    async fn before_completion(&self) {
        self.0.push("before_completion");
    }

    async fn after_commit(&self) {
        self.0.push("after_commit");
    }

    async fn after_completion(&self, completion: Completion) {
        self.0.push(format!("after_completion({completion:?})"));
    }
}

/// What the risk service says about an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RiskVerdict {
    /// Go ahead.
    Pass,
    /// Keep the order for manual review, for this reason.
    Reject(String),
}

/// A stand-in for the remote risk service : rejects large amounts, and can be
/// switched off to play an outage.
#[derive(Debug, Clone)]
pub struct RiskClient {
    up: Arc<AtomicBool>,
    limit: i64,
}

impl RiskClient {
    /// A risk service that rejects amounts above `limit`.
    #[must_use]
    pub fn new(limit: i64) -> Self {
        RiskClient {
            up: Arc::new(AtomicBool::new(true)),
            limit,
        }
    }

    /// Brings the service up or down.
    pub fn set_available(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    /// Checks an order amount.
    pub async fn check(&self, amount: i64) -> Result<RiskVerdict, ShopError> {
        tokio::task::yield_now().await; // a remote call
        if !self.up.load(Ordering::SeqCst) {
            return Err(ShopError::RiskServiceDown);
        }
        Ok(if amount > self.limit {
            RiskVerdict::Reject(format!("amount {amount} over {}", self.limit))
        } else {
            RiskVerdict::Pass
        })
    }
}
