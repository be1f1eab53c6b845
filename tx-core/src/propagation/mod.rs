//! The propagation engine (Spring's `AbstractPlatformTransactionManager`), written once for
//! every backend: decides per scope whether to join, begin, suspend, savepoint or refuse
//! ([`decide`]), runs the body in the scope that decision entered ([`execute`], the only code
//! generic over the body), and completes what the scope owns, its hooks in the order of
//! [`commit`].
//!
//! Read bottom-up: [`manager_ref`] and [`outcome`] (what a scope is given and what it
//! reports), [`trace`] (log lines and reports), [`commit`] (the phase order around COMMIT),
//! the scopes [`participate`], [`new_transaction`], [`savepoint`], [`without`], then
//! [`decide`] and [`execute`], the entry point.

mod commit;
mod decide;
mod execute;
mod manager_ref;
mod new_transaction;
mod outcome;
mod owned;
mod participate;
mod savepoint;
#[cfg(feature = "testing")]
mod test_redirect;
mod trace;
mod without;

pub(crate) use execute::run;
pub use manager_ref::ManagerRef;
pub(crate) use outcome::RunInfo;
