//! Programmatic transactions: a closure run in a scope (Spring's `TransactionTemplate`).

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::definition::{Isolation, Propagation, TransactionDefinition};
use crate::error::TxError;
use crate::manager::{SharedManager, TransactionManager};
use crate::propagation::{self, ManagerRef};
use crate::retry;
use crate::retry_cause::{self, ErrorType};
use crate::status::TransactionStatus;

/// The attribute setters both templates have: each sets one attribute of the definition at
/// `self.$field` (a [`TransactionDefinition`], or a template, which has the same setters).
macro_rules! attribute_setters {
    ($field:ident, timeout: $timeout_doc:literal) => {
        attribute_setters!(@one $field, propagation: Propagation,
            "Sets the propagation behaviour (default `Required`).");
        attribute_setters!(@one $field, isolation: Isolation,
            "Sets the isolation level of a new transaction.");
        attribute_setters!(@one $field, timeout: Duration, $timeout_doc);
        attribute_setters!(@one $field, read_only: bool, "Makes a new transaction read-only.");
        attribute_setters!(@one $field, name: impl Into<Cow<'static, str>>,
            "Names the transaction (for logs and [`TransactionStatus::name`]).");
    };
    (@one $field:ident, $attribute:ident: $ty:ty, $doc:expr) => {
        #[doc = $doc]
        pub fn $attribute(mut self, $attribute: $ty) -> Self {
            self.$field = self.$field.$attribute($attribute);
            self
        }
    };
}

/// Runs closures in transactional scopes, for when an attribute is too coarse: part of a
/// function in a transaction, a loop with one transaction per item, a decision taken at run time.
///
/// [`execute`](TransactionTemplate::execute) calls its closure exactly once (an `FnOnce`, as
/// Spring calls a `TransactionCallback`), so captured values move into the `async move` body
/// with no cloning. [`retry(n)`](TransactionTemplate::retry) turns the template into a
/// [`RetryingTemplate`], whose closure may run again after a serialization failure or deadlock.
///
/// ```
/// use std::time::Duration;
/// use tx_core::{Propagation, TransactionTemplate, TxError};
/// # use tx_core::testing::NoopManager;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let pool = NoopManager::default();
/// let audit = TransactionTemplate::new(pool.clone())
///     .propagation(Propagation::RequiresNew)
///     .timeout(Duration::from_secs(2));
/// let note = String::from("order 7 placed"); // moved into the body, no clone
/// let len = audit
///     .execute(|status| async move {
///         assert!(status.is_new_transaction());
///         Ok::<_, TxError>(note.len())
///     })
///     .await
///     .unwrap();
/// assert_eq!(len, 14);
/// # }
/// ```
#[derive(Clone, Default)]
#[must_use = "a TransactionTemplate does nothing until execute is awaited"]
pub struct TransactionTemplate {
    /// `None`: the default manager, looked up per call.
    manager: Option<SharedManager>,
    definition: TransactionDefinition,
}

impl std::fmt::Debug for TransactionTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionTemplate")
            .field("definition", &self.definition)
            .finish_non_exhaustive()
    }
}

impl TransactionTemplate {
    /// A template on `manager` (a `TxPool`, or any [`TransactionManager`]).
    pub fn new(manager: impl TransactionManager) -> Self {
        TransactionTemplate {
            manager: Some(Arc::new(manager)),
            definition: TransactionDefinition::default(),
        }
    }

    attribute_setters!(definition, timeout: "Sets the deadline of a new transaction, from its start.");

    /// Replaces every attribute with `definition`'s.
    pub fn definition(mut self, definition: TransactionDefinition) -> Self {
        self.definition = definition;
        self
    }

    /// The attributes calls of this template run with.
    pub fn get_definition(&self) -> &TransactionDefinition {
        &self.definition
    }

    /// A template that re-runs the whole closure, up to `retries` more times, when the
    /// transaction it began fails with a retryable error (serialization failure, deadlock),
    /// with jittered exponential backoff. A call that joins an existing transaction is never
    /// retried alone (its owner decides).
    ///
    /// The closure of [`RetryingTemplate::execute`] may run several times, so it is an
    /// `FnMut`: what a run consumes must be cloned inside it.
    pub fn retry(self, retries: u32) -> RetryingTemplate {
        RetryingTemplate {
            template: self,
            retries,
            error_type: None,
        }
    }

    fn manager(&self) -> ManagerRef<'_> {
        match &self.manager {
            Some(m) => ManagerRef::Shared(m),
            None => ManagerRef::Default,
        }
    }

    /// Runs `f` once, in a scope with this template's attributes: `Ok` commits (unless the
    /// scope was marked rollback-only), `Err` rolls back, a panic rolls back and continues.
    ///
    /// `f` gets the scope's [`TransactionStatus`] and is called exactly once, so the body may
    /// move captured values: `template.execute(|_| async move { .. })`. The returned future
    /// is `Send` whenever the body's future is.
    ///
    /// # Errors
    ///
    /// The body's own `Err`, or a [`TxError`] converted into `E`: no manager
    /// ([`TxError::NoManager`]), the propagation refusing to run
    /// ([`TxError::NoTransaction`] for `Mandatory`, [`TxError::ExistingTransaction`] for
    /// `Never`), the deadline ([`TxError::Timeout`]), a participant's rollback-only mark
    /// ([`TxError::UnexpectedRollback`]), a failing `before_commit` hook
    /// ([`TxError::BeforeCommit`]) or the database failing to begin, commit or roll back.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes rolls back the transaction it began (never
    /// commits it) and returns its connection to the pool clean; `after_completion` hooks see
    /// `RolledBack`. A scope that joined an outer transaction leaves the outer one to its
    /// owner. The body, dropped with it, may have run part of its statements.
    pub async fn execute<T, E, F, Fut>(&self, f: F) -> Result<T, E>
    where
        E: From<TxError>,
        F: FnOnce(TransactionStatus) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        propagation::run(self.manager(), &self.definition, |_: &E| true, f, None).await
    }
}

/// A [`TransactionTemplate`] that re-runs its closure after a retryable failure: made by
/// [`TransactionTemplate::retry`].
///
/// A run is retried when the transaction it began failed with a serialization failure or a
/// deadlock ([`TxError::is_retryable`]); a run that joined an existing transaction is never
/// retried alone. When the retries are exhausted the last run's result is returned, so a
/// caller can still tell that the failure was retryable.
///
/// ```
/// use tx_core::{Isolation, TransactionTemplate, TxError};
/// # use tx_core::testing::NoopManager;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let pool = NoopManager::default();
/// let transfer = TransactionTemplate::new(pool.clone())
///     .isolation(Isolation::Serializable)
///     .retry(3);
/// let to = String::from("bob");
/// let done = transfer
///     .execute(|_status| {
///         let to = to.clone(); // the closure may run again: each run takes its own copy
///         async move { Ok::<_, TxError>(format!("paid {to}")) }
///     })
///     .await
///     .unwrap();
/// assert_eq!(done, "paid bob");
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a RetryingTemplate does nothing until execute is awaited"]
pub struct RetryingTemplate {
    template: TransactionTemplate,
    retries: u32,
    /// The closure's own error type, looked into for the failure a run returned.
    error_type: Option<ErrorType>,
}

impl RetryingTemplate {
    attribute_setters!(
        template,
        timeout: "Sets the deadline of each new transaction (each run has its own), from its start."
    );

    /// Replaces every attribute with `definition`'s.
    pub fn definition(mut self, definition: TransactionDefinition) -> Self {
        self.template = self.template.definition(definition);
        self
    }

    /// Changes how many times a failed run is re-run.
    pub fn retry(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Lets the retry decision look into the closure's own error type `E` (an `AppError` with
    /// a `Tx(#[from] TxError)` variant) through its [`source`](std::error::Error::source)
    /// chain, as `#[transactional(retry = n)]` does by itself. Replaces an earlier call.
    ///
    /// Without it the template sees into `TxError`, `sqlx::Error` and boxed errors only; for
    /// another error type it re-runs when a retryable failure of the transaction was not undone
    /// by a `Nested` rollback, so a serialization failure that a `Nested` scope rolled back and
    /// the closure then returned is not retried (see [`execute`](Self::execute)).
    ///
    /// ```
    /// use tx_core::{TransactionTemplate, TxError};
    /// # use tx_core::testing::NoopManager;
    /// #[derive(Debug, thiserror::Error)]
    /// enum AppError {
    ///     #[error("out of stock")]
    ///     OutOfStock,
    ///     #[error(transparent)]
    ///     Tx(#[from] TxError),
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let pool = NoopManager::default();
    /// let place = TransactionTemplate::new(pool).retry(3).error_type::<AppError>();
    /// let r = place
    ///     .execute(|_| async { Err::<(), _>(AppError::OutOfStock) })
    ///     .await;
    /// assert!(matches!(r, Err(AppError::OutOfStock)));
    /// # }
    /// ```
    pub fn error_type<E: std::error::Error + 'static>(mut self) -> Self {
        self.error_type = Some(ErrorType::of::<E>());
        self
    }

    /// How many times a failed run is re-run at most.
    #[must_use]
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The attributes calls of this template run with.
    pub fn get_definition(&self) -> &TransactionDefinition {
        &self.template.definition
    }

    /// Runs `f` in a scope with this template's attributes, as
    /// [`TransactionTemplate::execute`] does, and calls it again (in a new transaction) after
    /// a run whose transaction failed with a retryable error, up to `retries` more times.
    ///
    /// A run is re-run when the transaction it began rolled back and its error is, or
    /// carries, a retryable failure of that transaction: a statement, `BEGIN` or `COMMIT` of
    /// it, also a statement of a `Nested` scope that rolled back to its savepoint and whose
    /// error the closure passed on. Not re-run: a run that committed (or whose outcome is
    /// unknown), that joined an existing transaction, or that returned another error (a
    /// timeout, an unexpected rollback, its own), also after a `Nested` scope handled a
    /// retryable failure; nor a retryable failure of a transaction of its own inside
    /// (`RequiresNew`, which retries on its own) or of autocommit work. Which errors can be
    /// seen into: `TxError`, `sqlx::Error`, boxed errors, and the type named by
    /// [`error_type`](Self::error_type); for other error types the run is re-run when a
    /// retryable failure of its transaction was not undone by a `Nested` rollback.
    ///
    /// `f` is called once per run, so it is `FnMut`. The returned future is `Send` whenever
    /// the body's future is.
    ///
    /// # Errors
    ///
    /// Those of [`TransactionTemplate::execute`]. When every run failed with a retryable
    /// error, the last run's error is returned (its [`TxError::is_retryable`] is still true).
    ///
    /// # Cancel safety
    ///
    /// As for [`TransactionTemplate::execute`]: dropping the future rolls back the run in
    /// progress; no further run starts. Dropped during the backoff between two runs, it has
    /// nothing left to roll back.
    pub async fn execute<T, E, F, Fut>(&self, mut f: F) -> Result<T, E>
    where
        E: From<TxError> + 'static,
        F: FnMut(TransactionStatus) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let template = &self.template;
        let error_type = self.error_type.as_ref();
        retry::run(
            template.manager(),
            &template.definition,
            self.retries,
            |_: &E| true,
            |e: &E| retry_cause::of_any(e, error_type),
            &mut f,
        )
        .await
    }
}
