//! Whether the error a retried call returned is, or carries, a retryable failure.
//!
//! The retry decision looks at the returned error: a serialization failure that a `Nested`
//! scope rolled back to its savepoint and that the caller then returned is retried (the
//! call's transaction rolled back because of it), while a different error returned after such
//! a handled failure is not. The first [`TxError`] (or `sqlx::Error`) found in the error and
//! its [`source`](Error::source) chain decides, as its `is_retryable()` says.

use std::any::{Any, TypeId};
use std::error::Error;

use crate::error::TxError;

/// What a returned error says about retrying.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The first engine or driver error found in it is retryable.
    Retryable,
    /// The first engine or driver error found in it is not retryable.
    NotRetryable,
    /// Nothing found: the error's type cannot be looked into, or its chain holds neither a
    /// `TxError` nor a `sqlx::Error`. The transaction's own record decides.
    Opaque,
}

impl Verdict {
    fn of(retryable: bool) -> Verdict {
        if retryable {
            Verdict::Retryable
        } else {
            Verdict::NotRetryable
        }
    }
}

/// The verdict of the first `TxError` or `sqlx::Error` in the chain that starts at `next`.
pub(crate) fn chain(mut next: Option<&(dyn Error + 'static)>) -> Verdict {
    while let Some(err) = next {
        if let Some(tx) = err.downcast_ref::<TxError>() {
            return Verdict::of(tx.is_retryable());
        }
        #[cfg(feature = "sqlx")]
        if let Some(e) = err.downcast_ref::<sqlx_core::Error>() {
            return sqlx_verdict(e);
        }
        next = err.source();
    }
    Verdict::Opaque
}

#[cfg(feature = "sqlx")]
fn sqlx_verdict(e: &sqlx_core::Error) -> Verdict {
    // An engine error passed through sqlx's error type by a transaction-aware executor.
    if let sqlx_core::Error::Io(io) = e
        && let Some(tx) = io.get_ref().and_then(|i| i.downcast_ref::<TxError>())
    {
        return Verdict::of(tx.is_retryable());
    }
    Verdict::of(crate::error::sqlx_is_retryable(e))
}

/// The verdict for an error of a type known only as `'static` (a template's closure): an
/// engine or driver error itself, a boxed error, or the type `look_into` names.
pub(crate) fn of_any<E: 'static>(err: &E, look_into: Option<&ErrorType>) -> Verdict {
    let any = err as &dyn Any;
    if let Some(tx) = any.downcast_ref::<TxError>() {
        return Verdict::of(tx.is_retryable());
    }
    #[cfg(feature = "sqlx")]
    if let Some(e) = any.downcast_ref::<sqlx_core::Error>() {
        return sqlx_verdict(e);
    }
    if let Some(b) = any.downcast_ref::<Box<dyn Error + Send + Sync>>() {
        return chain(Some(&**b));
    }
    if let Some(b) = any.downcast_ref::<Box<dyn Error + Send>>() {
        return chain(Some(&**b));
    }
    if let Some(b) = any.downcast_ref::<Box<dyn Error>>() {
        return chain(Some(&**b));
    }
    match look_into {
        Some(t) if t.id == TypeId::of::<E>() => (t.verdict)(any),
        _ => Verdict::Opaque,
    }
}

/// An error type whose [`source`](Error::source) chain a template may look into.
#[derive(Clone, Copy)]
pub(crate) struct ErrorType {
    id: TypeId,
    pub(crate) name: &'static str,
    verdict: fn(&dyn Any) -> Verdict,
}

impl ErrorType {
    pub(crate) fn of<E: Error + 'static>() -> ErrorType {
        fn verdict<E: Error + 'static>(err: &dyn Any) -> Verdict {
            err.downcast_ref::<E>()
                .map_or(Verdict::Opaque, |e| chain(Some(e)))
        }
        ErrorType {
            id: TypeId::of::<E>(),
            name: std::any::type_name::<E>(),
            verdict: verdict::<E>,
        }
    }
}

impl std::fmt::Debug for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

// ---------------------------------------------------------------------------------------------
// The classifier `#[transactional(retry = n)]` builds where the error type is known (autoref
// specialisation: the first of these traits whose impl applies to the probe is used).

/// An error to classify, by reference.
#[doc(hidden)]
pub struct Probe<'a, E: ?Sized>(pub &'a E);

/// The engine's and the driver's errors, and boxed errors.
#[doc(hidden)]
pub trait ViaEngineError {
    fn __tx_verdict(&self) -> Verdict;
}

impl ViaEngineError for &&Probe<'_, TxError> {
    fn __tx_verdict(&self) -> Verdict {
        Verdict::of(self.0.is_retryable())
    }
}

#[cfg(feature = "sqlx")]
impl ViaEngineError for &&Probe<'_, sqlx_core::Error> {
    fn __tx_verdict(&self) -> Verdict {
        sqlx_verdict(self.0)
    }
}

impl ViaEngineError for &&Probe<'_, Box<dyn Error + Send + Sync>> {
    fn __tx_verdict(&self) -> Verdict {
        chain(Some(&**self.0))
    }
}

impl ViaEngineError for &&Probe<'_, Box<dyn Error + Send>> {
    fn __tx_verdict(&self) -> Verdict {
        chain(Some(&**self.0))
    }
}

impl ViaEngineError for &&Probe<'_, Box<dyn Error>> {
    fn __tx_verdict(&self) -> Verdict {
        chain(Some(&**self.0))
    }
}

/// Any other [`Error`]: its source chain.
#[doc(hidden)]
pub trait ViaSource {
    fn __tx_verdict(&self) -> Verdict;
}

impl<E: Error + ?Sized> ViaSource for &Probe<'_, E> {
    fn __tx_verdict(&self) -> Verdict {
        chain(self.0.source())
    }
}

/// A type that cannot be looked into.
#[doc(hidden)]
pub trait ViaNothing {
    fn __tx_verdict(&self) -> Verdict;
}

impl<E: ?Sized> ViaNothing for Probe<'_, E> {
    fn __tx_verdict(&self) -> Verdict {
        Verdict::Opaque
    }
}

/// The classifier of an error type that cannot be named (`impl Trait`).
#[doc(hidden)]
pub fn opaque<E>(_: &E) -> Verdict {
    Verdict::Opaque
}

#[cfg(test)]
#[allow(clippy::needless_borrow)] // the probe is written as the macro writes it
mod tests {
    use super::*;
    use crate::error::Operation;

    fn retryable() -> TxError {
        TxError::database(Operation::Statement, true, "could not serialize access")
    }

    #[derive(Debug)]
    enum Wrapped {
        Tx(TxError),
        Own,
    }

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            match self {
                Wrapped::Tx(e) => Some(e),
                Wrapped::Own => None,
            }
        }
    }

    #[derive(Debug)]
    struct NoError;

    #[test]
    fn the_first_engine_error_in_the_chain_decides() {
        assert_eq!((&&&Probe(&retryable())).__tx_verdict(), Verdict::Retryable);
        assert_eq!(
            (&&&Probe(&TxError::Timeout)).__tx_verdict(),
            Verdict::NotRetryable
        );
        assert_eq!(
            (&&&Probe(&Wrapped::Tx(retryable()))).__tx_verdict(),
            Verdict::Retryable
        );
        assert_eq!(
            (&&&Probe(&Wrapped::Tx(TxError::UnexpectedRollback))).__tx_verdict(),
            Verdict::NotRetryable
        );
        assert_eq!((&&&Probe(&Wrapped::Own)).__tx_verdict(), Verdict::Opaque);
        assert_eq!((&&&Probe(&NoError)).__tx_verdict(), Verdict::Opaque);
        let boxed: Box<dyn Error + Send + Sync> = Box::new(Wrapped::Tx(retryable()));
        assert_eq!((&&&Probe(&boxed)).__tx_verdict(), Verdict::Retryable);
        // A before_commit failure is not retryable, whatever it carries.
        let hook = TxError::BeforeCommit(Box::new(retryable()));
        assert_eq!((&&&Probe(&hook)).__tx_verdict(), Verdict::NotRetryable);
    }

    #[test]
    fn a_template_looks_into_the_type_it_is_told_of() {
        let wrapped = Wrapped::Tx(retryable());
        assert_eq!(of_any(&retryable(), None), Verdict::Retryable);
        assert_eq!(of_any(&wrapped, None), Verdict::Opaque);
        let t = ErrorType::of::<Wrapped>();
        assert_eq!(of_any(&wrapped, Some(&t)), Verdict::Retryable);
        assert_eq!(of_any(&Wrapped::Own, Some(&t)), Verdict::Opaque);
        assert_eq!(of_any(&NoError, Some(&t)), Verdict::Opaque);
    }
}
