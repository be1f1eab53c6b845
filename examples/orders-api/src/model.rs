//! What the API returns, the same for every backend. Products and audit entries are the
//! shop's rows ([`tx_examples::shop::Product`], [`tx_examples::shop::AuditEntry`]).

use serde::{Deserialize, Serialize};
pub use tx_examples::shop::{AuditEntry, Product};

/// An order as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Order {
    /// Id.
    pub id: i64,
    /// The buyer's account.
    pub account: i64,
    /// The product.
    pub product: i64,
    /// Units bought.
    pub quantity: i64,
    /// What the buyer paid.
    pub total: i64,
}

/// What placing an order did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    /// The order.
    #[serde(flatten)]
    pub order: Order,
    /// Loyalty points credited; 0 when the account was at its cap (the order stands).
    pub points: i64,
}

/// An account as the API returns it, with its loyalty points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Account {
    /// Id.
    pub id: i64,
    /// Owner.
    pub name: String,
    /// Balance in yuan.
    pub balance: i64,
    /// Loyalty points.
    pub points: i64,
}

/// The balances a transfer left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transferred {
    /// The paying account's new balance.
    pub from_balance: i64,
    /// The receiving account's new balance.
    pub to_balance: i64,
}

/// `POST /orders`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlaceOrder {
    /// The buyer's account.
    pub account: i64,
    /// The product.
    pub product: i64,
    /// Units.
    pub quantity: i64,
}

/// `POST /transfers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transfer {
    /// The paying account.
    pub from: i64,
    /// The receiving account.
    pub to: i64,
    /// Yuan.
    pub amount: i64,
}
