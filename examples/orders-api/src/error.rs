//! The API's errors, and the HTTP status each one is answered with.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tx_sqlx::TxError;

/// Everything a request can fail with. Business failures are variants of their own; the
/// engine's and the database's errors arrive as [`ApiError::Tx`].
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Not enough stock: 409 Conflict.
    #[error("product {product} has not enough stock for {requested}")]
    OutOfStock {
        /// The product.
        product: i64,
        /// The quantity asked for.
        requested: i64,
    },
    /// The account cannot pay: 402 Payment Required.
    #[error("account {account} has not enough balance for {needed}")]
    InsufficientBalance {
        /// The account.
        account: i64,
        /// The amount to pay.
        needed: i64,
    },
    /// The loyalty account is at its cap (handled inside an order, never answered).
    #[error("account {0} has reached its loyalty points cap")]
    PointsCapReached(i64),
    /// No such account, product or order: 404 Not Found.
    #[error("{what} {id} not found")]
    NotFound {
        /// `"account"`, `"product"` or `"order"`.
        what: &'static str,
        /// The id asked for.
        id: i64,
    },
    /// A request that cannot be carried out as written: 422 Unprocessable Entity.
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// The transaction engine or the database failed: 503 for a conflict that outlasted its
    /// retries (serialization failure, deadlock), else 500.
    #[error(transparent)]
    Tx(#[from] TxError),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Tx(e.into())
    }
}

impl ApiError {
    /// The status this error is answered with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::OutOfStock { .. } | ApiError::PointsCapReached(_) => StatusCode::CONFLICT,
            ApiError::InsufficientBalance { .. } => StatusCode::PAYMENT_REQUIRED,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Tx(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Tx(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// `{"error": "..."}` with [`ApiError::status`]; the text of engine and database errors stays
/// in the log (it may name tables and constraints).
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Tx(e) if e.is_retryable() => {
                tracing::warn!("conflict outlasted its retries: {e}");
                "conflict with concurrent requests, try again".to_owned()
            }
            ApiError::Tx(e) => {
                tracing::error!("request failed: {e}");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}
