//! # tx-core: Spring-style declarative transactions for async Rust
//!
//! The database-agnostic engine behind `#[transactional]` and [`TransactionTemplate`]: Spring's
//! propagation behaviours, isolation, timeouts, read-only transactions, rollback-only marking
//! and transaction synchronization hooks, bound to the current tokio task.
//!
//! Most users depend on `tx-sqlx`, which re-exports everything here and adds the sqlx backends.
//!
//! ```
//! use tx_core::{Propagation, TransactionTemplate, TxError};
//! # use tx_core::testing::NoopManager;
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let manager = NoopManager::default(); // a TxPool in real code
//! let template = TransactionTemplate::new(manager.clone());
//! let n = template
//!     .execute(|status| async move {
//!         assert!(status.is_new_transaction());
//!         tx_core::after_commit(async { println!("committed") })?;
//!         Ok::<_, TxError>(42)
//!     })
//!     .await
//!     .unwrap();
//! assert_eq!(n, 42);
//! # }
//! ```
//!
//! ## Observing transactions
//!
//! **Spans.** Every transactional scope runs in a `tracing` span named `tx` (target `"tx"`,
//! level INFO), entered around its body and its completion. The engine's own lines (target
//! `"tx"`, DEBUG, in Spring's words: "Creating new transaction with name [...]",
//! "Participating in existing transaction [...]", "Completed transaction [...]: rolled back
//! (rollback_only)", ...), the driver's statement logs (sqlx's `sqlx::query` events) and the
//! user's own events inside the body are events of that span, so fifty interleaved requests
//! stay apart. Fields:
//!
//! | field | meaning |
//! |---|---|
//! | `name` | the scope's name (`#[transactional]`: the function's path unless `name = ".."`) |
//! | `propagation` | what the scope asked for: `Required`, `RequiresNew`, `Nested`, `Supports`, `NotSupported`, `Mandatory`, `Never` |
//! | `isolation`, `read_only` | the settings of the transaction it runs in (a participant's and a savepoint's are their owner's) |
//! | `db.system` | the backend: `postgresql`, `mysql` (also MariaDB) or `sqlite` |
//! | `tx_id` | the transaction it runs in, unique in the process: a joined call and a savepoint carry their transaction's; absent without a transaction |
//! | `scope_id` | this scope (equal to `tx_id` in the scope that began the transaction) |
//! | `scope` | `new_transaction`, `participant` (joined), `savepoint` (`Nested` inside a transaction) or `no_transaction` |
//! | `attempt` | which run of a retried call (`retry = n`), from 1: each run is its own span |
//! | `outcome` | recorded at the end: `committed`, `rolled_back` or `unknown` (connection lost during COMMIT); not for a participant, whose owner decides |
//! | `cause` | why it rolled back: `error`, `rollback_only`, `timeout`, `panic`, `cancelled`, `before_commit_failed`, `commit_failed` ([`RollbackCause`]); for a participant, why it marked the transaction rollback-only |
//! | `duration_ms` | from the scope's start to the end of its completion, hooks included |
//!
//! A subscriber that wants the spans and the engine's lines, and sqlx's statements inside
//! them:
//!
//! ```
//! use tracing_subscriber::EnvFilter;
//!
//! tracing_subscriber::fmt()
//!     .with_env_filter(EnvFilter::new("info,tx=debug,sqlx::query=debug"))
//!     .init();
//! ```
//!
//! Without a subscriber interested in target `"tx"` at INFO, no span is created: a joined
//! call then costs one callsite check more than without observability.
//!
//! **Listeners.** [`add_transaction_listener`] registers a [`TransactionListener`] for every
//! transaction and savepoint of the process (Spring 6.1's `TransactionExecutionListener`):
//! `before_begin`, `after_begin`, `before_commit`, `after_commit`, `before_rollback`,
//! `after_rollback` with the [`RollbackCause`], each given a [`TransactionExecution`] (name,
//! definition, id, backend, attempt). One that fails or panics is logged and changes nothing.
//!
//! **Metrics** (feature `metrics`): through the `metrics` facade, for whatever recorder the
//! application installs (e.g. `metrics-exporter-prometheus`): `tx_transactions_total{name,
//! outcome}`, `tx_rollbacks_total{name, cause}`, `tx_timeouts_total{name}`,
//! `tx_retries_total{name}`, and the histograms `tx_transaction_duration_seconds{name}` and
//! `tx_connection_hold_seconds{name}` (from `BEGIN` to the connection's return). Call
//! `describe_metrics()` after installing the recorder for their help texts.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The layers, bottom-up, in groups: a group uses only itself and the groups above it.
//
// Vocabulary: what a call asks for, how it ends, the errors, the backend contract.
mod completion;
mod definition;
mod error;
pub mod manager;
mod retry_cause;

// Where managers are found (the default, by name).
mod registry;

// Hooks as the user writes them; what observers are told; the hook list with its per-phase
// runners, and the one-closure hooks built on it.
mod synchronization;

mod observe;

mod closure_hooks;
mod hook_list;

// The engine's state: a transaction, its scopes and the binding chain; then a scope's status,
// the task-local context, registering hooks there and a backend's handle on the connection.
mod transaction;

mod status;

mod context;

pub mod connection;
mod hook_registration;

// The engine: test transactions redirect scopes just below it; the propagation decision and
// the scope drivers; then the entry points built on it.
#[cfg(feature = "testing")]
mod test_redirect;

mod propagation;

mod retry;

mod events;
mod template;

pub use completion::Completion;
pub use context::{current_status, is_actual_transaction_active, set_rollback_only};
pub use definition::{Isolation, Propagation, TransactionDefinition};
pub use error::{BoxError, Operation, TxError};
#[cfg(feature = "sqlx")]
#[doc(hidden)]
pub use error::{sqlx_is_retryable, sqlx_sqlstate};
pub use events::{EventBus, ListenerHandle, ListenerResult, TransactionPhase};
pub use hook_registration::{
    after_commit, after_completion, after_rollback, register_synchronization,
};
pub use manager::TransactionManager;
#[cfg(feature = "metrics")]
pub use observe::metrics::describe_metrics;
pub use observe::{
    RollbackCause, TransactionExecution, TransactionListener, add_transaction_listener,
};
pub use registry::{register_manager, set_default_manager};
pub use status::TransactionStatus;
pub use synchronization::TransactionSynchronization;
pub use template::{RetryingTemplate, TransactionTemplate};

#[cfg(feature = "macros")]
pub use tx_macros::transactional;

#[cfg(feature = "testing")]
pub mod testing;

/// What `#[transactional]` expands to calls; not a public API.
#[doc(hidden)]
pub mod __private;
