//! What `#[transactional]` expands to: thin entry points into the engine. Not a public API;
//! anything here may change without notice.

use std::future::Future;

pub use crate::definition::TransactionDefinition;
pub use crate::propagation::ManagerRef;
pub use crate::retry_cause::{Probe, Verdict, ViaEngineError, ViaNothing, ViaSource, opaque};
pub use crate::{Isolation, Propagation, TxError};
pub use std::time::Duration;

use crate::manager::ShareManager;
use crate::propagation;
use crate::retry;

/// `manager = EXPR`.
pub fn by_expr<M: ShareManager>(m: &M) -> ManagerRef<'_> {
    ManagerRef::Borrowed(m)
}

/// Runs the future `make_body()` returns in the scope `def` describes; `rollback_on(&err)`
/// decides whether an `Err` rolls back.
///
/// Takes a closure rather than the body future so that the body future exists once, inside
/// the innermost engine future: every layer that held it by value would add a copy, and
/// nested `#[transactional]` calls would multiply those copies level by level.
pub fn transactional<'a, T: 'a, E, Fut>(
    manager: ManagerRef<'a>,
    def: &'static TransactionDefinition,
    rollback_on: fn(&E) -> bool,
    make_body: impl FnOnce() -> Fut + 'a,
) -> impl Future<Output = Result<T, E>> + 'a
where
    E: TransactionalError + 'a,
    Fut: Future<Output = Result<T, E>> + 'a,
{
    propagation::run(manager, def, rollback_on, move |_| make_body(), None)
}

/// Like [`transactional`], re-running the whole call (a new body from `make_body`) up to
/// `retries` times when the transaction it began rolls back because of a retryable failure;
/// `classify(&err)` says whether an error is, or carries, one (the macro builds it where the
/// error type is known: `(&&&Probe(err)).__tx_verdict()`, with the `Via*` traits in scope).
///
/// The future is `Send` whenever the body's is: no reference to the result is held across the
/// backoff, so `T` and `E` need not be `Sync`.
pub fn transactional_retry<'a, T: 'a, E, Fut>(
    manager: ManagerRef<'a>,
    def: &'static TransactionDefinition,
    retries: u32,
    rollback_on: fn(&E) -> bool,
    classify: fn(&E) -> Verdict,
    mut make_body: impl FnMut() -> Fut + 'a,
) -> impl Future<Output = Result<T, E>> + 'a
where
    E: TransactionalError + 'a,
    Fut: Future<Output = Result<T, E>> + 'a,
{
    retry::run(manager, def, retries, rollback_on, classify, move |_| {
        make_body()
    })
}

/// The error type of a `#[transactional]` function must take in the engine's errors.
#[diagnostic::on_unimplemented(
    message = "the error type `{Self}` of a #[transactional] function must implement `From<TxError>`",
    label = "this error type cannot carry a TxError (timeout, unexpected rollback, ...)",
    note = "add a variant such as `Tx(#[from] tx_sqlx::TxError)` (thiserror) or implement `From<TxError> for {Self}`"
)]
pub trait TransactionalError: From<TxError> {}

impl<E: From<TxError>> TransactionalError for E {}

mod default_name;
pub use default_name::LazyDefinition;

/// `retry` runs a fresh body per attempt: each by-value parameter the body uses is cloned for
/// it, through this trait, so that a type that is not `Clone` is reported once, at its type,
/// saying why.
#[diagnostic::on_unimplemented(
    message = "`retry` runs the body once per attempt, so a parameter of type `{Self}` taken by value must be `Clone`",
    label = "cloned for each attempt of `retry`",
    note = "derive or implement `Clone` for it, take it by reference, or drop `retry`"
)]
pub trait RetryClone: Clone {}

impl<T: Clone> RetryClone for T {}

/// The copy of a by-value parameter for one attempt of `retry`.
pub fn retry_clone<T: RetryClone>(value: &T) -> T {
    value.clone()
}

/// The return type of a `#[transactional]` function written as an alias (`AppResult<T>`,
/// `io::Result<T>`): the expansion names its parts through this trait, so that a type that is
/// no `Result` at all is one error, at the type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a `Result`: #[transactional] needs a function returning `Result<T, E>` with `E: From<TxError>`",
    label = "not a `Result`",
    note = "an `Err` is what rolls the transaction back; return a `Result` (or an alias of one), or drop #[transactional]"
)]
pub trait TxResult: Sized {
    /// `T` of `Result<T, E>`.
    type Ok;
    /// `E` of `Result<T, E>`.
    type Error;
    /// The call's `Result` as the declared type.
    fn from_result(r: Result<Self::Ok, Self::Error>) -> Self;
}

impl<T, E> TxResult for Result<T, E> {
    type Ok = T;
    type Error = E;
    fn from_result(r: Self) -> Self {
        r
    }
}

/// `manager = EXPR`: `let pick = Pick(&EXPR); (&pick).__tx_manager_ref()`. Method resolution
/// tries, in order, the expression's type as the manager (`PickManager`), then what it derefs
/// to (`PickDeref`: `db: &'a PgTxPool`, `Box<PgTxPool>`), then `PickAny`, whose bound is checked
/// only once it is chosen, so a value that is no manager is reported as "`T` is not a
/// transaction manager" at the expression.
pub mod pick {
    use std::ops::Deref;

    use super::ManagerRef;
    use crate::manager::ShareManager;

    /// A borrowed `manager = EXPR`.
    pub struct Pick<'a, T: ?Sized>(pub &'a T);

    impl<T: ?Sized> Clone for Pick<'_, T> {
        fn clone(&self) -> Self {
            *self
        }
    }

    impl<T: ?Sized> Copy for Pick<'_, T> {}

    /// The expression is the manager (tried first: receiver `&Pick<M>`).
    pub trait PickManager<'a> {
        /// The manager, borrowed for the call.
        fn __tx_manager_ref(&self) -> ManagerRef<'a>;
    }

    impl<'a, M: ShareManager> PickManager<'a> for Pick<'a, M> {
        fn __tx_manager_ref(&self) -> ManagerRef<'a> {
            ManagerRef::Borrowed(self.0)
        }
    }

    /// The expression derefs to the manager (tried second: receiver `&&Pick<D>`).
    pub trait PickDeref<'a> {
        /// The manager, borrowed for the call.
        fn __tx_manager_ref(&self) -> ManagerRef<'a>;
    }

    impl<'a, D> PickDeref<'a> for &Pick<'a, D>
    where
        D: Deref,
        D::Target: ShareManager + Sized,
    {
        fn __tx_manager_ref(&self) -> ManagerRef<'a> {
            ManagerRef::Borrowed(Deref::deref(self.0))
        }
    }

    /// Anything else (tried last: receiver `Pick<T>`): the bound fails at the call.
    pub trait PickAny<'a, T: ?Sized> {
        /// The manager, borrowed for the call.
        fn __tx_manager_ref(self) -> ManagerRef<'a>
        where
            T: ShareManager + Sized;
    }

    impl<'a, T: ?Sized> PickAny<'a, T> for Pick<'a, T> {
        fn __tx_manager_ref(self) -> ManagerRef<'a>
        where
            T: ShareManager + Sized,
        {
            ManagerRef::Borrowed(self.0)
        }
    }
}
