//! The API's errors, and the HTTP status each one is answered with.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tx_examples::shop::ShopError;
use tx_sqlx::TxError;

/// Everything a request can fail with: the shop's errors, from its store (stock, balance,
/// unknown rows) and from the engine and the database (`ShopError::Tx`), and the API's own.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The shop failed: 409 Conflict out of stock, 402 Payment Required for an account that
    /// cannot pay, 404 Not Found for an unknown account or product; for the engine or the
    /// database, 503 for a conflict that outlasted its retries (serialization failure,
    /// deadlock), else 500.
    #[error(transparent)]
    Shop(#[from] ShopError),
    /// The loyalty account is at its cap (handled inside an order, never answered).
    #[error("account {0} has reached its loyalty points cap")]
    PointsCapReached(i64),
    /// No such order: 404 Not Found.
    #[error("order {0} not found")]
    OrderNotFound(i64),
    /// A request that cannot be carried out as written: 422 Unprocessable Entity.
    #[error("invalid request: {0}")]
    Invalid(&'static str),
}

/// The engine's errors (the macro reports through `From<TxError>`), as the shop's.
impl From<TxError> for ApiError {
    fn from(e: TxError) -> Self {
        ApiError::Shop(e.into())
    }
}

// The database's errors, through `TxError` as the shop's: a timeout stays a timeout.
tx_examples::from_sqlx_through_tx!(ApiError);

impl ApiError {
    /// The status this error is answered with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Shop(ShopError::OutOfStock { .. }) | ApiError::PointsCapReached(_) => {
                StatusCode::CONFLICT
            }
            ApiError::Shop(ShopError::InsufficientBalance { .. }) => StatusCode::PAYMENT_REQUIRED,
            ApiError::Shop(ShopError::AccountNotFound(_) | ShopError::ProductNotFound(_))
            | ApiError::OrderNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Shop(ShopError::Tx(e)) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Shop(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// `{"error": "..."}` with [`ApiError::status`]; the text of engine and database errors stays
/// in the log (it may name tables and constraints).
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Shop(ShopError::Tx(e)) if e.is_retryable() => {
                tracing::warn!("conflict outlasted its retries: {e}");
                "conflict with concurrent requests, try again".to_owned()
            }
            ApiError::Shop(ShopError::Tx(e)) => {
                tracing::error!("request failed: {e}");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}
