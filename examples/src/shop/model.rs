//! The rows the demo reads back and prints, and the seed data. The row types derive
//! `sqlx::FromRow`, so `sqlx::query_as` reads them on every backend; products and audit
//! entries are also what the orders API answers with (serde).

use std::fmt;

use serde::{Deserialize, Serialize};

/// `account`: users and bank accounts (balance in whole yuan).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Account {
    /// Id.
    pub id: i64,
    /// Owner.
    pub name: String,
    /// Balance.
    pub balance: i64,
}

/// `product`: goods and their stock.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Id.
    pub id: i64,
    /// What was attempted.
    pub action: String,
    /// Details.
    pub detail: String,
}

/// `gift`: a free product attached to an order.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Gift {
    /// The order.
    pub order_id: i64,
    /// The gift product.
    pub product_id: i64,
}

/// `delivery_failure`: an order the batch could not deliver, and why.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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

/// Ids of the seed data.
pub mod ids {
    /// Zhang San, 5000 yuan: the order placement's buyer.
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

    /// Laptop, 10 in stock at 5000: the order placement.
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

/// The accounts the demo starts with: id, owner, balance.
pub const ACCOUNTS: [(i64, &str, i64); 8] = [
    (ids::ZHANG_SAN, "zhang san", 5000),
    (ids::ALICE, "alice", 200),
    (ids::BOB, "bob", 0),
    (ids::WANG_WU, "wang wu", 100_000),
    (ids::LI_SI, "li si", 100),
    (ids::ZHAO_LIU, "zhao liu", 100_000),
    (ids::SUN_QI, "sun qi", 300),
    (ids::ZHOU_BA, "zhou ba", 100_000),
];

/// The products the demo starts with: id, name, stock, unit price.
pub const PRODUCTS: [(i64, &str, i64, i64); 8] = [
    (ids::LAPTOP, "laptop", 10, 5000),
    (ids::MOUSE_GIFT, "mouse (gift)", 0, 0),
    (ids::PHONE, "phone", 100, 1000),
    (ids::TABLET, "tablet", 100, 1000),
    (ids::HEADPHONES, "headphones", 10, 200),
    (ids::KEYBOARD, "keyboard", 10, 100),
    (ids::BOOK, "book", 1000, 10),
    (ids::SNEAKER, "limited sneaker", 10, 100),
];

/// The one coupon, already used.
pub const USED_COUPON: &str = "SPRING10";

/// What a batch delivery did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchResult {
    /// Orders delivered (committed).
    pub delivered: Vec<i64>,
    /// Orders that failed (rolled back), and why.
    pub failed: Vec<DeliveryFailure>,
}

/// The risk service rejects orders above this amount.
pub const RISK_LIMIT: i64 = 20_000;

/// How many orders the batch delivers, and which of them (0-based) have no address.
pub const BATCH_SIZE: usize = 100;
/// Positions in the batch of the orders without an address (they fail).
pub const BATCH_WITHOUT_ADDRESS: [usize; 3] = [16, 49, 82];
