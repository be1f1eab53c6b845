//! Test support (feature `testing`; `tx-sqlx`'s feature `testing` turns it on and re-exports
//! it as `tx_sqlx::testing`).
//!
//! [`rollback`] runs a test body in a transaction that is always rolled back. The code under
//! test runs inside it unchanged: its transactional scopes on that manager take savepoints of
//! the test transaction where they would begin (or suspend) a transaction, so a row written by a
//! `RequiresNew` scope is visible to the test and gone after it, and `after_commit` hooks run
//! when the scope that owns them would have committed.
//!
//! On MySQL/MariaDB keep DDL out of the body (it commits implicitly). On SQLite the test
//! transaction holds the database's write lock: tests that run in parallel need a database
//! each.
//!
//! For tests of the engine itself, without a database: [`NoopManager`] (transactions that do
//! nothing) and [`RecordingManager`] (logs every operation the engine sends). [`Log`] is an
//! ordered log for the test's own hooks and listeners to write what ran into.
//!
//! For tests of what the engine reports: [`EachCallback`] (a listener made of one function),
//! [`SpanCapture`] (a tracing layer that keeps every span and event) and
//! [`drop_outside_runtime`] (a call dropped where no runtime is).

mod listener;
mod log;
mod noop;
mod recording;
mod rollback;
mod runtime;
mod spans;

pub use listener::EachCallback;
pub use log::{Log, OperationLog};
pub use noop::NoopManager;
pub use recording::RecordingManager;
pub use rollback::rollback;
pub use runtime::{Started, drop_outside_runtime};
pub use spans::{CapturedEvent, CapturedSpan, SpanCapture};
