// The HTTP routes: which run in a request transaction (`TxLayer`), which own theirs.
// Compiled once per backend, with the services of that backend.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use tx_axum::TxLayer;
use tx_sqlx::{TransactionDefinition, TxError};

use super::services::{OrderService, TransferService};
use super::store::AuditService;
use crate::error::ApiError;
use crate::model::{
    Account, AuditEntry, Order, PlaceOrder, Placed, Product, Transfer, Transferred,
};

/// The services the handlers share.
#[derive(Debug, Clone)]
pub struct Api {
    db: Db,
    audit_db: Db,
    orders: OrderService,
    audit: AuditService,
    transfers: TransferService,
}

impl Api {
    /// The API on `db`, auditing into `audit_db` (the same pool, or on SQLite a second
    /// database).
    pub fn new(db: Db, audit_db: Db) -> Self {
        let audit = AuditService::new(audit_db.clone());
        Api {
            audit_db,
            orders: OrderService::new(db.clone(), audit.clone()),
            transfers: TransferService::new(db.clone()),
            audit,
            db,
        }
    }

    /// Creates the tables and the seed data on `db` and `audit_db`, then the API on them.
    ///
    /// # Errors
    ///
    /// A failed statement.
    pub async fn create(db: Db, audit_db: Db) -> Result<Self, TxError> {
        super::tables::create(&db, &audit_db).await?;
        Ok(Api::new(db, audit_db))
    }

    /// The database of orders, accounts and products.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The database of the audit log (the same as [`db`](Api::db) on a server).
    pub fn audit_db(&self) -> &Db {
        &self.audit_db
    }

    /// The order service.
    pub fn orders(&self) -> &OrderService {
        &self.orders
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditService {
        &self.audit
    }
}

/// The routes:
///
/// | route | transaction |
/// |---|---|
/// | `POST /orders` | the request's (`TxLayer`): committed on 201, rolled back on 4xx/5xx |
/// | `GET /orders/{id}`, `/accounts/{id}`, `/products/{id}` | the request's, read-only |
/// | `POST /transfers` | its own: SERIALIZABLE, retried on conflicts |
/// | `GET /audit` | none (autocommit reads of the audit log) |
pub fn router(api: Api) -> Router {
    let writes = TxLayer::new(api.db.clone()).on_commit_error(|e| {
        use axum::response::IntoResponse;
        ApiError::from(e).into_response()
    });
    let reads = writes.clone().definition(
        TransactionDefinition::default()
            .read_only(true)
            .name("orders-api read"),
    );
    Router::new()
        .route("/orders", post(place_order).layer(writes))
        .route("/orders/{id}", get(order).layer(reads.clone()))
        .route("/accounts/{id}", get(account).layer(reads.clone()))
        .route("/products/{id}", get(product).layer(reads))
        .route("/transfers", post(transfer))
        .route("/audit", get(audit))
        .with_state(api)
}

async fn place_order(
    State(api): State<Api>,
    Json(req): Json<PlaceOrder>,
) -> Result<(StatusCode, Json<Placed>), ApiError> {
    let placed = api
        .orders
        .place(req.account, req.product, req.quantity)
        .await?;
    Ok((StatusCode::CREATED, Json(placed)))
}

async fn order(State(api): State<Api>, Path(id): Path<i64>) -> Result<Json<Order>, ApiError> {
    Ok(Json(api.orders.get(id).await?))
}

async fn account(State(api): State<Api>, Path(id): Path<i64>) -> Result<Json<Account>, ApiError> {
    Ok(Json(api.orders.account(id).await?))
}

async fn product(State(api): State<Api>, Path(id): Path<i64>) -> Result<Json<Product>, ApiError> {
    Ok(Json(api.orders.product(id).await?))
}

async fn transfer(
    State(api): State<Api>,
    Json(req): Json<Transfer>,
) -> Result<Json<Transferred>, ApiError> {
    Ok(Json(
        api.transfers.transfer(req.from, req.to, req.amount).await?,
    ))
}

async fn audit(State(api): State<Api>) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    Ok(Json(api.audit.entries().await?))
}
