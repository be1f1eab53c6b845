//! Error mapping between the engine ([`TxError`]) and sqlx ([`sqlx::Error`]).

use std::borrow::Cow;

use tx_core::{Operation, TxError};

/// A [`TxError`] raised while a `&TxPool` executor prepares a statement (the deadline passed,
/// the deferred `BEGIN` failed, SQLite's write lock is held by this task, ...), as the
/// `sqlx::Error` an executor must return.
///
/// * A driver failure (`TxError::Database` whose source is a `sqlx::Error`, e.g. `BEGIN`
///   rejected, pool timed out) is returned as that original `sqlx::Error`.
/// * [`TxError::PoolClosed`] becomes [`sqlx::Error::PoolClosed`].
/// * Anything else becomes [`sqlx::Error::Io`] wrapping the `TxError` itself, with kind
///   [`std::io::ErrorKind::TimedOut`] for [`TxError::Timeout`], [`std::io::ErrorKind::WouldBlock`] for
///   [`TxError::WouldBlock`], [`std::io::ErrorKind::Other`] otherwise. Its message is the
///   `TxError`'s, and `io_error.get_ref()` downcasts to `TxError`.
pub(crate) fn tx_to_sqlx(err: TxError) -> sqlx::Error {
    // One mapping, tx-core's `From<TxError> for sqlx::Error`, so the two cannot drift.
    sqlx::Error::from(err)
}

/// The `TxError` that [`tx_to_sqlx`] wrapped, if `err` is one.
pub(crate) fn wrapped_tx_error(err: &sqlx::Error) -> Option<&TxError> {
    match err {
        sqlx::Error::Io(e) => e.get_ref()?.downcast_ref::<TxError>(),
        _ => None,
    }
}

/// What tx knows about a [`sqlx::Error`]: the engine's own error inside it, whether re-running
/// the transaction may cure it, whether it is the transaction's deadline, and the database's
/// SQLSTATE.
///
/// A statement run through `&TxPool` must return `sqlx::Error`, so when the engine refuses
/// or cuts it (the deadline passed, SQLite's write lock is held by this task, ...) the
/// [`TxError`] travels inside a `sqlx::Error`. These methods find it, and read a driver error
/// the same way, so code that holds a `sqlx::Error` (a function returning
/// `Result<T, sqlx::Error>`, or an error type with a `Db(sqlx::Error)` variant) loses nothing.
///
/// Converting with `TxError::from(sqlx_error)` gives the same answers as a [`TxError`]: that
/// is the pattern the crate documentation teaches (an application error whose
/// `From<sqlx::Error>` goes through `TxError`).
///
/// ```
/// use tx_sqlx::{SqlxErrorExt, TxError};
///
/// fn describe(e: &sqlx::Error) -> &'static str {
///     if e.is_timeout() {
///         "the transaction ran out of time: it was rolled back"
///     } else if e.is_retryable() {
///         "a serialization failure or deadlock: try the whole transaction again"
///     } else if e.sqlstate() == Some("23505") {
///         "a duplicate key"
///     } else {
///         "something else"
///     }
/// }
///
/// assert_eq!(describe(&sqlx::Error::RowNotFound), "something else");
/// assert!(sqlx::Error::RowNotFound.tx_error().is_none());
/// ```
pub trait SqlxErrorExt: sealed::Sealed {
    /// The engine's error this `sqlx::Error` carries, if it carries one: the deadline
    /// ([`TxError::Timeout`]), a refused wait ([`TxError::WouldBlock`]), a missing
    /// transaction, ... `None` for a driver error (a rejected statement, a lost connection).
    fn tx_error(&self) -> Option<&TxError>;

    /// True when re-running the whole transaction may succeed: a serialization failure or
    /// deadlock (PostgreSQL 40001, 40P01; MySQL 1213, 1205; SQLite busy), whether the driver
    /// reported it or the engine did ([`TxError::is_retryable`]).
    fn is_retryable(&self) -> bool;

    /// True when the transaction's deadline ended the statement or refused to run it
    /// ([`TxError::Timeout`]): the transaction is rolled back.
    fn is_timeout(&self) -> bool;

    /// The database's SQLSTATE for the failure (PostgreSQL, MySQL/MariaDB), also when it is
    /// inside the engine's error ([`TxError::sqlstate`]). `None` for errors that are not the
    /// database's, and on SQLite (which has numeric result codes instead).
    fn sqlstate(&self) -> Option<&str>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::Error {}
}

impl SqlxErrorExt for sqlx::Error {
    fn tx_error(&self) -> Option<&TxError> {
        wrapped_tx_error(self)
    }

    fn is_retryable(&self) -> bool {
        match self.tx_error() {
            Some(tx) => tx.is_retryable(),
            None => tx_core::sqlx_is_retryable(self),
        }
    }

    fn is_timeout(&self) -> bool {
        matches!(self.tx_error(), Some(TxError::Timeout))
    }

    fn sqlstate(&self) -> Option<&str> {
        match self.tx_error() {
            Some(tx) => tx.sqlstate(),
            None => tx_core::sqlx_sqlstate(self),
        }
    }
}

/// A failure of `operation` (begin, savepoint, rollback, ...) as a `TxError`.
pub(crate) fn db_error(operation: Operation, err: sqlx::Error) -> TxError {
    match err {
        sqlx::Error::PoolClosed => TxError::PoolClosed,
        err => TxError::database(operation, tx_core::sqlx_is_retryable(&err), err),
    }
}

/// Acquiring a connection outside a transaction failed.
pub(crate) fn acquire_error(err: sqlx::Error) -> TxError {
    db_error(Operation::Acquire, err)
}

/// Whether `err` says the connection itself is broken or out of sync (as opposed to the
/// server rejecting a statement or a client-side encode/decode failure).
pub(crate) fn is_connection_error(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::PoolTimedOut
    )
}

/// The transaction was aborted by the server after a failed statement (PostgreSQL aborts the
/// whole transaction on any error; MySQL rolls it back on a deadlock), so it could not be
/// committed.
#[derive(Debug)]
pub(crate) struct TransactionAborted {
    pub(crate) backend: &'static str,
    pub(crate) cause: String,
}

impl std::fmt::Display for TransactionAborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {} transaction was aborted by an earlier failed statement ({}); it was rolled \
             back instead of committed (to keep the other work after a failed statement, run it \
             in a Nested scope)",
            self.backend, self.cause
        )
    }
}

impl std::error::Error for TransactionAborted {}

/// The message of SQLite's single-writer fail-fast error.
pub(crate) fn sqlite_would_block(what: &str) -> TxError {
    TxError::WouldBlock {
        message: Cow::Owned(format!(
            "{what} would wait for SQLite's write lock, which the suspended transaction of this \
             same task holds (SQLite allows one writer per database, and the outer transaction \
             cannot finish while this scope waits): it would only fail after the busy timeout. \
             Use Propagation::Nested (a savepoint in the outer transaction) instead of \
             RequiresNew/NotSupported for this work, or give it a second pool on another \
             database file"
        )),
    }
}

/// True for SQLite `SQLITE_BUSY`/`SQLITE_LOCKED` (and their extended codes).
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn is_sqlite_busy(err: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = err else {
        return false;
    };
    db.code()
        .and_then(|c| c.parse::<u32>().ok())
        .is_some_and(|n| n & 0xff == 5 || n & 0xff == 6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_round_trips_through_io() {
        let e = tx_to_sqlx(TxError::Timeout);
        assert!(matches!(&e, sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut));
        assert!(matches!(wrapped_tx_error(&e), Some(TxError::Timeout)));
        assert!(e.to_string().contains("timed out"));
    }

    #[test]
    fn driver_errors_are_unwrapped() {
        let e = tx_to_sqlx(TxError::database(
            Operation::Begin,
            false,
            sqlx::Error::PoolTimedOut,
        ));
        assert!(matches!(e, sqlx::Error::PoolTimedOut));
        assert!(matches!(
            tx_to_sqlx(TxError::PoolClosed),
            sqlx::Error::PoolClosed
        ));
    }

    #[test]
    fn ext_trait_finds_the_engine_error_inside() {
        let timeout = tx_to_sqlx(TxError::Timeout);
        assert!(timeout.is_timeout());
        assert!(!timeout.is_retryable());
        assert!(matches!(timeout.tx_error(), Some(TxError::Timeout)));
        assert_eq!(timeout.sqlstate(), None);
        // Converting through TxError keeps the meaning.
        assert!(matches!(TxError::from(timeout), TxError::Timeout));

        let busy = tx_to_sqlx(TxError::database(Operation::Commit, true, "busy"));
        assert!(busy.is_retryable() && !busy.is_timeout());
        assert!(busy.tx_error().is_some_and(TxError::is_retryable));

        let driver = sqlx::Error::RowNotFound;
        assert!(driver.tx_error().is_none());
        assert!(!driver.is_retryable() && !driver.is_timeout());
        assert_eq!(driver.sqlstate(), None);
    }

    #[test]
    fn would_block_names_cause_and_remedy() {
        let e = sqlite_would_block("a RequiresNew transaction");
        let msg = e.to_string();
        assert!(
            msg.contains("write lock") && msg.contains("Nested") && msg.contains("second pool")
        );
        let s = tx_to_sqlx(e);
        assert!(matches!(&s, sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock));
    }
}
