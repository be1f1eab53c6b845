//! Re-running a whole transaction after a serialization failure or deadlock (`retry = n`).

use std::time::Duration;

use crate::propagation::RunInfo;

/// First backoff; doubled per attempt up to [`MAX_BACKOFF`], each with 50-100% jitter.
const BASE_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The retry decision for one call: re-run while the run began its own transaction and that
/// transaction failed with a retryable error, at most `retries` times. A run that joined an
/// existing transaction is never retried alone: the owner decides.
pub(crate) struct Retry<'a> {
    retries: u32,
    attempt: u32,
    name: &'a str,
}

impl<'a> Retry<'a> {
    pub(crate) fn new(retries: u32, name: &'a str) -> Self {
        Retry {
            retries,
            attempt: 0,
            name,
        }
    }

    /// Whether to run again after a run that ended with `result`; sleeps the backoff first.
    pub(crate) async fn again<T, E>(&mut self, result: &Result<T, E>, info: RunInfo) -> bool {
        if result.is_ok() || self.attempt >= self.retries || !info.retryable_failure {
            return false;
        }
        if !info.owned_transaction {
            tracing::debug!(target: "tx", "[{}] joined an existing transaction: retry ignored", self.name);
            return false;
        }
        self.attempt += 1;
        let backoff = BASE_BACKOFF
            .saturating_mul(1 << self.attempt.min(16))
            .min(MAX_BACKOFF)
            .mul_f64(0.5 + fastrand::f64() / 2.0);
        tracing::debug!(
            target: "tx",
            "Transaction [{}] failed with a retryable error: retry {}/{} in {backoff:?}",
            self.name,
            self.attempt,
            self.retries
        );
        tokio::time::sleep(backoff).await;
        true
    }
}
