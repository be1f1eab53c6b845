//! The one error type of the engine.

use std::borrow::Cow;

/// A boxed error, as returned by synchronization hooks and backends.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Which step of a transaction a backend failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Acquiring a connection and sending `BEGIN`.
    Begin,
    /// `COMMIT`.
    Commit,
    /// `ROLLBACK`.
    Rollback,
    /// `SAVEPOINT`, `ROLLBACK TO SAVEPOINT` or `RELEASE SAVEPOINT`.
    Savepoint,
    /// A statement run by user code through a transaction-aware executor.
    Statement,
    /// Acquiring a connection outside of a transaction.
    Acquire,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operation::Begin => "begin",
            Operation::Commit => "commit",
            Operation::Rollback => "rollback",
            Operation::Savepoint => "savepoint",
            Operation::Statement => "statement",
            Operation::Acquire => "acquire",
        })
    }
}

/// Everything that can go wrong in transaction management.
///
/// User error types take it in through `From<TxError>`, so that a transactional function can
/// report what the engine decided (a timeout, an unexpected rollback, ...) in its own error type.
///
/// ```
/// use tx_core::TxError;
///
/// let e = TxError::NoTransaction;
/// assert!(e.to_string().contains("Mandatory"));
/// assert!(!e.is_retryable());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TxError {
    /// Propagation `Mandatory` found no transaction, or a hook / rollback-only mark was
    /// requested outside every transactional scope.
    #[error(
        "no existing transaction: propagation Mandatory (and hook registration or set_rollback_only) \
         needs an enclosing transactional scope; call it from a #[transactional] function or \
         TransactionTemplate, or use propagation Required"
    )]
    NoTransaction,

    /// Propagation `Never` was called inside a transaction.
    #[error(
        "existing transaction found for a scope with propagation Never; call it outside any \
         transaction, or wrap the call in propagation NotSupported"
    )]
    ExistingTransaction,

    /// The transaction was marked rollback-only by a participant, so the owner's commit rolled
    /// it back instead.
    #[error(
        "transaction rolled back because it has been marked as rollback-only (a participating \
         scope failed or called set_rollback_only()); nothing was committed"
    )]
    UnexpectedRollback,

    /// The transaction's deadline passed; it was rolled back.
    #[error("transaction timed out: its deadline passed and it was rolled back")]
    Timeout,

    /// Propagation `Nested` on a backend or in a state without savepoints.
    #[error(
        "propagation Nested needs savepoints, which this transaction manager does not support; \
         use Required or RequiresNew"
    )]
    NestedNotSupported,

    /// No manager was given and no default manager is set.
    #[error(
        "no transaction manager: call tx_sqlx::set_default_manager(pool) at start-up \
         (tx_core::set_default_manager when you depend on tx-core alone), or name one with \
         #[transactional(manager = ...)] / TransactionTemplate::new(pool)"
    )]
    NoManager,

    /// A call was given something it cannot use (an unknown name, a value that does not
    /// serialize, a configuration that contradicts itself); nothing was done. The message
    /// says what was wrong and what to do.
    #[error("{message}")]
    InvalidArgument {
        /// What was wrong and how to fix it.
        message: Cow<'static, str>,
    },

    /// `manager = "name"` names no registered manager.
    #[error(
        "no transaction manager registered under the name {name:?}: call \
         tx_sqlx::register_manager({name:?}, pool) at start-up (tx_core::register_manager \
         when you depend on tx-core alone)"
    )]
    UnknownManager {
        /// The name that was asked for.
        name: Cow<'static, str>,
    },

    /// A `before_commit` hook failed; the transaction was rolled back.
    #[error("before_commit synchronization failed, the transaction was rolled back: {0}")]
    BeforeCommit(#[source] BoxError),

    /// A plain event listener (or a fallback-executed `BeforeCommit` listener) failed; see
    /// [`EventBus::publish`](crate::EventBus::publish).
    #[error("event listener failed: {0}")]
    Listener(#[source] BoxError),

    /// The connection was lost while `COMMIT` was in flight: the transaction may or may not
    /// have committed. Check the data before retrying.
    #[error(
        "commit outcome unknown: the connection failed while COMMIT was in flight; the \
         transaction may or may not have been committed, check before retrying"
    )]
    CommitOutcomeUnknown(#[source] BoxError),

    /// A request would wait forever (or for the whole busy/acquire timeout) on a resource the
    /// current task itself holds, e.g. SQLite's single write lock held by the suspended
    /// transaction. The message says what to do instead.
    #[error("{message}")]
    WouldBlock {
        /// What happened and how to avoid it.
        message: Cow<'static, str>,
    },

    /// Two scopes of one transaction ran at once (e.g. `join!` of two `Nested` calls, or a
    /// participant beside a `Nested` call) and a statement of one would have run inside the
    /// other's open savepoint, so it was refused. The message names both scopes and what to do.
    #[error("{message}")]
    ConcurrentScopes {
        /// What happened and how to avoid it.
        message: Cow<'static, str>,
    },

    /// Every connection of the pool is held by a task that suspended a transaction on it and
    /// now waits for another connection of the same pool (`RequiresNew` inside a
    /// transaction): none can come back, so waiting would only end at a timeout.
    #[error(
        "connection pool starved: all {max_connections} connections of the pool are held by \
         transactions suspended for a RequiresNew scope, and each of their tasks waits for \
         another connection of the same pool, so none can come back (beginning transaction \
         [{name}]). Give the inner work its own pool, make the pool bigger, reserve connections \
         for inner transactions (tx_sqlx: TxPool::reserve_for_nested), or do the inner work in \
         an after_completion hook instead"
    )]
    PoolStarvation {
        /// The pool's maximum number of connections.
        max_connections: u32,
        /// The transaction that could not begin.
        name: Cow<'static, str>,
    },

    /// The transaction manager's pool is closed.
    #[error("the transaction manager's connection pool is closed")]
    PoolClosed,

    /// The database or driver failed.
    #[error("database error during {operation}: {source}")]
    Database {
        /// What the engine was doing.
        operation: Operation,
        /// Whether re-running the whole transaction may succeed (serialization failure,
        /// deadlock, lock-wait timeout, busy database).
        retryable: bool,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
}

impl TxError {
    /// True for failures that re-running the whole transaction may cure: serialization
    /// failures and deadlocks (PostgreSQL `40001`, `40P01`; MySQL 1213, 1205; SQLite busy).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TxError::Database {
                retryable: true,
                ..
            }
        )
    }

    /// The database's own code for the failure behind this error: the SQLSTATE on
    /// PostgreSQL (`"40001"` serialization failure, `"23505"` unique violation, ...) and
    /// MySQL/MariaDB (`"40001"` for a deadlock, `"23000"` for a duplicate key, ...), found
    /// anywhere in the error's [`source`](std::error::Error::source) chain. `None` when the
    /// database did not fail (a timeout, an unexpected rollback, ...), and on SQLite, which
    /// has no SQLSTATE (its numeric result code is in the driver error).
    ///
    /// ```
    /// use tx_core::TxError;
    /// assert_eq!(TxError::Timeout.sqlstate(), None);
    /// ```
    #[must_use]
    pub fn sqlstate(&self) -> Option<&str> {
        #[cfg(feature = "sqlx")]
        {
            let mut next: Option<&(dyn std::error::Error + 'static)> =
                std::error::Error::source(self);
            while let Some(err) = next {
                if let Some(code) = err
                    .downcast_ref::<sqlx_core::Error>()
                    .and_then(sqlx_conv::sqlx_sqlstate)
                {
                    return Some(code);
                }
                next = err.source();
            }
        }
        None
    }

    /// Wraps a backend failure.
    pub fn database(operation: Operation, retryable: bool, source: impl Into<BoxError>) -> TxError {
        TxError::Database {
            operation,
            retryable,
            source: source.into(),
        }
    }
}

#[cfg(feature = "sqlx")]
mod sqlx_conv {
    use super::{Operation, TxError};

    /// The SQLSTATE of a database error, when the driver reports one as text it holds
    /// (PostgreSQL, MySQL; SQLite's numeric codes are not SQLSTATEs).
    pub fn sqlx_sqlstate(err: &sqlx_core::Error) -> Option<&str> {
        let sqlx_core::Error::Database(db) = err else {
            return None;
        };
        match db.code()? {
            std::borrow::Cow::Borrowed(code) => Some(code),
            std::borrow::Cow::Owned(_) => None,
        }
    }

    /// True for the database errors that re-running the transaction may cure.
    pub fn sqlx_is_retryable(err: &sqlx_core::Error) -> bool {
        let sqlx_core::Error::Database(db) = err else {
            return false;
        };
        let code = db.code();
        match code.as_deref() {
            // PostgreSQL serialization_failure / deadlock_detected; MySQL 1213 maps to 40001.
            Some("40001") | Some("40P01") => true,
            // SQLite reports numeric result codes (never five characters, unlike SQLSTATEs):
            // SQLITE_BUSY (5), SQLITE_LOCKED (6) and their extended codes (517 BUSY_SNAPSHOT..).
            Some(c) if c.len() < 5 => c.parse::<u32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6)),
            // MySQL 1205 (lock wait timeout) has SQLSTATE HY000; its message carries the
            // server's own advice.
            _ => db.message().contains("try restarting transaction"),
        }
    }

    impl From<sqlx_core::Error> for TxError {
        fn from(err: sqlx_core::Error) -> Self {
            match err {
                sqlx_core::Error::PoolClosed => TxError::PoolClosed,
                // An engine error that a transaction-aware executor had to pass through
                // sqlx's error type (a timeout, a single-writer refusal, ...): hand it back.
                sqlx_core::Error::Io(io) if io.get_ref().is_some_and(|e| e.is::<TxError>()) => {
                    match io.into_inner().map(|e| e.downcast::<TxError>()) {
                        Some(Ok(tx)) => *tx,
                        _ => unreachable!("checked to hold a TxError"),
                    }
                }
                err => TxError::Database {
                    operation: Operation::Statement,
                    retryable: sqlx_is_retryable(&err),
                    source: Box::new(err),
                },
            }
        }
    }
}

// `TxError` into `sqlx::Error`, so that a `#[transactional]` function may return
// `Result<T, sqlx::Error>`.
#[cfg(feature = "sqlx")]
mod tx_into_sqlx {
    use std::io;

    use super::TxError;

    /// Lets a `#[transactional]` function return `Result<T, sqlx::Error>`. The wrapping is the
    /// one a `&TxPool` executor uses for the engine errors it must return as `sqlx::Error`, so
    /// the engine's error can always be found again:
    ///
    /// * a driver failure (`TxError::Database` whose source is a `sqlx::Error`) is that original
    ///   `sqlx::Error`;
    /// * [`TxError::PoolClosed`] is `sqlx::Error::PoolClosed`;
    /// * anything else is `sqlx::Error::Io` wrapping the `TxError` itself, of kind `TimedOut`
    ///   for [`TxError::Timeout`], `WouldBlock` for [`TxError::WouldBlock`], `Other` otherwise:
    ///   its message is the `TxError`'s, and `io_error.get_ref()` downcasts to `TxError` (what
    ///   `From<sqlx::Error> for TxError` unwraps again).
    impl From<TxError> for sqlx_core::Error {
        fn from(err: TxError) -> Self {
            match err {
                TxError::PoolClosed => sqlx_core::Error::PoolClosed,
                TxError::Database { source, .. } if source.is::<sqlx_core::Error>() => {
                    match source.downcast::<sqlx_core::Error>() {
                        Ok(e) => *e,
                        Err(_) => unreachable!("checked with is::<sqlx::Error>()"),
                    }
                }
                other => {
                    let kind = match &other {
                        TxError::Timeout => io::ErrorKind::TimedOut,
                        TxError::WouldBlock { .. } => io::ErrorKind::WouldBlock,
                        _ => io::ErrorKind::Other,
                    };
                    sqlx_core::Error::Io(io::Error::new(kind, other))
                }
            }
        }
    }
}

#[cfg(feature = "sqlx")]
#[doc(hidden)]
pub use sqlx_conv::{sqlx_is_retryable, sqlx_sqlstate};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_messages_name_functions_that_exist() {
        let msg = TxError::NoManager.to_string();
        assert!(msg.contains("tx_sqlx::set_default_manager(pool)"), "{msg}");
        assert!(msg.contains("tx_core::set_default_manager"), "{msg}");
        assert!(!msg.contains(" tx::"), "{msg}");
        let msg = TxError::UnknownManager {
            name: Cow::Borrowed("audit"),
        }
        .to_string();
        assert!(
            msg.contains("tx_sqlx::register_manager(\"audit\", pool)"),
            "{msg}"
        );
        assert!(!msg.contains(" tx::"), "{msg}");
    }

    #[test]
    fn sqlstate_is_none_without_a_database_failure() {
        assert_eq!(TxError::Timeout.sqlstate(), None);
        assert_eq!(
            TxError::database(Operation::Commit, false, "not a driver error").sqlstate(),
            None
        );
    }
}
