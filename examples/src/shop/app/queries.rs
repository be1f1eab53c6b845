// The schema, the seed data, and the read-only queries the reports use. Compiled once per
// backend, like the services: `ID_COLUMN` is the one piece of DDL that differs.

use super::store;
use crate::shop::error::ShopError;
use crate::shop::model::{
    ACCOUNTS, Account, AuditEntry, DeliveryFailure, Gift, Order, PRODUCTS, Product, USED_COUPON,
};

/// Creates the shop's tables (the store's and its own) on `db` and `audit_log` on `audit_db`
/// (the same database on PostgreSQL and MariaDB, a second one on SQLite), and inserts the seed
/// data.
///
/// Expects empty databases (a fresh schema / database / file).
///
/// # Errors
///
/// The database's, as a `TxError` (a table that already exists, a lost connection, ...).
pub async fn create_schema(db: &Db, audit_db: &Db) -> Result<(), TxError> {
    let own_tables = [
        format!(
            "CREATE TABLE orders ({ID_COLUMN}, user_id BIGINT NOT NULL, \
             product_id BIGINT NOT NULL, quantity BIGINT NOT NULL, state VARCHAR(20) NOT NULL, \
             note VARCHAR(200), address VARCHAR(200))"
        ),
        format!(
            "CREATE TABLE gift ({ID_COLUMN}, order_id BIGINT NOT NULL, \
             product_id BIGINT NOT NULL)"
        ),
        format!(
            "CREATE TABLE shipment ({ID_COLUMN}, order_id BIGINT NOT NULL, \
             address VARCHAR(200) NOT NULL)"
        ),
        format!(
            "CREATE TABLE delivery_failure ({ID_COLUMN}, order_id BIGINT NOT NULL, \
             reason VARCHAR(200) NOT NULL)"
        ),
        "CREATE TABLE coupon (code VARCHAR(20) PRIMARY KEY, used BIGINT NOT NULL)".to_owned(),
    ];
    store::create_tables(db, audit_db, &own_tables).await?;
    store::seed(db, &ACCOUNTS, &PRODUCTS).await?;
    sqlx::query(sql("INSERT INTO coupon (code, used) VALUES ($1, 1)"))
        .bind(USED_COUPON)
        .execute(db)
        .await?;
    Ok(())
}

/// Read-only queries for the reports, each in autocommit (no transaction is bound when the
/// demo reads its rows back).
#[derive(Debug, Clone)]
pub struct Queries {
    db: Db,
    audit_db: Db,
}

impl Queries {
    /// Queries on the shop's database and its audit database.
    pub fn new(db: Db, audit_db: Db) -> Self {
        Queries { db, audit_db }
    }

    /// One account.
    ///
    /// # Errors
    ///
    /// The database's; `RowNotFound` (as a `TxError`) for an unknown id.
    pub async fn account(&self, id: i64) -> Result<Account, TxError> {
        let account = sqlx::query_as(sql("SELECT id, name, balance FROM account WHERE id = $1"))
            .bind(id)
            .fetch_one(&self.db)
            .await?;
        Ok(account)
    }

    /// One product.
    ///
    /// # Errors
    ///
    /// [`ShopError::ProductNotFound`] for an unknown id, else the database's.
    pub async fn product(&self, id: i64) -> Result<Product, ShopError> {
        store::product(&self.db, id).await
    }

    /// The orders of a user, oldest first.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn orders_of(&self, user_id: i64) -> Result<Vec<Order>, TxError> {
        let statement = "SELECT id, user_id, product_id, quantity, state, note FROM orders \
                         WHERE user_id = $1 ORDER BY id";
        rows(&self.db, statement, user_id).await
    }

    /// The audit entries of a user's order attempts (their detail starts with
    /// `user=<user_id> `), oldest first.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn audit_of(&self, user_id: i64) -> Result<Vec<AuditEntry>, TxError> {
        let statement = "SELECT id, action, detail FROM audit_log WHERE detail LIKE $1 ORDER BY id";
        rows(&self.audit_db, statement, format!("user={user_id} %")).await
    }

    /// The gifts attached to an order.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn gifts_of(&self, order_id: i64) -> Result<Vec<Gift>, TxError> {
        let statement = "SELECT order_id, product_id FROM gift WHERE order_id = $1 ORDER BY id";
        rows(&self.db, statement, order_id).await
    }

    /// How many shipments exist for the orders of a product.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn shipments_of_product(&self, product_id: i64) -> Result<i64, TxError> {
        let n = sqlx::query_scalar(sql(
            "SELECT COUNT(*) FROM shipment s JOIN orders o ON o.id = s.order_id \
             WHERE o.product_id = $1",
        ))
        .bind(product_id)
        .fetch_one(&self.db)
        .await?;
        Ok(n)
    }

    /// Every recorded delivery failure.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn delivery_failures(&self) -> Result<Vec<DeliveryFailure>, TxError> {
        let failures = sqlx::query_as("SELECT order_id, reason FROM delivery_failure ORDER BY id")
            .fetch_all(&self.db)
            .await?;
        Ok(failures)
    }

    /// Whether a coupon is used (1) or not (0).
    ///
    /// # Errors
    ///
    /// The database's; `RowNotFound` (as a `TxError`) for an unknown code.
    pub async fn coupon_used(&self, code: &str) -> Result<i64, TxError> {
        let used = sqlx::query_scalar(sql("SELECT used FROM coupon WHERE code = $1"))
            .bind(code)
            .fetch_one(&self.db)
            .await?;
        Ok(used)
    }
}

/// The rows `statement` selects with its one parameter `key`, oldest first, in autocommit on
/// `db`: what the reports' lists read.
async fn rows<T, K>(db: &Db, statement: &'static str, key: K) -> Result<Vec<T>, TxError>
where
    T: for<'r> sqlx::FromRow<'r, <Database as sqlx::Database>::Row> + Send + Unpin,
    K: for<'q> sqlx::Encode<'q, Database> + sqlx::Type<Database> + Send + 'static,
{
    let rows = sqlx::query_as(sql(statement))
        .bind(key)
        .fetch_all(db)
        .await?;
    Ok(rows)
}
