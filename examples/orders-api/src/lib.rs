//! # orders-api: an axum order service on tx
//!
//! The seeds' order placement as an HTTP API: each request runs in one transaction
//! ([`tx_axum::TxLayer`]), committed when the handler answers 2xx and rolled back when it
//! answers 4xx/5xx, before the response leaves.
//!
//! * `POST /orders {"account", "product", "quantity"}`: takes the stock, creates the order,
//!   charges the buyer, all in the request's transaction; audits the attempt in a
//!   `RequiresNew` transaction of its own (kept when the order fails); credits loyalty points
//!   in a `Nested` scope (at the cap, only that savepoint is rolled back). Answers 201, or
//!   409 out of stock, 402 insufficient balance, 404 unknown account or product.
//! * `GET /orders/{id}`, `GET /accounts/{id}`, `GET /products/{id}`: in a read-only request
//!   transaction.
//! * `POST /transfers {"from", "to", "amount"}`: a SERIALIZABLE transaction of its own,
//!   re-run on serialization failures and deadlocks; 402 when the balance is short, 503 when
//!   the conflict outlasts the retries.
//! * `GET /audit`: the audit log.
//!
//! SQLite by default; `DATABASE_URL=postgres://...` or `mysql://...` for a server.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let api = orders_api::setup::sqlite(dir.path()).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, orders_api::router(api)).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod routes;
pub mod schema;
mod services;
pub mod setup;

pub use error::ApiError;
pub use routes::{Api, PlaceOrder, Transfer, router};
pub use services::{
    Account, AuditEntry, AuditService, Order, OrderService, Placed, PointsService, Product,
    TransferService, Transferred,
};
pub use setup::Target;
