//! Support for the reliability tests: backends seen through one small trait so that every
//! fault scenario is written once and run on PostgreSQL and MariaDB, a poll driver that cuts a
//! future after exactly `k` polls, probes of server-side session state, and the scenarios
//! themselves (cancellation sweep, panics, server faults, commit outcome unknown, pool
//! exhaustion, the bank).
//!
//! Every check reads the database from a fresh connection outside the pool under test. The
//! modules go bottom-up: errors and the backend traits, the three databases, the poll driver
//! and hooks, then one module per scenario.

mod backend;
mod bank;
mod cancellation;
mod commit_unknown;
mod errors;
mod hooks;
mod mariadb;
mod panics;
mod poll;
mod pool_exhaustion;
mod postgres;
mod server_faults;
mod sqlite;

pub use backend::{
    Backend, Books, BoxFut, Entry, Server, eventually, no_open_transactions, settle,
};
pub use bank::{Bank, BankConfig, BankReport, Fault, Transfer, TransferEnd, bank};
pub use cancellation::{SweepReport, cancellation_sweep};
pub use commit_unknown::commit_outcome_unknown;
pub use errors::{AppError, INJECTED_PANIC, error_chain, has_sqlx_source, quiet_injected_panics};
pub use hooks::{Completions, check_failed_completion, record_completion};
pub use mariadb::MySqlBackend;
pub use panics::{
    Ended, Level, PanicAt, PanicOutcome, panic_case, panic_expectation, panic_matrix,
};
pub use poll::poll_at_most;
pub use pool_exhaustion::requires_new_pool_exhausted;
pub use postgres::PgBackend;
pub use server_faults::{KillWhen, kill_mid_transaction};
pub use sqlite::SqliteBackend;
