//! Re-running a whole transaction after a serialization failure or deadlock (`retry = n`).

use std::future::Future;
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

    /// Whether to run again after a run that ended with `result`; the future sleeps the
    /// backoff first. The decision is taken before it is awaited and the future borrows
    /// neither `self` nor `result`, so a caller holding a `Result` whose `T` or `E` is not
    /// `Sync` across that await stays `Send`.
    pub(crate) fn again<T, E>(
        &mut self,
        result: &Result<T, E>,
        info: RunInfo,
    ) -> impl Future<Output = bool> + use<T, E> {
        let backoff = self.backoff(result.is_ok(), info);
        async move {
            match backoff {
                Some(backoff) => {
                    tokio::time::sleep(backoff).await;
                    true
                }
                None => false,
            }
        }
    }

    /// The backoff before the next attempt, or `None` when the call is not run again.
    fn backoff(&mut self, succeeded: bool, info: RunInfo) -> Option<Duration> {
        if succeeded || self.attempt >= self.retries || !info.retryable_failure {
            return None;
        }
        if !info.owned_transaction {
            tracing::debug!(target: "tx", "[{}] joined an existing transaction: retry ignored", self.name);
            return None;
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
        Some(backoff)
    }
}
