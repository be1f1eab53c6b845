//! [`StepError`]: how a step says it failed, and whether trying again may help.

use std::fmt;

use tx_sqlx::{BoxError, TxError};

/// The error of a step's forward action or compensation.
///
/// * [`StepError::Retry`]: a transient failure (a timeout, a service briefly down, a
///   serialization failure). The step is tried again after a jittered exponential backoff, up
///   to its [`max_attempts`](crate::StepOptions::max_attempts); then a forward step counts as
///   failed for good (as `Fail`) and a compensation leaves the saga
///   [`Stuck`](crate::SagaStatus::Stuck).
/// * [`StepError::Fail`]: retrying cannot help (out of stock, payment declined). In a forward
///   action it starts compensation at once. A compensation must succeed eventually, so it is
///   retried on either error, up to its
///   [`compensation_max_attempts`](crate::StepOptions::compensation_max_attempts), before the
///   saga is left `Stuck` for a person to look at.
///
/// A panic, or running past the step's [timeout](crate::StepOptions::timeout), counts as a
/// `Retry` of that attempt. `?` on a [`TxError`] or `sqlx::Error` gives `Retry` for failures
/// that re-running may cure (serialization failure, deadlock, lost connection, timeout) and
/// `Fail` for the rest (a constraint violation, a syntax error).
///
/// ```
/// use tx_saga::StepError;
///
/// let declined = StepError::Fail("card declined".into());
/// assert!(!declined.is_retry());
/// let later = StepError::retry(std::io::Error::other("payment service unavailable"));
/// assert!(later.is_retry());
/// assert_eq!(later.to_string(), "retryable step failure: payment service unavailable");
/// ```
#[derive(Debug)]
pub enum StepError {
    /// Try again, with backoff, up to the step's attempt limit.
    Retry(BoxError),
    /// Give up on this step: compensate (forward) or stop as `Stuck` (compensation).
    Fail(BoxError),
}

impl StepError {
    /// A [`StepError::Retry`] from any error.
    pub fn retry(e: impl Into<BoxError>) -> StepError {
        StepError::Retry(e.into())
    }

    /// A [`StepError::Fail`] from any error.
    pub fn fail(e: impl Into<BoxError>) -> StepError {
        StepError::Fail(e.into())
    }

    /// True for [`StepError::Retry`].
    #[must_use]
    pub fn is_retry(&self) -> bool {
        matches!(self, StepError::Retry(_))
    }

    /// The underlying error.
    #[must_use]
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        match self {
            StepError::Retry(e) | StepError::Fail(e) => &**e,
        }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepError::Retry(e) => write!(f, "retryable step failure: {e}"),
            StepError::Fail(e) => write!(f, "step failed: {e}"),
        }
    }
}

impl std::error::Error for StepError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.cause())
    }
}

/// Whether a failure of the transaction machinery is worth another attempt.
fn transient(e: &TxError) -> bool {
    match e {
        _ if e.is_retryable() => true,
        // Everything but a statement the server rejected: BEGIN/COMMIT/connection trouble.
        TxError::Database { operation, .. } => *operation != tx_sqlx::Operation::Statement,
        TxError::Timeout | TxError::PoolClosed | TxError::CommitOutcomeUnknown(_) => true,
        TxError::WouldBlock { .. } => true,
        _ => false,
    }
}

impl From<TxError> for StepError {
    fn from(e: TxError) -> StepError {
        if transient(&e) {
            StepError::Retry(Box::new(e))
        } else {
            StepError::Fail(Box::new(e))
        }
    }
}

impl From<sqlx::Error> for StepError {
    fn from(e: sqlx::Error) -> StepError {
        let io_or_pool = matches!(
            e,
            sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_)
        );
        let tx = TxError::from(e);
        if io_or_pool {
            StepError::Retry(Box::new(tx))
        } else {
            StepError::from(tx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_errors_map_to_retry_or_fail() {
        assert!(StepError::from(TxError::Timeout).is_retry());
        assert!(StepError::from(TxError::PoolClosed).is_retry());
        assert!(!StepError::from(TxError::NoTransaction).is_retry());
        let rejected = TxError::database(tx_sqlx::Operation::Statement, false, "unique violation");
        assert!(!StepError::from(rejected).is_retry());
        let deadlock = TxError::database(tx_sqlx::Operation::Statement, true, "deadlock");
        assert!(StepError::from(deadlock).is_retry());
        let begin = TxError::database(tx_sqlx::Operation::Begin, false, "connection refused");
        assert!(StepError::from(begin).is_retry());
        assert!(StepError::from(sqlx::Error::PoolTimedOut).is_retry());
        assert!(!StepError::from(sqlx::Error::RowNotFound).is_retry());
    }
}
