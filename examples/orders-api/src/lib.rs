//! # orders-api: an axum order service on tx
//!
//! The shop's order placement as an HTTP API: each request runs in one transaction
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
//! The services (`app/services.rs`) and routes (`app/routes.rs`) are plain sqlx on
//! `&self.db`, written once and compiled once per backend in [`sqlite`], [`postgres`] and
//! [`mysql`]: each sets the pool type `Db` and the placeholder style, then includes them.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let api = orders_api::sqlite::connect(dir.path()).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, orders_api::sqlite::router(api)).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod model;
pub mod mysql;
pub mod postgres;
pub mod schema;
mod setup;
pub mod sqlite;

pub use error::ApiError;
pub use model::{Account, AuditEntry, Order, PlaceOrder, Placed, Product, Transfer, Transferred};
pub use tx_examples::per_backend::Target;
pub use tx_examples::shop::ShopError;
