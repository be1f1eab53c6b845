// The store both apps sell from, the shop and the orders API: the tables they share (accounts,
// products, the audit log), the steps of every order (take the stock, charge the buyer) and
// of a payment, and the audit log's service. Compiled once per backend, like the services;
// the orders API reaches it as `tx_examples::shop::<backend>::store`.
//
// The steps are plain statements on `db`: called from a `#[transactional]` method on the same
// pool, they join its transaction. They fail with the caller's error type, into which their
// business failures, the shop's `ShopError`s, convert.

use tx_sqlx::TxError;
use tx_sqlx::prelude::*;

use crate::shop::error::ShopError;
use crate::shop::model::{AuditEntry, Product};

/// Creates `account`, `product` and `own_tables` on `db`, and `audit_log` on `audit_db` (the
/// same database on a server, a second one on SQLite). Expects an empty database.
///
/// # Errors
///
/// The database's (a table that already exists, a lost connection, ...).
pub async fn create_tables(db: &Db, audit_db: &Db, own_tables: &[String]) -> Result<(), TxError> {
    let shared = [
        "CREATE TABLE account (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, \
         balance BIGINT NOT NULL CHECK (balance >= 0))"
            .to_owned(),
        "CREATE TABLE product (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, \
         stock BIGINT NOT NULL CHECK (stock >= 0), price BIGINT NOT NULL)"
            .to_owned(),
    ];
    // DDL is built from constants, never from input.
    for ddl in shared.iter().chain(own_tables) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl.clone()))
            .execute(db)
            .await?;
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE audit_log ({ID_COLUMN}, action VARCHAR(50) NOT NULL, \
         detail VARCHAR(200) NOT NULL)"
    )))
    .execute(audit_db)
    .await?;
    Ok(())
}

/// Inserts the seed rows: `accounts` as (id, owner, balance), `products` as (id, name, stock,
/// unit price).
///
/// # Errors
///
/// The database's.
pub async fn seed(
    db: &Db,
    accounts: &[(i64, &str, i64)],
    products: &[(i64, &str, i64, i64)],
) -> Result<(), TxError> {
    for &(id, name, balance) in accounts {
        sqlx::query(sql(
            "INSERT INTO account (id, name, balance) VALUES ($1, $2, $3)",
        ))
        .bind(id)
        .bind(name)
        .bind(balance)
        .execute(db)
        .await?;
    }
    for &(id, name, stock, price) in products {
        sqlx::query(sql(
            "INSERT INTO product (id, name, stock, price) VALUES ($1, $2, $3, $4)",
        ))
        .bind(id)
        .bind(name)
        .bind(stock)
        .bind(price)
        .execute(db)
        .await?;
    }
    Ok(())
}

/// An app's error type, as the store's statements need it: their business failures are
/// [`ShopError`]s (out of stock, insufficient balance, not found), converted into it like the
/// database's and the engine's failures.
pub trait StoreError: From<ShopError> + From<TxError> + From<sqlx::Error> {}

impl<E: From<ShopError> + From<TxError> + From<sqlx::Error>> StoreError for E {}

/// Takes `qty` units of `product` from stock; returns the unit price.
///
/// # Errors
///
/// [`ShopError::OutOfStock`] when fewer are left, [`ShopError::ProductNotFound`], else the
/// database's.
pub async fn take_stock<E: StoreError>(db: &Db, product: i64, qty: i64) -> Result<i64, E> {
    Counter::Stock.take::<E>(db, product, qty).await?;
    let price = sqlx::query_scalar(sql("SELECT price FROM product WHERE id = $1"))
        .bind(product)
        .fetch_one(db)
        .await?;
    Ok(price)
}

/// Takes `amount` from `account`.
///
/// # Errors
///
/// [`ShopError::InsufficientBalance`] when the balance is short,
/// [`ShopError::AccountNotFound`], else the database's.
pub async fn debit<E: StoreError>(db: &Db, account: i64, amount: i64) -> Result<(), E> {
    Counter::Balance.take(db, account, amount).await
}

/// Adds `amount` to `account`.
///
/// # Errors
///
/// [`ShopError::AccountNotFound`], else the database's.
pub async fn credit<E: StoreError>(db: &Db, account: i64, amount: i64) -> Result<(), E> {
    let changed = sqlx::query(sql(
        "UPDATE account SET balance = balance + $1 WHERE id = $2",
    ))
    .bind(amount)
    .bind(account)
    .execute(db)
    .await?
    .rows_affected();
    if changed == 0 {
        return Err(ShopError::AccountNotFound(account).into());
    }
    Ok(())
}

/// One product.
///
/// # Errors
///
/// [`ShopError::ProductNotFound`], else the database's.
pub async fn product<E: StoreError>(db: &Db, id: i64) -> Result<Product, E> {
    let product = sqlx::query_as(sql(
        "SELECT id, name, stock, price FROM product WHERE id = $1",
    ))
    .bind(id)
    .fetch_optional(db)
    .await?;
    product.ok_or(E::from(ShopError::ProductNotFound(id)))
}

/// A number the store never lets go below zero: a product's stock, an account's balance.
#[derive(Clone, Copy)]
enum Counter {
    Stock,
    Balance,
}

impl Counter {
    /// Takes `amount` from the row `id`, in one guarded UPDATE; when it changes nothing, a
    /// second look tells a short counter from a missing row.
    async fn take<E: StoreError>(self, db: &Db, id: i64, amount: i64) -> Result<(), E> {
        let (take, count) = match self {
            Counter::Stock => (
                sql("UPDATE product SET stock = stock - $1 WHERE id = $2 AND stock >= $3"),
                sql("SELECT COUNT(*) FROM product WHERE id = $1"),
            ),
            Counter::Balance => (
                sql("UPDATE account SET balance = balance - $1 WHERE id = $2 AND balance >= $3"),
                sql("SELECT COUNT(*) FROM account WHERE id = $1"),
            ),
        };
        let changed = sqlx::query(take)
            .bind(amount)
            .bind(id)
            .bind(amount)
            .execute(db)
            .await?
            .rows_affected();
        if changed > 0 {
            return Ok(());
        }
        let rows: i64 = sqlx::query_scalar(count).bind(id).fetch_one(db).await?;
        Err(E::from(match (self, rows > 0) {
            (Counter::Stock, true) => ShopError::OutOfStock {
                product: id,
                requested: amount,
            },
            (Counter::Stock, false) => ShopError::ProductNotFound(id),
            (Counter::Balance, true) => ShopError::InsufficientBalance {
                account: id,
                needed: amount,
            },
            (Counter::Balance, false) => ShopError::AccountNotFound(id),
        }))
    }
}

/// The audit log: each entry in a transaction of its own (`RequiresNew`), so that it survives
/// the failure of the business transaction that wrote it. On SQLite it lives in a second
/// database with its own `TxPool` (one writer per database: a `RequiresNew` writer on the
/// database whose write lock the caller holds would wait for itself).
#[derive(Debug, Clone)]
pub struct AuditService {
    db: Db,
}

impl AuditService {
    /// The service on `db` (the audit database).
    pub fn new(db: Db) -> Self {
        AuditService { db }
    }

    /// Writes one entry and commits it at once, whatever the caller's transaction does later.
    ///
    /// # Errors
    ///
    /// The database's, or the engine's (no connection for the new transaction, ...).
    #[transactional(manager = self.db, propagation = RequiresNew)]
    pub async fn record(&self, action: &str, detail: String) -> Result<(), TxError> {
        sqlx::query(sql(
            "INSERT INTO audit_log (action, detail) VALUES ($1, $2)",
        ))
        .bind(action)
        .bind(detail)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Records an order attempt (`ORDER_ATTEMPT`). A failure to record is logged, not
    /// returned: an audit failure must not fail the order.
    pub async fn order_attempt(&self, detail: String) {
        if let Err(e) = self.record("ORDER_ATTEMPT", detail).await {
            tracing::warn!("audit failed: {e}");
        }
    }

    /// Every entry, oldest first, in autocommit (or in the caller's transaction on this pool).
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn entries(&self) -> Result<Vec<AuditEntry>, TxError> {
        let entries = sqlx::query_as(sql("SELECT id, action, detail FROM audit_log ORDER BY id"))
            .fetch_all(&self.db)
            .await?;
        Ok(entries)
    }
}
