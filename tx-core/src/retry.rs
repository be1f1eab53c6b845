//! Re-running a whole transaction after a serialization failure or deadlock (`retry = n`).
//!
//! A call is re-run only when the transaction it began itself rolled back because of a
//! retryable failure: never after a commit (an error matching `no_rollback_for` commits), never
//! for a call that joined an existing transaction (its owner decides), and not for a retryable
//! failure that a `Nested` scope already handled by rolling back to its savepoint.

use std::future::Future;
use std::time::Duration;

use crate::definition::TransactionDefinition;
use crate::error::TxError;
use crate::observe::metrics as tx_metrics;
use crate::propagation::{self, ManagerRef, RunInfo};
use crate::status::TransactionStatus;

/// First backoff; doubled per attempt up to [`MAX_BACKOFF`], each with 50-100% jitter.
const BASE_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The retry decision for one call, at most `retries` re-runs.
pub(crate) struct Retry<'a> {
    retries: u32,
    /// Re-runs so far.
    retried: u32,
    name: &'a str,
}

impl<'a> Retry<'a> {
    pub(crate) fn new(retries: u32, name: &'a str) -> Self {
        Retry {
            retries,
            retried: 0,
            name,
        }
    }

    /// The number of the next run, from 1.
    pub(crate) fn attempt(&self) -> u32 {
        self.retried + 1
    }

    /// After a run that ended `ok` (or not) with `info`: the backoff to sleep before running
    /// again, or `None` to return its result.
    pub(crate) fn next(&mut self, ok: bool, info: &RunInfo) -> Option<Duration> {
        if ok {
            return None;
        }
        if !info.owned_transaction {
            if self.retries > 0 {
                tracing::debug!(target: "tx", "[{}] joined an existing transaction: retry ignored", self.name);
            }
            return None;
        }
        // Never after a commit (or an unknown outcome), and only for a retryable cause.
        if !info.rolled_back {
            return None;
        }
        let cause = info.retryable.as_ref()?;
        let code = cause.sqlstate.as_deref().unwrap_or("unknown");
        if self.retried >= self.retries {
            if self.retries > 0 {
                tracing::warn!(
                    target: "tx",
                    "Transaction [{}] rolled back after a retryable failure (SQLSTATE {code}) on attempt {}: retries exhausted ({} allowed), returning the error",
                    self.name,
                    self.attempt(),
                    self.retries
                );
            }
            return None;
        }
        self.retried += 1;
        tx_metrics::retried(self.name);
        let backoff = BASE_BACKOFF
            .saturating_mul(1 << self.retried.min(16))
            .min(MAX_BACKOFF)
            .mul_f64(0.5 + fastrand::f64() / 2.0);
        tracing::debug!(
            target: "tx",
            "Transaction [{}] rolled back after a retryable failure (SQLSTATE {code}): retry {}/{} in {backoff:?}",
            self.name,
            self.retried,
            self.retries
        );
        Some(backoff)
    }
}

/// Runs `body` in a scope with `definition`, re-running it (up to `retries` times) while the
/// transaction it began rolls back because of a retryable failure. Each run's scope reports
/// its attempt number ([`TransactionStatus::attempt`]).
pub(crate) async fn run<T, E, F, Fut, R>(
    manager: ManagerRef<'_>,
    definition: &TransactionDefinition,
    retries: u32,
    rollback_on: R,
    mut body: F,
) -> Result<T, E>
where
    E: From<TxError>,
    F: FnMut(TransactionStatus) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Fn(&E) -> bool,
{
    let mut retry = Retry::new(retries, definition.get_name());
    loop {
        let (result, info) = propagation::execute_attempt(
            manager,
            definition,
            &rollback_on,
            &mut body,
            retry.attempt(),
        )
        .await;
        match retry.next(result.is_ok(), &info) {
            None => return result,
            Some(backoff) => {
                // Nothing of the failed run is kept across the backoff.
                drop(result);
                tokio::time::sleep(backoff).await;
            }
        }
    }
}
