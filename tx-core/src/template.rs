//! Programmatic transactions: a closure run in a scope (Spring's `TransactionTemplate`).

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::definition::{Isolation, Propagation, TransactionDefinition};
use crate::error::TxError;
use crate::manager::{SharedManager, TransactionManager};
use crate::propagation::{self, ManagerRef};
use crate::retry::Retry;
use crate::status::TransactionStatus;

/// Runs closures in transactional scopes, for when an attribute is too coarse: part of a
/// function in a transaction, a loop with one transaction per item, a decision taken at run time.
///
/// ```
/// use std::time::Duration;
/// use tx_core::{Propagation, TransactionTemplate, TxError};
/// # use tx_core::manager::*; use std::sync::Arc;
/// # #[derive(Clone, Default)] struct Noop(Arc<()>);
/// # struct NoopTx;
/// # impl PhysicalTransaction for NoopTx {
/// #     fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>> { Box::pin(async { Ok(()) }) }
/// #     fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>> { Box::pin(async { Ok(()) }) }
/// #     fn as_any_mut(&mut self) -> &mut dyn std::any::Any { self }
/// # }
/// # impl TransactionManager for Noop {
/// #     fn key(&self) -> ManagerKey { ManagerKey::of(&self.0) }
/// #     fn begin(&self, _: BeginOptions) -> BoxFuture<'static, Result<Box<dyn PhysicalTransaction>, TxError>> {
/// #         Box::pin(async { Ok(Box::new(NoopTx) as Box<dyn PhysicalTransaction>) })
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let pool = Noop::default();
/// let audit = TransactionTemplate::new(pool.clone())
///     .propagation(Propagation::RequiresNew)
///     .timeout(Duration::from_secs(2))
///     .retry(3);
/// let id = audit
///     .execute(|status| async move {
///         assert!(status.is_new_transaction());
///         Ok::<_, TxError>(7)
///     })
///     .await
///     .unwrap();
/// assert_eq!(id, 7);
/// # }
/// ```
#[derive(Clone, Default)]
#[must_use = "a TransactionTemplate does nothing until execute is awaited"]
pub struct TransactionTemplate {
    /// `None`: the default manager, looked up per call.
    manager: Option<SharedManager>,
    definition: TransactionDefinition,
    retries: u32,
}

impl std::fmt::Debug for TransactionTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionTemplate")
            .field("definition", &self.definition)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

impl TransactionTemplate {
    /// A template on `manager` (a `TxPool`, or any [`TransactionManager`]).
    pub fn new(manager: impl TransactionManager) -> Self {
        TransactionTemplate {
            manager: Some(Arc::new(manager)),
            ..TransactionTemplate::default()
        }
    }

    /// Sets the propagation behaviour (default `Required`).
    pub fn propagation(mut self, propagation: Propagation) -> Self {
        self.definition = self.definition.propagation(propagation);
        self
    }

    /// Sets the isolation level of a new transaction.
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.definition = self.definition.isolation(isolation);
        self
    }

    /// Sets the deadline of a new transaction, from its start.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.definition = self.definition.timeout(timeout);
        self
    }

    /// Makes a new transaction read-only.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.definition = self.definition.read_only(read_only);
        self
    }

    /// Names the transaction (for logs and [`TransactionStatus::name`]).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.definition = self.definition.name(name);
        self
    }

    /// Replaces every attribute with `definition`'s.
    pub fn definition(mut self, definition: TransactionDefinition) -> Self {
        self.definition = definition;
        self
    }

    /// Re-runs the whole closure, up to `retries` more times, when the transaction it began
    /// fails with a retryable error (serialization failure, deadlock), with jittered
    /// exponential backoff. Ignored when the call joins an existing transaction.
    pub fn retry(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Runs `f` in a scope with this template's attributes: `Ok` commits (unless the scope
    /// was marked rollback-only), `Err` rolls back, a panic rolls back and continues.
    ///
    /// `f` is called again for each retry, so it is `FnMut`.
    pub async fn execute<T, E, F, Fut>(&self, mut f: F) -> Result<T, E>
    where
        E: From<TxError>,
        F: FnMut(TransactionStatus) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let manager = match &self.manager {
            Some(m) => ManagerRef::Shared(m),
            None => ManagerRef::Default,
        };
        let mut retry = Retry::new(self.retries, self.definition.get_name());
        loop {
            let (result, info) =
                propagation::execute(manager, &self.definition, |_: &E| true, &mut f).await;
            if !retry.again(&result, info).await {
                return result;
            }
        }
    }
}
