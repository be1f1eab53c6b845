//! A manager whose transactions do nothing: the engine's own behaviour, without a database.

use std::sync::Arc;

use crate::error::TxError;
use crate::manager::{
    BeginOptions, BoxFuture, ManagerKey, PhysicalTransaction, TransactionManager,
};

/// A [`TransactionManager`] for a resource without real transactions: `BEGIN`, `COMMIT`,
/// `ROLLBACK` and savepoints all succeed and send nothing.
///
/// For tests, doc examples and benchmarks of code that only needs the engine (propagation,
/// hooks, events, status). Clones share one identity (they are the same "resource");
/// separately created managers are different resources.
///
/// ```
/// use tx_core::testing::NoopManager;
/// use tx_core::{TransactionTemplate, TxError};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let template = TransactionTemplate::new(NoopManager::new());
/// let r = template
///     .execute(|status| async move { Ok::<_, TxError>(status.is_new_transaction()) })
///     .await;
/// assert!(r.unwrap());
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct NoopManager(Arc<()>);

impl NoopManager {
    /// A manager of its own resource.
    #[must_use]
    pub fn new() -> NoopManager {
        NoopManager::default()
    }
}

/// The physical transaction of a [`NoopManager`].
struct NoopTx;

impl PhysicalTransaction for NoopTx {
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>> {
        Box::pin(async { Ok(()) })
    }
    fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>> {
        Box::pin(async { Ok(()) })
    }
    fn create_savepoint<'a>(&'a mut self, _: &'a str) -> BoxFuture<'a, Result<(), TxError>> {
        Box::pin(async { Ok(()) })
    }
    fn rollback_to_savepoint<'a>(&'a mut self, _: &'a str) -> BoxFuture<'a, Result<(), TxError>> {
        Box::pin(async { Ok(()) })
    }
    fn release_savepoint<'a>(&'a mut self, _: &'a str) -> BoxFuture<'a, Result<(), TxError>> {
        Box::pin(async { Ok(()) })
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl TransactionManager for NoopManager {
    fn key(&self) -> ManagerKey {
        ManagerKey::of(&self.0)
    }
    fn begin(
        &self,
        _: BeginOptions,
    ) -> BoxFuture<'static, Result<Box<dyn PhysicalTransaction>, TxError>> {
        Box::pin(async { Ok(Box::new(NoopTx) as Box<dyn PhysicalTransaction>) })
    }
}
