//! The rows the demo prints, the schema, and the seed data.

use std::fmt;

use super::store::{Dialect, Row, Store, sql};
use tx_sqlx::TxError;

/// `account`: users and bank accounts (balance in whole yuan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Id.
    pub id: i64,
    /// Owner.
    pub name: String,
    /// Balance.
    pub balance: i64,
}

/// `product`: goods and their stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Units in stock.
    pub stock: i64,
    /// Unit price.
    pub price: i64,
}

/// `orders`: one order of one product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Id.
    pub id: i64,
    /// Buyer (an account id).
    pub user_id: i64,
    /// Product.
    pub product_id: i64,
    /// Units.
    pub quantity: i64,
    /// `PAID`, `CREATED`, `WAIT_AUDIT`, `DELIVERED`.
    pub state: String,
    /// Free text, e.g. why it waits for review.
    pub note: Option<String>,
}

/// `audit_log`: written in its own transaction (and on SQLite in its own database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Id.
    pub id: i64,
    /// What was attempted.
    pub action: String,
    /// Details.
    pub detail: String,
}

/// `gift`: a free product attached to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gift {
    /// The order.
    pub order_id: i64,
    /// The gift product.
    pub product_id: i64,
}

/// `delivery_failure`: an order the batch could not deliver, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFailure {
    /// The order.
    pub order_id: i64,
    /// Why.
    pub reason: String,
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "account #{} {}: balance {}",
            self.id, self.name, self.balance
        )
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "product #{} {}: stock {}",
            self.id, self.name, self.stock
        )
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "order #{} user {} product {} x{}: {}",
            self.id, self.user_id, self.product_id, self.quantity, self.state
        )?;
        if let Some(note) = &self.note {
            write!(f, " ({note})")?;
        }
        Ok(())
    }
}

impl fmt::Display for AuditEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "audit #{} {} {}", self.id, self.action, self.detail)
    }
}

impl Account {
    fn from_row(r: &Row) -> Self {
        Account {
            id: r.int(0),
            name: r.text(1),
            balance: r.int(2),
        }
    }
}

impl Product {
    fn from_row(r: &Row) -> Self {
        Product {
            id: r.int(0),
            name: r.text(1),
            stock: r.int(2),
            price: r.int(3),
        }
    }
}

impl Order {
    fn from_row(r: &Row) -> Self {
        Order {
            id: r.int(0),
            user_id: r.int(1),
            product_id: r.int(2),
            quantity: r.int(3),
            state: r.text(4),
            note: r.opt_text(5),
        }
    }
}

/// Ids of the seed data.
pub mod ids {
    /// Zhang San, 5000 yuan: seed 000 §5's buyer.
    pub const ZHANG_SAN: i64 = 1;
    /// Alice, 200 yuan: transfers.
    pub const ALICE: i64 = 2;
    /// Bob, 0 yuan: transfers.
    pub const BOB: i64 = 3;
    /// Wang Wu, 100000 yuan: the gift case.
    pub const WANG_WU: i64 = 4;
    /// Li Si, 100 yuan: the audit case.
    pub const LI_SI: i64 = 5;
    /// Zhao Liu, 100000 yuan: the risk case.
    pub const ZHAO_LIU: i64 = 6;
    /// Sun Qi, 300 yuan: the MQ case.
    pub const SUN_QI: i64 = 7;
    /// Zhou Ba, 100000 yuan: the rollback-only case.
    pub const ZHOU_BA: i64 = 8;
    /// An account that does not exist.
    pub const NOBODY: i64 = 99;

    /// Laptop, 10 in stock at 5000: seed 000 §5.
    pub const LAPTOP: i64 = 100;
    /// Mouse, the gift: none left.
    pub const MOUSE_GIFT: i64 = 200;
    /// Phone, 100 at 1000: the gift case.
    pub const PHONE: i64 = 300;
    /// Tablet, 100 at 1000: the risk case.
    pub const TABLET: i64 = 310;
    /// Headphones, 10 at 200: the MQ case.
    pub const HEADPHONES: i64 = 320;
    /// Keyboard, 10 at 100: the rollback-only case.
    pub const KEYBOARD: i64 = 330;
    /// Book, 1000 at 10: the batch delivery.
    pub const BOOK: i64 = 340;
    /// Limited sneaker, 10 at 100: the serialization conflict.
    pub const SNEAKER: i64 = 400;
}

/// Creates the shop's tables on `db` and `audit_log` on `audit_db` (the same database on
/// PostgreSQL and MariaDB, a second one on SQLite), and inserts the seed data.
///
/// Expects empty databases (a fresh schema / database / file).
pub async fn create_schema<S: Store>(db: &S, audit_db: &S) -> Result<(), TxError> {
    let id = db.dialect().id_column();
    let tables = [
        "CREATE TABLE account (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, \
         balance BIGINT NOT NULL CHECK (balance >= 0))"
            .to_owned(),
        "CREATE TABLE product (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, \
         stock BIGINT NOT NULL CHECK (stock >= 0), price BIGINT NOT NULL)"
            .to_owned(),
        format!(
            "CREATE TABLE orders ({id}, user_id BIGINT NOT NULL, product_id BIGINT NOT NULL, \
             quantity BIGINT NOT NULL, state VARCHAR(20) NOT NULL, note VARCHAR(200), \
             address VARCHAR(200))"
        ),
        format!("CREATE TABLE gift ({id}, order_id BIGINT NOT NULL, product_id BIGINT NOT NULL)"),
        format!(
            "CREATE TABLE shipment ({id}, order_id BIGINT NOT NULL, address VARCHAR(200) NOT NULL)"
        ),
        format!(
            "CREATE TABLE delivery_failure ({id}, order_id BIGINT NOT NULL, \
             reason VARCHAR(200) NOT NULL)"
        ),
        "CREATE TABLE coupon (code VARCHAR(20) PRIMARY KEY, used BIGINT NOT NULL)".to_owned(),
    ];
    for ddl in tables {
        run_ddl(db, ddl).await?;
    }
    let audit_id = audit_db.dialect().id_column();
    run_ddl(
        audit_db,
        format!(
            "CREATE TABLE audit_log ({audit_id}, action VARCHAR(50) NOT NULL, \
             detail VARCHAR(200) NOT NULL)"
        ),
    )
    .await?;

    use ids::*;
    let accounts = [
        (ZHANG_SAN, "zhang san", 5000),
        (ALICE, "alice", 200),
        (BOB, "bob", 0),
        (WANG_WU, "wang wu", 100_000),
        (LI_SI, "li si", 100),
        (ZHAO_LIU, "zhao liu", 100_000),
        (SUN_QI, "sun qi", 300),
        (ZHOU_BA, "zhou ba", 100_000),
    ];
    for (id, name, balance) in accounts {
        db.execute(
            sql("INSERT INTO account (id, name, balance) VALUES (?, ?, ?)")
                .bind(id)
                .bind(name)
                .bind(balance),
        )
        .await?;
    }
    let products = [
        (LAPTOP, "laptop", 10, 5000),
        (MOUSE_GIFT, "mouse (gift)", 0, 0),
        (PHONE, "phone", 100, 1000),
        (TABLET, "tablet", 100, 1000),
        (HEADPHONES, "headphones", 10, 200),
        (KEYBOARD, "keyboard", 10, 100),
        (BOOK, "book", 1000, 10),
        (SNEAKER, "limited sneaker", 10, 100),
    ];
    for (id, name, stock, price) in products {
        db.execute(
            sql("INSERT INTO product (id, name, stock, price) VALUES (?, ?, ?, ?)")
                .bind(id)
                .bind(name)
                .bind(stock)
                .bind(price),
        )
        .await?;
    }
    db.execute(
        sql("INSERT INTO coupon (code, used) VALUES (?, ?)")
            .bind("SPRING10")
            .bind(1),
    )
    .await?;
    Ok(())
}

/// DDL is built from the dialect's fragments, never from input.
async fn run_ddl<S: Store>(db: &S, ddl: String) -> Result<(), TxError> {
    db.execute(sql(ddl)).await.map(drop)
}

/// Read-only queries for the reports.
#[derive(Debug, Clone)]
pub struct Queries<S> {
    db: S,
    audit_db: S,
}

impl<S: Store> Queries<S> {
    /// Queries on the shop's database and its audit database.
    pub fn new(db: S, audit_db: S) -> Self {
        Queries { db, audit_db }
    }

    /// The SQL dialect.
    pub fn dialect(&self) -> Dialect {
        self.db.dialect()
    }

    /// One account.
    pub async fn account(&self, id: i64) -> Result<Account, TxError> {
        let row = self
            .db
            .fetch_all(sql("SELECT id, name, balance FROM account WHERE id = ?").bind(id))
            .await?;
        Ok(Account::from_row(&row[0]))
    }

    /// One product.
    pub async fn product(&self, id: i64) -> Result<Product, TxError> {
        let row = self
            .db
            .fetch_all(sql("SELECT id, name, stock, price FROM product WHERE id = ?").bind(id))
            .await?;
        Ok(Product::from_row(&row[0]))
    }

    /// The orders of a user, oldest first.
    pub async fn orders_of(&self, user_id: i64) -> Result<Vec<Order>, TxError> {
        let rows = self
            .db
            .fetch_all(
                sql(
                    "SELECT id, user_id, product_id, quantity, state, note FROM orders \
                     WHERE user_id = ? ORDER BY id",
                )
                .bind(user_id),
            )
            .await?;
        Ok(rows.iter().map(Order::from_row).collect())
    }

    /// The orders of a product, oldest first.
    pub async fn orders_of_product(&self, product_id: i64) -> Result<Vec<Order>, TxError> {
        let rows = self
            .db
            .fetch_all(
                sql(
                    "SELECT id, user_id, product_id, quantity, state, note FROM orders \
                     WHERE product_id = ? ORDER BY id",
                )
                .bind(product_id),
            )
            .await?;
        Ok(rows.iter().map(Order::from_row).collect())
    }

    /// The audit entries whose detail mentions `user=<user_id> `.
    pub async fn audit_of(&self, user_id: i64) -> Result<Vec<AuditEntry>, TxError> {
        let rows = self
            .audit_db
            .fetch_all(sql("SELECT id, action, detail FROM audit_log ORDER BY id"))
            .await?;
        let needle = format!("user={user_id} ");
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                id: r.int(0),
                action: r.text(1),
                detail: r.text(2),
            })
            .filter(|e| e.detail.starts_with(&needle))
            .collect())
    }

    /// The gifts attached to an order.
    pub async fn gifts_of(&self, order_id: i64) -> Result<Vec<Gift>, TxError> {
        let rows = self
            .db
            .fetch_all(
                sql("SELECT order_id, product_id FROM gift WHERE order_id = ? ORDER BY id")
                    .bind(order_id),
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Gift {
                order_id: r.int(0),
                product_id: r.int(1),
            })
            .collect())
    }

    /// How many shipments exist for the orders of a product.
    pub async fn shipments_of_product(&self, product_id: i64) -> Result<i64, TxError> {
        self.db
            .fetch_int(
                sql(
                    "SELECT COUNT(*) FROM shipment s JOIN orders o ON o.id = s.order_id \
                     WHERE o.product_id = ?",
                )
                .bind(product_id),
            )
            .await
    }

    /// Every recorded delivery failure.
    pub async fn delivery_failures(&self) -> Result<Vec<DeliveryFailure>, TxError> {
        let rows = self
            .db
            .fetch_all(sql(
                "SELECT order_id, reason FROM delivery_failure ORDER BY id",
            ))
            .await?;
        Ok(rows
            .iter()
            .map(|r| DeliveryFailure {
                order_id: r.int(0),
                reason: r.text(1),
            })
            .collect())
    }

    /// Whether a coupon is used (1) or not (0).
    pub async fn coupon_used(&self, code: &str) -> Result<i64, TxError> {
        self.db
            .fetch_int(sql("SELECT used FROM coupon WHERE code = ?").bind(code))
            .await
    }
}
