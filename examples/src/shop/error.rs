//! The shop's one error type: business failures, and every database and engine failure as a
//! `TxError` (the pattern the README teaches). The store's failures (stock, balance, unknown
//! rows) are its variants too, also for the orders API, which answers them as they are.

use tx_sqlx::TxError;

/// Everything a shop service can fail with.
///
/// Business failures are variants of their own, so rollback rules can name them
/// (`no_rollback_for = ShopError::RiskRejected { .. }`). The engine's and the database's
/// errors arrive as [`ShopError::Tx`], also when `?` is used on a sqlx call: its
/// `From<sqlx::Error>` ([`from_sqlx_through_tx!`](crate::from_sqlx_through_tx)) goes through
/// `TxError`, so a statement cut by the deadline is `TxError::Timeout` and a serialization
/// failure stays `is_retryable()`.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    /// Not enough stock for the quantity asked.
    #[error("insufficient stock for product {product}: {requested} requested")]
    OutOfStock {
        /// The product.
        product: i64,
        /// The quantity asked for.
        requested: i64,
    },
    /// The account cannot pay the amount.
    #[error("insufficient balance in account {account}: {needed} needed")]
    InsufficientBalance {
        /// The account.
        account: i64,
        /// The amount it had to pay.
        needed: i64,
    },
    /// No such account.
    #[error("account {0} not found")]
    AccountNotFound(i64),
    /// No such product.
    #[error("product {0} not found")]
    ProductNotFound(i64),
    /// The gift product has no stock left.
    #[error("gift product {0} is out of stock")]
    GiftOutOfStock(i64),
    /// The risk service refused the order: it is kept for manual review.
    #[error("risk check rejected order {order_id}: {reason}")]
    RiskRejected {
        /// The order, kept in state `WAIT_AUDIT`.
        order_id: i64,
        /// Why.
        reason: String,
    },
    /// The risk service could not be reached: a system failure, nothing may stay.
    #[error("risk service unavailable")]
    RiskServiceDown,
    /// The coupon does not exist, is used or expired.
    #[error("coupon {0} is not valid")]
    CouponInvalid(String),
    /// The order has no delivery address.
    #[error("order {0} has no delivery address")]
    MissingAddress(i64),
    /// A schema or database name for the demo that is not a plain identifier.
    #[error("invalid schema/database name {0:?}: use letters, digits and '_' (not first)")]
    InvalidNamespace(String),
    /// The database or the transaction engine failed (a timeout, an unexpected rollback, a
    /// serialization failure, a rejected statement, ...).
    #[error(transparent)]
    Tx(#[from] TxError),
}

/// `impl From<sqlx::Error> for $error`, through `TxError`'s conversion: the README's error
/// pattern, for an error type that converts from `TxError` (a `Tx(#[from] TxError)` variant,
/// or its own `From<TxError>`). A statement cut by the deadline then arrives as
/// `TxError::Timeout`, a serialization failure stays `is_retryable()`. Every error type of the
/// examples converts this way; an application writes the impl out:
///
/// ```
/// # #[derive(Debug, thiserror::Error)]
/// # enum AppError { #[error(transparent)] Tx(#[from] tx_sqlx::TxError) }
/// impl From<sqlx::Error> for AppError {
///     fn from(e: sqlx::Error) -> Self {
///         AppError::Tx(e.into())
///     }
/// }
/// ```
#[macro_export]
macro_rules! from_sqlx_through_tx {
    ($error:ty) => {
        impl From<::sqlx::Error> for $error {
            fn from(e: ::sqlx::Error) -> Self {
                ::tx_sqlx::TxError::from(e).into()
            }
        }
    };
}

crate::from_sqlx_through_tx!(ShopError);

impl ShopError {
    /// True for [`TxError::UnexpectedRollback`].
    #[must_use]
    pub fn is_unexpected_rollback(&self) -> bool {
        matches!(self, ShopError::Tx(TxError::UnexpectedRollback))
    }
}
