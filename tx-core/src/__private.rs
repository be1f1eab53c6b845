//! What `#[transactional]` expands to: thin entry points into the engine. Not a public API;
//! anything here may change without notice.

use std::future::Future;

use futures_util::FutureExt;

pub use crate::definition::TransactionDefinition;
pub use crate::propagation::ManagerRef;
pub use crate::{Isolation, Propagation, TxError};
pub use std::sync::OnceLock;
pub use std::time::Duration;

mod default_name;
pub use default_name::default_name;

use crate::manager::ShareManager;
use crate::propagation;
use crate::retry::Retry;

/// A manager given by reference.
pub fn by_expr<M: ShareManager>(m: &M) -> ManagerRef<'_> {
    ManagerRef::Borrowed(m)
}

/// `manager = EXPR`, called as a method (`(&expr).__tx_manager_ref()`) so that auto-deref
/// finds the manager behind a reference, `Box` or other smart pointer (`db: &'a PgTxPool`).
pub trait ManagerExpr {
    /// The manager, borrowed for the call.
    fn __tx_manager_ref(&self) -> ManagerRef<'_>;
}

impl<M: ShareManager> ManagerExpr for M {
    fn __tx_manager_ref(&self) -> ManagerRef<'_> {
        ManagerRef::Borrowed(self)
    }
}

/// Runs the future `make_body()` returns in the scope `def` describes; `rollback_on(&err)`
/// decides whether an `Err` rolls back.
///
/// Takes a closure rather than the body future so that the body future exists once, inside
/// the innermost engine future: every layer that held it by value would add a copy, and
/// nested `#[transactional]` calls would multiply those copies level by level.
pub fn transactional<'a, T, E, F, Fut>(
    manager: ManagerRef<'a>,
    def: &'static TransactionDefinition,
    rollback_on: fn(&E) -> bool,
    make_body: F,
) -> impl Future<Output = Result<T, E>> + 'a
where
    E: TransactionalError + 'a,
    T: 'a,
    F: FnOnce() -> Fut + 'a,
    Fut: Future<Output = Result<T, E>> + 'a,
{
    propagation::execute(manager, def, rollback_on, move |_| make_body()).map(|(r, _)| r)
}

/// Like [`transactional`], re-running the whole call (a new body from `make_body`) up to
/// `retries` times when the transaction it began fails with a retryable error.
pub async fn transactional_retry<T, E, F, Fut>(
    manager: ManagerRef<'_>,
    def: &'static TransactionDefinition,
    retries: u32,
    rollback_on: fn(&E) -> bool,
    mut make_body: F,
) -> Result<T, E>
where
    E: TransactionalError,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut retry = Retry::new(retries, def.get_name());
    loop {
        let (result, info) = propagation::execute(manager, def, rollback_on, |_| make_body()).await;
        if !retry.again(&result, info).await {
            return result;
        }
    }
}

/// The error type of a `#[transactional]` function must take in the engine's errors.
#[diagnostic::on_unimplemented(
    message = "the error type `{Self}` of a #[transactional] function must implement `From<TxError>`",
    label = "this error type cannot carry a TxError (timeout, unexpected rollback, ...)",
    note = "add a variant such as `Tx(#[from] tx_sqlx::TxError)` (thiserror) or implement `From<TxError> for {Self}`"
)]
pub trait TransactionalError: From<TxError> {}

impl<E: From<TxError>> TransactionalError for E {}
