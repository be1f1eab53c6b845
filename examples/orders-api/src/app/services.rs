// The services behind the routes, written as a Spring user writes `@Service` classes: each
// holds its transaction manager (`db`, a `TxPool`) and marks its methods `#[transactional]`;
// their statements are plain sqlx on `&self.db`, which joins the transaction the method runs
// in. Called from a handler under `TxLayer`, a `Required` method joins the request's
// transaction.
//
// Compiled once per backend (`sqlite.rs`, `postgres.rs`, `mysql.rs`), where `Db` is the pool
// type and `sql(..)` adapts the `$1` placeholders to the backend.

use tx_examples::shop::ShopError;
use tx_sqlx::prelude::*;

use super::store::{self, AuditService};
use crate::error::ApiError;
use crate::model::{Account, Order, Placed, Product, Transferred};
use crate::schema::{POINTS_CAP, YUAN_PER_POINT};

/// Loyalty points, credited in a `Nested` scope: when the account is at its cap, the
/// savepoint is rolled back (the ledger row with it) and the order goes on without points.
#[derive(Debug, Clone)]
pub struct PointsService {
    db: Db,
}

impl PointsService {
    /// The service on `db`.
    pub fn new(db: Db) -> Self {
        PointsService { db }
    }

    /// Credits `points` for `order` to `account`.
    #[transactional(manager = self.db, propagation = Nested)]
    pub async fn credit(&self, account: i64, order: i64, points: i64) -> Result<(), ApiError> {
        // Written first, undone by ROLLBACK TO SAVEPOINT when the cap is reached.
        sqlx::query(sql(
            "INSERT INTO points_ledger (account_id, order_id, points) VALUES ($1, $2, $3)",
        ))
        .bind(account)
        .bind(order)
        .bind(points)
        .execute(&self.db)
        .await?;
        let changed = sqlx::query(sql(
            "UPDATE loyalty SET points = points + $1 WHERE account_id = $2 AND points + $3 <= $4",
        ))
        .bind(points)
        .bind(account)
        .bind(points)
        .bind(POINTS_CAP)
        .execute(&self.db)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(ApiError::PointsCapReached(account));
        }
        Ok(())
    }
}

/// Orders: take the stock, create the order, charge the buyer (all or nothing), audit the
/// attempt (kept whatever happens), credit points (optional).
#[derive(Debug, Clone)]
pub struct OrderService {
    db: Db,
    audit: AuditService,
    points: PointsService,
}

impl OrderService {
    /// The service on `db`, auditing into `audit`.
    pub fn new(db: Db, audit: AuditService) -> Self {
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
        self.audit.order_attempt(detail).await;
        let price = store::take_stock::<ApiError>(&self.db, product, quantity).await?;
        let total = price * quantity;
        let id: i64 = sqlx::query_scalar(sql(
            "INSERT INTO orders (account_id, product_id, quantity, total) \
             VALUES ($1, $2, $3, $4) RETURNING id",
        ))
        .bind(account)
        .bind(product)
        .bind(quantity)
        .bind(total)
        .fetch_one(&self.db)
        .await?;
        store::debit::<ApiError>(&self.db, account, total).await?;
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
        let order = sqlx::query_as(sql(
            "SELECT id, account_id AS account, product_id AS product, quantity, total \
             FROM orders WHERE id = $1",
        ))
        .bind(id)
        .fetch_optional(&self.db)
        .await?;
        order.ok_or(ApiError::OrderNotFound(id))
    }

    /// One account, with its points.
    #[transactional(manager = self.db, read_only)]
    pub async fn account(&self, id: i64) -> Result<Account, ApiError> {
        let account = sqlx::query_as(sql(
            "SELECT a.id, a.name, a.balance, l.points FROM account a \
             JOIN loyalty l ON l.account_id = a.id WHERE a.id = $1",
        ))
        .bind(id)
        .fetch_optional(&self.db)
        .await?;
        account.ok_or(ShopError::AccountNotFound(id).into())
    }

    /// One product.
    #[transactional(manager = self.db, read_only)]
    pub async fn product(&self, id: i64) -> Result<Product, ApiError> {
        store::product(&self.db, id).await
    }
}

/// Transfers between accounts: a read-modify-write of two balances, made safe by SERIALIZABLE
/// isolation and re-run when the database aborts it (PostgreSQL 40001, MariaDB deadlock).
///
/// Its route is outside `TxLayer`: a retry re-runs the whole transaction, which only the
/// scope that began it can do (the request's body is consumed by then).
#[derive(Debug, Clone)]
pub struct TransferService {
    db: Db,
}

impl TransferService {
    /// The service on `db`.
    pub fn new(db: Db) -> Self {
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
            return Err(ShopError::InsufficientBalance {
                account: from,
                needed: amount,
            }
            .into());
        }
        let (from_balance, to_balance) = (from_balance - amount, to_balance + amount);
        for (id, balance) in [(from, from_balance), (to, to_balance)] {
            sqlx::query(sql("UPDATE account SET balance = $1 WHERE id = $2"))
                .bind(balance)
                .bind(id)
                .execute(&self.db)
                .await?;
        }
        Ok(Transferred {
            from_balance,
            to_balance,
        })
    }

    async fn balance(&self, id: i64) -> Result<i64, ApiError> {
        let balance = sqlx::query_scalar(sql("SELECT balance FROM account WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await?
            .ok_or(ShopError::AccountNotFound(id))?;
        Ok(balance)
    }
}
