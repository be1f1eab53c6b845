//! The HTTP routes: which run in a request transaction (`TxLayer`), which own theirs.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tx_axum::TxLayer;
use tx_examples::shop::Store;
use tx_sqlx::TransactionDefinition;

use crate::error::ApiError;
use crate::services::{
    Account, AuditEntry, AuditService, Order, OrderService, Placed, Product, TransferService,
    Transferred,
};

/// The services the handlers share.
#[derive(Debug, Clone)]
pub struct Api<S> {
    db: S,
    audit_db: S,
    orders: OrderService<S>,
    audit: AuditService<S>,
    transfers: TransferService<S>,
}

impl<S: Store> Api<S> {
    /// The API on `db`, auditing into `audit_db` (the same pool, or on SQLite a second
    /// database).
    pub fn new(db: S, audit_db: S) -> Self {
        let audit = AuditService::new(audit_db.clone());
        Api {
            audit_db,
            orders: OrderService::new(db.clone(), audit.clone()),
            transfers: TransferService::new(db.clone()),
            audit,
            db,
        }
    }

    /// The database of orders, accounts and products.
    pub fn db(&self) -> &S {
        &self.db
    }

    /// The database of the audit log (the same as [`db`](Api::db) on a server).
    pub fn audit_db(&self) -> &S {
        &self.audit_db
    }

    /// The order service.
    pub fn orders(&self) -> &OrderService<S> {
        &self.orders
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditService<S> {
        &self.audit
    }
}

/// `POST /orders`.
#[derive(Debug, Deserialize)]
pub struct PlaceOrder {
    /// The buyer's account.
    pub account: i64,
    /// The product.
    pub product: i64,
    /// Units.
    pub quantity: i64,
}

/// `POST /transfers`.
#[derive(Debug, Deserialize)]
pub struct Transfer {
    /// The paying account.
    pub from: i64,
    /// The receiving account.
    pub to: i64,
    /// Yuan.
    pub amount: i64,
}

/// The routes:
///
/// | route | transaction |
/// |---|---|
/// | `POST /orders` | the request's (`TxLayer`): committed on 201, rolled back on 4xx/5xx |
/// | `GET /orders/{id}`, `/accounts/{id}`, `/products/{id}` | the request's, read-only |
/// | `POST /transfers` | its own: SERIALIZABLE, retried on conflicts |
/// | `GET /audit` | none (autocommit reads of the audit log) |
pub fn router<S: Store>(api: Api<S>) -> Router {
    let writes = TxLayer::new(api.db.clone()).on_commit_error(|e| {
        use axum::response::IntoResponse;
        ApiError::Tx(e).into_response()
    });
    let reads = writes.clone().definition(
        TransactionDefinition::default()
            .read_only(true)
            .name("orders-api read"),
    );
    Router::new()
        .route("/orders", post(place_order::<S>).layer(writes))
        .route("/orders/{id}", get(order::<S>).layer(reads.clone()))
        .route("/accounts/{id}", get(account::<S>).layer(reads.clone()))
        .route("/products/{id}", get(product::<S>).layer(reads))
        .route("/transfers", post(transfer::<S>))
        .route("/audit", get(audit::<S>))
        .with_state(api)
}

async fn place_order<S: Store>(
    State(api): State<Api<S>>,
    Json(req): Json<PlaceOrder>,
) -> Result<(StatusCode, Json<Placed>), ApiError> {
    let placed = api
        .orders
        .place(req.account, req.product, req.quantity)
        .await?;
    Ok((StatusCode::CREATED, Json(placed)))
}

async fn order<S: Store>(
    State(api): State<Api<S>>,
    Path(id): Path<i64>,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(api.orders.get(id).await?))
}

async fn account<S: Store>(
    State(api): State<Api<S>>,
    Path(id): Path<i64>,
) -> Result<Json<Account>, ApiError> {
    Ok(Json(api.orders.account(id).await?))
}

async fn product<S: Store>(
    State(api): State<Api<S>>,
    Path(id): Path<i64>,
) -> Result<Json<Product>, ApiError> {
    Ok(Json(api.orders.product(id).await?))
}

async fn transfer<S: Store>(
    State(api): State<Api<S>>,
    Json(req): Json<Transfer>,
) -> Result<Json<Transferred>, ApiError> {
    Ok(Json(
        api.transfers.transfer(req.from, req.to, req.amount).await?,
    ))
}

async fn audit<S: Store>(State(api): State<Api<S>>) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    Ok(Json(api.audit.entries().await?))
}
