//! The shop's one error type: business failures, and every database and engine failure as a
//! `TxError` (the pattern the README teaches). The store's failures (stock, balance, unknown
//! rows) are its variants too, also for the orders API, which answers them as they are.

use tx_sqlx::TxError;

/// Everything a shop service can fail with.
///
/// Business failures are variants of their own, so rollback rules can name them
/// (`no_rollback_for = ShopError::RiskRejected { .. }`). The engine's and the database's
/// errors arrive as [`ShopError::Tx`], also when `?` is used on a sqlx call: the
/// `From<sqlx::Error>` below goes through `TxError`, so a statement cut by the deadline is
/// `TxError::Timeout` and a serialization failure stays `is_retryable()`.
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

impl From<sqlx::Error> for ShopError {
    fn from(e: sqlx::Error) -> Self {
        ShopError::Tx(e.into())
    }
}

impl ShopError {
    /// True for [`TxError::UnexpectedRollback`].
    #[must_use]
    pub fn is_unexpected_rollback(&self) -> bool {
        matches!(self, ShopError::Tx(TxError::UnexpectedRollback))
    }
}
