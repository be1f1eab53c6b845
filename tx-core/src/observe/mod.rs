//! Observing transactions: a `tracing` span per transactional scope, process-wide
//! [`TransactionListener`]s, and (feature `metrics`) counters and histograms.
//!
//! The engine reports through three channels, each free when nobody listens:
//!
//! - **Spans** ([`span`]): every scope is a span named `tx` (target `"tx"`, level INFO) around
//!   its body and its completion, so the engine's own debug lines, the driver's statement logs
//!   and the user's events inside the body nest under it. A disabled span is `Span::none()`:
//!   a joined call with no interested subscriber pays one callsite check.
//! - **Listeners** ([`listener`]): Spring's `TransactionExecutionListener`, called around the
//!   begin, commit and rollback of every transaction and savepoint. One atomic load when none
//!   is registered.
//! - **Metrics** ([`metrics`], feature `metrics`): through the `metrics` facade, for whatever
//!   recorder the application installed.

pub(crate) mod listener;
pub(crate) mod metrics;
pub(crate) mod span;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::completion::Completion;

pub use listener::{
    RollbackCause, TransactionExecution, TransactionListener, add_transaction_listener,
};

/// Ids of transactions and scopes, unique in the process (from 1).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The OpenTelemetry `db.system` name of a backend (`TransactionManager::backend_name`):
/// `postgresql`, `mysql`, `sqlite`; other names pass through.
pub(crate) fn db_system(backend_name: &'static str) -> &'static str {
    match backend_name {
        "postgres" | "postgresql" | "pg" => "postgresql",
        "mysql" | "mariadb" => "mysql",
        "sqlite" | "sqlite3" => "sqlite",
        other => other,
    }
}

/// How a transaction or savepoint ended, as spans and metrics report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ending {
    pub(crate) completion: Completion,
    /// Why it rolled back (`None` when it committed or the outcome is unknown).
    pub(crate) cause: Option<RollbackCause>,
}

impl Ending {
    pub(crate) const COMMITTED: Ending = Ending {
        completion: Completion::Committed,
        cause: None,
    };

    pub(crate) const UNKNOWN: Ending = Ending {
        completion: Completion::Unknown,
        cause: None,
    };

    pub(crate) fn rolled_back(cause: RollbackCause) -> Ending {
        Ending {
            completion: Completion::RolledBack,
            cause: Some(cause),
        }
    }
}

/// The value of a span's `outcome` field and of the metrics' `outcome` label.
pub(crate) fn outcome_label(completion: Completion) -> &'static str {
    match completion {
        Completion::Committed => "committed",
        Completion::RolledBack => "rolled_back",
        Completion::Unknown => "unknown",
    }
}

/// How the engine's "Completed transaction" line words an ending.
impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.completion, self.cause) {
            (Completion::Committed, _) => f.write_str("committed"),
            (Completion::Unknown, _) => {
                f.write_str("outcome unknown (connection lost while COMMIT was in flight)")
            }
            (Completion::RolledBack, Some(cause)) => write!(f, "rolled back ({cause})"),
            (Completion::RolledBack, None) => f.write_str("rolled back"),
        }
    }
}
