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
//! # use tx_core::manager::*; use std::sync::Arc;
//! # #[derive(Clone, Default)] struct Noop(Arc<()>);
//! # struct NoopTx;
//! # impl PhysicalTransaction for NoopTx {
//! #     fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>> { Box::pin(async { Ok(()) }) }
//! #     fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>> { Box::pin(async { Ok(()) }) }
//! #     fn as_any_mut(&mut self) -> &mut dyn std::any::Any { self }
//! # }
//! # impl TransactionManager for Noop {
//! #     fn key(&self) -> ManagerKey { ManagerKey::of(&self.0) }
//! #     fn begin(&self, _: BeginOptions) -> BoxFuture<'static, Result<Box<dyn PhysicalTransaction>, TxError>> {
//! #         Box::pin(async { Ok(Box::new(NoopTx) as Box<dyn PhysicalTransaction>) })
//! #     }
//! # }
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let manager = Noop::default(); // a TxPool in real code
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
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod completion;
pub mod connection;
mod context;
mod definition;
mod error;
mod events;
pub mod manager;
mod propagation;
mod registry;
mod retry;
mod status;
mod synchronization;
mod template;
#[cfg(feature = "testing")]
mod test_scope;
mod transaction;

pub use completion::Completion;
pub use context::{current_status, is_actual_transaction_active, set_rollback_only};
pub use definition::{Isolation, Propagation, TransactionDefinition};
pub use error::{BoxError, Operation, TxError};
#[cfg(feature = "sqlx")]
#[doc(hidden)]
pub use error::{sqlx_is_retryable, sqlx_sqlstate};
pub use events::{EventBus, ListenerHandle, ListenerResult, TransactionPhase};
pub use manager::TransactionManager;
pub use registry::{register_manager, set_default_manager};
pub use status::TransactionStatus;
pub use synchronization::{
    TransactionSynchronization, after_commit, after_completion, after_rollback,
    register_synchronization,
};
pub use template::{RetryingTemplate, TransactionTemplate};

#[cfg(feature = "macros")]
pub use tx_macros::transactional;

/// Test transactions that leave nothing behind (feature `testing`; `tx-sqlx`'s feature
/// `testing` turns it on and re-exports it as `tx_sqlx::testing`).
///
/// [`rollback`](testing::rollback) runs a test body in a transaction that is always rolled
/// back. The code under test runs inside it unchanged: its transactional scopes on that
/// manager take savepoints of the test transaction where they would begin (or suspend) a
/// transaction, so a row written by a `RequiresNew` scope is visible to the test and gone after
/// it, and `after_commit` hooks run when the scope that owns them would have committed.
///
/// On MySQL/MariaDB keep DDL out of the body (it commits implicitly). On SQLite the test
/// transaction holds the database's write lock: tests that run in parallel need a database
/// each.
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::test_scope::rollback;
}

/// What `#[transactional]` expands to calls; not a public API.
#[doc(hidden)]
pub mod __private;
