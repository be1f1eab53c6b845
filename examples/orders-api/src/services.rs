//! The services behind the routes, written as a Spring user writes `@Service` classes: each
//! holds its transaction manager (a [`Store`], i.e. a `TxPool`) and marks its methods
//! `#[transactional]`. Called from a handler under `TxLayer`, a `Required` method joins the
//! request's transaction.

use serde::Serialize;
use tx_examples::shop::{Store, sql};
use tx_sqlx::prelude::*;

use crate::error::ApiError;
use crate::schema::YUAN_PER_POINT;

/// An order as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Placed {
    /// The order.
    #[serde(flatten)]
    pub order: Order,
    /// Loyalty points credited; 0 when the account was at its cap (the order stands).
    pub points: i64,
}

/// An account as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
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

/// A product as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Product {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Units in stock.
    pub stock: i64,
    /// Unit price in yuan.
    pub price: i64,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AuditEntry {
    /// Id.
    pub id: i64,
    /// What was attempted.
    pub action: String,
    /// Details.
    pub detail: String,
}

/// The balances a transfer left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Transferred {
    /// The paying account's new balance.
    pub from_balance: i64,
    /// The receiving account's new balance.
    pub to_balance: i64,
}

/// The audit log: each entry in a transaction of its own (`RequiresNew`), so that it survives
/// the failure of the request that wrote it. On SQLite it lives in a second database with its
/// own `TxPool` (SQLite has one writer per database).
#[derive(Debug, Clone)]
pub struct AuditService<S> {
    db: S,
}

impl<S: Store> AuditService<S> {
    /// The service on `db` (the audit database).
    pub fn new(db: S) -> Self {
        AuditService { db }
    }

    /// Writes one entry and commits it at once, whatever the caller's transaction does.
    #[transactional(manager = self.db, propagation = RequiresNew)]
    pub async fn record(&self, action: &str, detail: String) -> Result<(), ApiError> {
        self.db
            .execute(
                sql("INSERT INTO audit_log (action, detail) VALUES (?, ?)")
                    .bind(action)
                    .bind(detail),
            )
            .await?;
        Ok(())
    }

    /// Every entry, oldest first.
    pub async fn entries(&self) -> Result<Vec<AuditEntry>, ApiError> {
        let rows = self
            .db
            .fetch_all(sql("SELECT id, action, detail FROM audit_log ORDER BY id"))
            .await?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                id: r.int(0),
                action: r.text(1),
                detail: r.text(2),
            })
            .collect())
    }
}

/// Loyalty points, credited in a `Nested` scope: when the account is at its cap, the
/// savepoint is rolled back (the ledger row with it) and the order goes on without points.
#[derive(Debug, Clone)]
pub struct PointsService<S> {
    db: S,
}

impl<S: Store> PointsService<S> {
    /// The service on `db`.
    pub fn new(db: S) -> Self {
        PointsService { db }
    }

    /// Credits `points` for `order` to `account`.
    #[transactional(manager = self.db, propagation = Nested)]
    pub async fn credit(&self, account: i64, order: i64, points: i64) -> Result<(), ApiError> {
        // Written first, undone by ROLLBACK TO SAVEPOINT when the cap is reached.
        self.db
            .execute(
                sql("INSERT INTO points_ledger (account_id, order_id, points) VALUES (?, ?, ?)")
                    .bind(account)
                    .bind(order)
                    .bind(points),
            )
            .await?;
        let changed = self
            .db
            .execute(
                sql("UPDATE loyalty SET points = points + ? WHERE account_id = ? AND points + ? <= ?")
                    .bind(points)
                    .bind(account)
                    .bind(points)
                    .bind(crate::schema::POINTS_CAP),
            )
            .await?;
        if changed == 0 {
            return Err(ApiError::PointsCapReached(account));
        }
        Ok(())
    }
}

/// Orders: take the stock, create the order, charge the buyer (all or nothing), audit the
/// attempt (kept whatever happens), credit points (optional).
#[derive(Debug, Clone)]
pub struct OrderService<S> {
    db: S,
    audit: AuditService<S>,
    points: PointsService<S>,
}

impl<S: Store> OrderService<S> {
    /// The service on `db`, auditing into `audit`.
    pub fn new(db: S, audit: AuditService<S>) -> Self {
        OrderService {
            points: PointsService::new(db.clone()),
            db,
            audit,
        }
    }

    /// Places an order. `Required`: under `TxLayer` it joins the request's transaction, and
    /// its error (answered 4xx) rolls that back.
    #[transactional(manager = self.db)]
    pub async fn place(
        &self,
        account: i64,
        product: i64,
        quantity: i64,
    ) -> Result<Placed, ApiError> {
        if quantity <= 0 {
            return Err(ApiError::Invalid("quantity must be positive"));
        }
        let detail = format!("account={account} product={product} quantity={quantity}");
        if let Err(e) = self.audit.record("ORDER_ATTEMPT", detail).await {
            // An audit failure must not fail the order.
            tracing::warn!("audit failed: {e}");
        }
        let price = self.take_stock(product, quantity).await?;
        let total = price * quantity;
        let id = self
            .db
            .fetch_int(
                sql(
                    "INSERT INTO orders (account_id, product_id, quantity, total) \
                     VALUES (?, ?, ?, ?) RETURNING id",
                )
                .bind(account)
                .bind(product)
                .bind(quantity)
                .bind(total),
            )
            .await?;
        self.debit(account, total).await?;
        let points = match self
            .points
            .credit(account, id, total / YUAN_PER_POINT)
            .await
        {
            Ok(()) => total / YUAN_PER_POINT,
            Err(ApiError::PointsCapReached(_)) => 0,
            Err(e) => return Err(e),
        };
        let order = Order {
            id,
            account,
            product,
            quantity,
            total,
        };
        Ok(Placed { order, points })
    }

    /// One order.
    #[transactional(manager = self.db, read_only)]
    pub async fn get(&self, id: i64) -> Result<Order, ApiError> {
        let row = self
            .db
            .fetch_optional(
                sql("SELECT id, account_id, product_id, quantity, total FROM orders WHERE id = ?")
                    .bind(id),
            )
            .await?
            .ok_or(ApiError::NotFound { what: "order", id })?;
        Ok(Order {
            id: row.int(0),
            account: row.int(1),
            product: row.int(2),
            quantity: row.int(3),
            total: row.int(4),
        })
    }

    /// One account, with its points.
    #[transactional(manager = self.db, read_only)]
    pub async fn account(&self, id: i64) -> Result<Account, ApiError> {
        let row = self
            .db
            .fetch_optional(
                sql("SELECT a.id, a.name, a.balance, l.points FROM account a \
                     JOIN loyalty l ON l.account_id = a.id WHERE a.id = ?")
                .bind(id),
            )
            .await?
            .ok_or(ApiError::NotFound {
                what: "account",
                id,
            })?;
        Ok(Account {
            id: row.int(0),
            name: row.text(1),
            balance: row.int(2),
            points: row.int(3),
        })
    }

    /// One product.
    #[transactional(manager = self.db, read_only)]
    pub async fn product(&self, id: i64) -> Result<Product, ApiError> {
        let row = self
            .db
            .fetch_optional(sql("SELECT id, name, stock, price FROM product WHERE id = ?").bind(id))
            .await?
            .ok_or(ApiError::NotFound {
                what: "product",
                id,
            })?;
        Ok(Product {
            id: row.int(0),
            name: row.text(1),
            stock: row.int(2),
            price: row.int(3),
        })
    }

    /// Takes `quantity` units from stock; returns the unit price.
    async fn take_stock(&self, product: i64, quantity: i64) -> Result<i64, ApiError> {
        let changed = self
            .db
            .execute(
                sql("UPDATE product SET stock = stock - ? WHERE id = ? AND stock >= ?")
                    .bind(quantity)
                    .bind(product)
                    .bind(quantity),
            )
            .await?;
        let price = self
            .db
            .fetch_optional(sql("SELECT price FROM product WHERE id = ?").bind(product))
            .await?
            .ok_or(ApiError::NotFound {
                what: "product",
                id: product,
            })?;
        if changed == 0 {
            return Err(ApiError::OutOfStock {
                product,
                requested: quantity,
            });
        }
        Ok(price.int(0))
    }

    /// Charges `amount` to `account`.
    async fn debit(&self, account: i64, amount: i64) -> Result<(), ApiError> {
        let changed = self
            .db
            .execute(
                sql("UPDATE account SET balance = balance - ? WHERE id = ? AND balance >= ?")
                    .bind(amount)
                    .bind(account)
                    .bind(amount),
            )
            .await?;
        if changed > 0 {
            return Ok(());
        }
        let exists = self
            .db
            .fetch_int(sql("SELECT COUNT(*) FROM account WHERE id = ?").bind(account))
            .await?;
        Err(if exists > 0 {
            ApiError::InsufficientBalance {
                account,
                needed: amount,
            }
        } else {
            ApiError::NotFound {
                what: "account",
                id: account,
            }
        })
    }
}

/// Transfers between accounts: a read-modify-write of two balances, made safe by SERIALIZABLE
/// isolation and re-run when the database aborts it (PostgreSQL 40001, MariaDB deadlock).
///
/// Its route is outside `TxLayer`: a retry re-runs the whole transaction, which only the
/// scope that began it can do (the request's body is consumed by then).
#[derive(Debug, Clone)]
pub struct TransferService<S> {
    db: S,
}

impl<S: Store> TransferService<S> {
    /// The service on `db`.
    pub fn new(db: S) -> Self {
        TransferService { db }
    }

    /// Moves `amount` from one account to another.
    #[transactional(manager = self.db, isolation = Serializable, retry = 10)]
    pub async fn transfer(&self, from: i64, to: i64, amount: i64) -> Result<Transferred, ApiError> {
        if amount <= 0 {
            return Err(ApiError::Invalid("amount must be positive"));
        }
        if from == to {
            return Err(ApiError::Invalid("cannot transfer to the same account"));
        }
        let from_balance = self.balance(from).await?;
        let to_balance = self.balance(to).await?;
        if from_balance < amount {
            return Err(ApiError::InsufficientBalance {
                account: from,
                needed: amount,
            });
        }
        let (from_balance, to_balance) = (from_balance - amount, to_balance + amount);
        for (id, balance) in [(from, from_balance), (to, to_balance)] {
            self.db
                .execute(
                    sql("UPDATE account SET balance = ? WHERE id = ?")
                        .bind(balance)
                        .bind(id),
                )
                .await?;
        }
        Ok(Transferred {
            from_balance,
            to_balance,
        })
    }

    async fn balance(&self, id: i64) -> Result<i64, ApiError> {
        let row = self
            .db
            .fetch_optional(sql("SELECT balance FROM account WHERE id = ?").bind(id))
            .await?
            .ok_or(ApiError::NotFound {
                what: "account",
                id,
            })?;
        Ok(row.int(0))
    }
}
