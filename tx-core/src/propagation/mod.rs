//! The propagation engine (Spring's `AbstractPlatformTransactionManager`), written once for
//! every backend: decides per scope whether to join, begin, suspend, savepoint or refuse
//! ([`decide`]), runs the body in the scope that decision asks for (one module per kind of
//! scope), and completes what the scope owns, its hooks in the order of [`commit`].
//!
//! Read bottom-up: [`manager_ref`] and [`outcome`] (what a scope is given and what it
//! reports), [`trace`] (log lines and reports), [`commit`] (the phase order around COMMIT),
//! the scope drivers [`participate`], [`new_transaction`], [`savepoint`], [`without`], and
//! [`decide`], the entry point.

mod commit;
mod decide;
mod manager_ref;
mod new_transaction;
mod outcome;
mod participate;
mod savepoint;
#[cfg(feature = "testing")]
mod test_redirect;
mod trace;
mod without;

pub(crate) use decide::{execute, execute_attempt};
pub use manager_ref::ManagerRef;
pub(crate) use outcome::RunInfo;
