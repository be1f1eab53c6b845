//! Re-running a whole transaction after a serialization failure or deadlock (`retry = n`).
//!
//! A call is re-run only when the transaction it began rolled back because of a retryable
//! failure: never after a commit (an error matching `no_rollback_for` commits), never for a
//! call that joined an existing transaction (its owner decides). Which failure the rollback
//! was for, the returned error says ([`crate::retry_cause`]):
//! - it is, or carries, a retryable `TxError` / `sqlx::Error`: re-run when that failure was
//!   one of the transaction's own (a statement, `BEGIN` or `COMMIT` of it, also one a
//!   `Nested` scope rolled back to its savepoint before the error was passed on), not one of
//!   a transaction of its own inside (`RequiresNew`) or of autocommit work (`NotSupported`);
//! - it is, or carries first, another `TxError` (a timeout, an unexpected rollback, ...): not
//!   re-run, also after a retryable failure that a `Nested` scope handled;
//! - nothing can be seen in it (its type neither is nor exposes such an error through
//!   `source()`): re-run when a retryable failure of the transaction was not undone by a
//!   `Nested` rollback.

use std::future::Future;
use std::time::Duration;

use crate::definition::TransactionDefinition;
use crate::error::TxError;
use crate::observe::metrics as tx_metrics;
use crate::propagation::{self, ManagerRef, RunInfo};
use crate::retry_cause::Verdict;
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

    /// After a run that ended with `info`, and `None` for `Ok` or the verdict on its error:
    /// the backoff to sleep before running again, or `None` to return its result.
    pub(crate) fn next(&mut self, error: Option<Verdict>, info: &RunInfo) -> Option<Duration> {
        let verdict = error?;
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
        let cause = match verdict {
            Verdict::Retryable => info.seen_retryable.as_ref()?,
            Verdict::NotRetryable => return None,
            Verdict::Opaque => info.retryable.as_ref()?,
        };
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
/// transaction it began rolls back because of a retryable failure (`classify` says what the
/// returned error carries). Each run's scope reports its attempt number
/// ([`TransactionStatus::attempt`]).
pub(crate) async fn run<T, E, Fut>(
    manager: ManagerRef<'_>,
    definition: &TransactionDefinition,
    retries: u32,
    rollback_on: impl Fn(&E) -> bool,
    classify: impl Fn(&E) -> Verdict,
    mut body: impl FnMut(TransactionStatus) -> Fut,
) -> Result<T, E>
where
    E: From<TxError>,
    Fut: Future<Output = Result<T, E>>,
{
    let mut retry = Retry::new(retries, definition.get_name());
    loop {
        let mut info = RunInfo::default();
        let result = propagation::run(
            manager,
            definition,
            &rollback_on,
            &mut body,
            Some((retry.attempt(), &mut info)),
        )
        .await;
        let verdict = result.as_ref().err().map(&classify);
        match retry.next(verdict, &info) {
            None => return result,
            Some(backoff) => {
                // Nothing of the failed run is kept across the backoff.
                drop(result);
                tokio::time::sleep(backoff).await;
            }
        }
    }
}
