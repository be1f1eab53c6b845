//! A transaction listener made of one function, for tests that record its callbacks.

use crate::error::{BoxError, TxError};
use crate::observe::{RollbackCause, TransactionExecution, TransactionListener};

/// A [`TransactionListener`] that hands every callback to one function: the transaction, the
/// callback's name (`"before_begin"`, `"after_commit"`, ...) and what the callback was told
/// besides, as text: empty, ` failed: {error}` (`after_begin` and `after_commit` with a
/// failure), or ` {cause}` (`after_rollback`).
///
/// Listeners are process-wide: a test binary whose tests run in parallel keeps to the
/// transactions of each test, for instance by their names.
///
/// ```
/// use std::sync::LazyLock;
/// use tx_core::testing::{EachCallback, Log, NoopManager};
/// use tx_core::{TransactionTemplate, TxError};
///
/// static CALLBACKS: LazyLock<Log> = LazyLock::new(Log::default);
/// tx_core::add_transaction_listener(EachCallback::new(|tx, callback, told| {
///     if tx.name().starts_with("doc::") {
///         CALLBACKS.push(format!("{callback} {}{told}", tx.name()));
///     }
///     Ok(())
/// }));
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let r: Result<(), TxError> = TransactionTemplate::new(NoopManager::new())
///     .name("doc::refund")
///     .execute(|_| async { Err(TxError::NoTransaction) })
///     .await;
/// assert!(r.is_err());
/// assert_eq!(
///     CALLBACKS.take(),
///     [
///         "before_begin doc::refund",
///         "after_begin doc::refund",
///         "before_rollback doc::refund",
///         "after_rollback doc::refund error",
///     ]
/// );
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct EachCallback<F>(F);

impl<F> EachCallback<F>
where
    F: Fn(&TransactionExecution<'_>, &str, String) -> Result<(), BoxError> + Send + Sync + 'static,
{
    /// A listener that calls `f` with every callback.
    pub fn new(f: F) -> EachCallback<F> {
        EachCallback(f)
    }
}

/// Implements every callback as a call of the function with what the callback was told.
macro_rules! each_callback {
    ($($callback:ident($($arg:ident: $ty:ty)?) => $told:expr;)*) => {
        impl<F> TransactionListener for EachCallback<F>
        where
            F: Fn(&TransactionExecution<'_>, &str, String) -> Result<(), BoxError>
                + Send
                + Sync
                + 'static,
        {
            $(fn $callback(&self, tx: &TransactionExecution<'_> $(, $arg: $ty)?) -> Result<(), BoxError> {
                (self.0)(tx, stringify!($callback), $told)
            })*
        }
    };
}

each_callback! {
    before_begin() => String::new();
    after_begin(failure: Option<&TxError>) => failed(failure);
    before_commit() => String::new();
    after_commit(failure: Option<&TxError>) => failed(failure);
    before_rollback() => String::new();
    after_rollback(cause: RollbackCause) => format!(" {cause}");
}

fn failed(failure: Option<&TxError>) -> String {
    failure.map_or_else(String::new, |e| format!(" failed: {e}"))
}
