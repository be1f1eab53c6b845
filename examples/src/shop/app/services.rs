// The shop's services, written the way a Spring user writes `@Service` classes: structs
// holding their transaction manager (`db`, a `TxPool`) and their collaborators, with
// `#[transactional(manager = self.db, ...)]` methods whose statements are plain sqlx on
// `&self.db`, which joins the transaction the method runs in.
//
// This file is compiled once per backend (see `sqlite.rs`, `postgres.rs`, `mysql.rs`): there
// `Db` is `SqliteTxPool`, `PgTxPool` or `MySqlTxPool`, and `sql(..)` returns the statement as
// written (`$1` placeholders, which PostgreSQL and SQLite take) or, on MariaDB/MySQL, with `?`
// placeholders. An application on one database writes the string itself.
//
// Private helpers such as `OrderService::take_stock` carry no attribute: they run their
// statements on `&self.db`, which joins whatever transaction the calling method began.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Barrier;
use tx_sqlx::prelude::*;
use tx_sqlx::{after_commit, register_synchronization};

use super::store::{self, AuditService};
use crate::shop::collaborators::{
    ADDRESS, MessageQueue, PhaseLogger, RiskClient, RiskVerdict, Timeline,
};
use crate::shop::error::ShopError;
use crate::shop::model::{BatchResult, DeliveryFailure};

/// Accounts: transfers, and the debit every payment goes through.
#[derive(Debug, Clone)]
pub struct AccountService {
    db: Db,
}

impl AccountService {
    /// The service on `db`.
    pub fn new(db: Db) -> Self {
        AccountService { db }
    }

    /// Moves `amount` from one account to another: both updates commit together or neither
    /// does, so money is never lost on the way.
    #[transactional(manager = self.db)]
    pub async fn transfer(&self, from: i64, to: i64, amount: i64) -> Result<(), ShopError> {
        self.debit(from, amount).await?;
        self.credit(to, amount).await?;
        Ok(())
    }

    /// Takes `amount` from an account. `Mandatory`: it only makes sense inside the caller's
    /// transaction (a transfer, a payment).
    #[transactional(manager = self.db, propagation = Mandatory)]
    pub async fn debit(&self, account: i64, amount: i64) -> Result<(), ShopError> {
        store::debit(&self.db, account, amount).await
    }

    /// Adds `amount` to an account, inside the caller's transaction.
    #[transactional(manager = self.db, propagation = Mandatory)]
    pub async fn credit(&self, account: i64, amount: i64) -> Result<(), ShopError> {
        store::credit(&self.db, account, amount).await
    }
}

/// Gifts: optional extras attached in a `Nested` scope, so that a failing gift rolls back to
/// its savepoint and the order goes on.
#[derive(Debug, Clone)]
pub struct GiftService {
    db: Db,
}

impl GiftService {
    /// The service on `db`.
    pub fn new(db: Db) -> Self {
        GiftService { db }
    }

    /// Attaches one unit of `gift` to an order and takes it from stock.
    #[transactional(manager = self.db, propagation = Nested)]
    pub async fn add_gift(&self, order_id: i64, gift: i64) -> Result<(), ShopError> {
        // Written first, undone by ROLLBACK TO SAVEPOINT when the stock is missing.
        sqlx::query(sql(
            "INSERT INTO gift (order_id, product_id) VALUES ($1, $2)",
        ))
        .bind(order_id)
        .bind(gift)
        .execute(&self.db)
        .await?;
        let changed = sqlx::query(sql(
            "UPDATE product SET stock = stock - 1 WHERE id = $1 AND stock >= 1",
        ))
        .bind(gift)
        .execute(&self.db)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(ShopError::GiftOutOfStock(gift));
        }
        Ok(())
    }
}

/// Coupons.
#[derive(Debug, Clone)]
pub struct CouponService {
    db: Db,
}

impl CouponService {
    /// The service on `db`.
    pub fn new(db: Db) -> Self {
        CouponService { db }
    }

    /// Marks a coupon used; fails if it is unknown or already used. `Required`: inside a
    /// checkout it joins the checkout's transaction, so its failure dooms that transaction.
    #[transactional(manager = self.db)]
    pub async fn redeem(&self, code: &str) -> Result<(), ShopError> {
        let changed = sqlx::query(sql(
            "UPDATE coupon SET used = 1 WHERE code = $1 AND used = 0",
        ))
        .bind(code)
        .execute(&self.db)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(ShopError::CouponInvalid(code.to_owned()));
        }
        Ok(())
    }
}

/// Orders: the placement (stock, order, payment) and its variations.
#[derive(Debug, Clone)]
pub struct OrderService {
    db: Db,
    accounts: AccountService,
    audit: AuditService,
    gifts: GiftService,
    coupons: CouponService,
    risk: RiskClient,
    mq: MessageQueue,
    timeline: Timeline,
}

/// The collaborators of an [`OrderService`].
#[derive(Debug, Clone)]
pub struct OrderDeps {
    /// Payments.
    pub accounts: AccountService,
    /// The audit log.
    pub audit: AuditService,
    /// Gifts.
    pub gifts: GiftService,
    /// Coupons.
    pub coupons: CouponService,
    /// The risk service.
    pub risk: RiskClient,
    /// The message queue.
    pub mq: MessageQueue,
    /// Where hooks log their phases.
    pub timeline: Timeline,
}

impl OrderService {
    /// The service on `db`, with its collaborators.
    pub fn new(db: Db, deps: OrderDeps) -> Self {
        OrderService {
            db,
            accounts: deps.accounts,
            audit: deps.audit,
            gifts: deps.gifts,
            coupons: deps.coupons,
            risk: deps.risk,
            mq: deps.mq,
            timeline: deps.timeline,
        }
    }

    /// Takes the stock, creates the order, charges the buyer: all or nothing. Every attempt
    /// is audited first, in its own transaction.
    #[transactional(manager = self.db)]
    pub async fn place_order(&self, user: i64, product: i64, qty: i64) -> Result<i64, ShopError> {
        let detail = format!("user={user} product={product} qty={qty}");
        self.audit.order_attempt(detail).await;
        let price = self.take_stock(product, qty).await?;
        let order_id = self
            .insert_order(user, product, qty, "PAID", Some(ADDRESS))
            .await?;
        self.accounts.debit(user, price * qty).await?;
        Ok(order_id)
    }

    /// An order with a free gift. The gift is added in a `Nested` scope: when it fails, only
    /// its savepoint is rolled back and the order commits without it.
    ///
    /// Returns the order id and why the gift was dropped, if it was.
    #[transactional(manager = self.db)]
    pub async fn place_order_with_gift(
        &self,
        user: i64,
        product: i64,
        qty: i64,
        gift: i64,
    ) -> Result<(i64, Option<String>), ShopError> {
        let order_id = self.place_order(user, product, qty).await?;
        match self.gifts.add_gift(order_id, gift).await {
            Ok(()) => Ok((order_id, None)),
            Err(e) => {
                let why = e.to_string();
                self.set_note(order_id, &format!("no gift: {why}")).await?;
                Ok((order_id, Some(why)))
            }
        }
    }

    /// Creates the order, then asks the risk service. A rejection is a business outcome: the
    /// order is kept in state `WAIT_AUDIT` for a human, so `ShopError::RiskRejected` commits
    /// (`no_rollback_for`). The risk service being down is a system failure: everything
    /// rolls back.
    #[transactional(manager = self.db, no_rollback_for = ShopError::RiskRejected { .. })]
    pub async fn place_order_with_risk_check(
        &self,
        user: i64,
        product: i64,
        qty: i64,
    ) -> Result<i64, ShopError> {
        let price = self.take_stock(product, qty).await?;
        let order_id = self
            .insert_order(user, product, qty, "CREATED", Some(ADDRESS))
            .await?;
        match self.risk.check(price * qty).await? {
            RiskVerdict::Pass => Ok(order_id),
            RiskVerdict::Reject(reason) => {
                sqlx::query(sql("UPDATE orders SET state = $1, note = $2 WHERE id = $3"))
                    .bind("WAIT_AUDIT")
                    .bind(format!("risk check failed: {reason}"))
                    .bind(order_id)
                    .execute(&self.db)
                    .await?;
                Err(ShopError::RiskRejected { order_id, reason })
            }
        }
    }

    /// The "cancel the unpaid order in 30 minutes" message goes to the MQ only after the
    /// order has committed (`after_commit`), never for an order that rolled back. A
    /// [`PhaseLogger`] shows the order of the synchronization phases.
    #[transactional(manager = self.db)]
    pub async fn place_order_with_mq(
        &self,
        user: i64,
        product: i64,
        qty: i64,
    ) -> Result<i64, ShopError> {
        register_synchronization(PhaseLogger(self.timeline.clone()))?;
        let price = self.take_stock(product, qty).await?;
        let order_id = self
            .insert_order(user, product, qty, "PAID", Some(ADDRESS))
            .await?;
        let mq = self.mq.clone();
        after_commit(async move { mq.send("order.cancel.delay", format!("order=#{order_id}")) })?;
        self.timeline.push(format!(
            "body: order #{order_id} inserted, MQ send registered for after commit"
        ));
        self.accounts.debit(user, price * qty).await?;
        Ok(order_id)
    }

    /// The rollback-only trap: the coupon service joins this transaction (`Required`), fails,
    /// and so marks the whole transaction rollback-only. Catching its error and going on does
    /// not save the order: the commit turns into a rollback and the caller gets
    /// `TxError::UnexpectedRollback` (use `Nested` for an optional step, as the gift does).
    #[transactional(manager = self.db)]
    pub async fn checkout_ignoring_coupon_failure(
        &self,
        user: i64,
        product: i64,
        qty: i64,
        coupon: &str,
    ) -> Result<i64, ShopError> {
        let order_id = self.place_order(user, product, qty).await?;
        if let Err(e) = self.coupons.redeem(coupon).await {
            tracing::info!("coupon ignored: {e}"); // swallowed, but the transaction is doomed
        }
        Ok(order_id)
    }

    /// The programmatic pattern with [`TransactionTemplate`]: on a failed coupon, mark the
    /// transaction rollback-only and return a friendly `Ok(None)`; the owner of the
    /// transaction gets it rolled back quietly.
    pub async fn checkout_or_roll_back(
        &self,
        user: i64,
        product: i64,
        qty: i64,
        coupon: &str,
    ) -> Result<Option<i64>, ShopError> {
        TransactionTemplate::new(self.db.clone())
            .name("shop::checkout_or_roll_back")
            .execute(|status| async move {
                let order_id = self.place_order(user, product, qty).await?;
                if self.coupons.redeem(coupon).await.is_err() {
                    status.set_rollback_only();
                    return Ok(None);
                }
                Ok(Some(order_id))
            })
            .await
    }

    /// Creates `count` paid orders of one unit of `product` for `user`, in one transaction;
    /// the orders at the (0-based) positions in `without_address` get no address.
    #[transactional(manager = self.db)]
    pub async fn create_paid_orders(
        &self,
        user: i64,
        product: i64,
        count: usize,
        without_address: &[usize],
    ) -> Result<Vec<i64>, ShopError> {
        let mut ids = Vec::with_capacity(count);
        for i in 0..count {
            let address = (!without_address.contains(&i)).then_some(ADDRESS);
            ids.push(self.insert_order(user, product, 1, "PAID", address).await?);
        }
        Ok(ids)
    }

    /// Takes `qty` units of `product` from stock; returns the unit price. Joins the caller's
    /// transaction through `&self.db`.
    async fn take_stock(&self, product: i64, qty: i64) -> Result<i64, ShopError> {
        store::take_stock(&self.db, product, qty).await
    }

    async fn insert_order(
        &self,
        user: i64,
        product: i64,
        qty: i64,
        state: &str,
        address: Option<&str>,
    ) -> Result<i64, ShopError> {
        let id = sqlx::query_scalar(sql(
            "INSERT INTO orders (user_id, product_id, quantity, state, address) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        ))
        .bind(user)
        .bind(product)
        .bind(qty)
        .bind(state)
        .bind(address)
        .fetch_one(&self.db)
        .await?;
        Ok(id)
    }

    async fn set_note(&self, order_id: i64, note: &str) -> Result<(), ShopError> {
        sqlx::query(sql("UPDATE orders SET note = $1 WHERE id = $2"))
            .bind(note)
            .bind(order_id)
            .execute(&self.db)
            .await?;
        Ok(())
    }
}

/// Delivery: a batch where each order gets its own transaction.
#[derive(Debug, Clone)]
pub struct DeliveryService {
    db: Db,
}

impl DeliveryService {
    /// The service on `db`.
    pub fn new(db: Db) -> Self {
        DeliveryService { db }
    }

    /// Delivers every order, each in its own transaction: a failure rolls back that order
    /// only and is recorded; the others go on. Not transactional itself. (No proxy here, so
    /// calling `self.deliver` from the same struct does start a transaction, unlike
    /// Spring's self-invocation.)
    pub async fn deliver_all(&self, order_ids: &[i64]) -> Result<BatchResult, ShopError> {
        let mut result = BatchResult::default();
        for &order_id in order_ids {
            match self.deliver(order_id).await {
                Ok(()) => result.delivered.push(order_id),
                Err(e) => {
                    let reason = e.to_string();
                    self.record_failure(order_id, &reason).await?;
                    result.failed.push(DeliveryFailure { order_id, reason });
                }
            }
        }
        Ok(result)
    }

    /// Ships one order: marks it `DELIVERED` and creates its shipment. The batch settings:
    /// always a new transaction, READ COMMITTED, 10 s timeout.
    #[transactional(
        manager = self.db,
        propagation = RequiresNew,
        isolation = ReadCommitted,
        timeout = 10
    )]
    pub async fn deliver(&self, order_id: i64) -> Result<(), ShopError> {
        sqlx::query(sql(
            "UPDATE orders SET state = $1 WHERE id = $2 AND state = $3",
        ))
        .bind("DELIVERED")
        .bind(order_id)
        .bind("PAID")
        .execute(&self.db)
        .await?;
        let address: Option<String> =
            sqlx::query_scalar(sql("SELECT address FROM orders WHERE id = $1"))
                .bind(order_id)
                .fetch_one(&self.db)
                .await?;
        let Some(address) = address else {
            // The state change above is rolled back with this transaction.
            return Err(ShopError::MissingAddress(order_id));
        };
        sqlx::query(sql(
            "INSERT INTO shipment (order_id, address) VALUES ($1, $2)",
        ))
        .bind(order_id)
        .bind(address)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Records a failed delivery, in a transaction of its own.
    #[transactional(manager = self.db)]
    pub async fn record_failure(&self, order_id: i64, reason: &str) -> Result<(), ShopError> {
        sqlx::query(sql(
            "INSERT INTO delivery_failure (order_id, reason) VALUES ($1, $2)",
        ))
        .bind(order_id)
        .bind(reason)
        .execute(&self.db)
        .await?;
        Ok(())
    }
}

/// Inventory under contention: a read-modify-write of the stock, made safe by SERIALIZABLE
/// isolation and retried when the database aborts it with a serialization failure.
#[derive(Debug, Clone)]
pub struct InventoryService {
    db: Db,
}

impl InventoryService {
    /// The service on `db`.
    pub fn new(db: Db) -> Self {
        InventoryService { db }
    }

    /// Buys `qty` units by reading the stock and writing back `stock - qty` (a lost update
    /// under weaker isolation). Under SERIALIZABLE one of two concurrent buyers is aborted
    /// (PostgreSQL 40001, MariaDB deadlock 1213) and `retry = 5` runs the whole call again.
    ///
    /// `attempts` counts the runs of this call; on its first run it waits at `both_read`
    /// until the other buyer has read the stock too, to make the conflict certain.
    #[transactional(manager = self.db, isolation = Serializable, retry = 5)]
    pub async fn buy_limited(
        &self,
        product: i64,
        qty: i64,
        both_read: &Barrier,
        attempts: &AtomicU32,
    ) -> Result<i64, ShopError> {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        let stock: i64 = sqlx::query_scalar(sql("SELECT stock FROM product WHERE id = $1"))
            .bind(product)
            .fetch_one(&self.db)
            .await?;
        if attempt == 1 {
            both_read.wait().await;
        }
        if stock < qty {
            return Err(ShopError::OutOfStock {
                product,
                requested: qty,
            });
        }
        sqlx::query(sql("UPDATE product SET stock = $1 WHERE id = $2"))
            .bind(stock - qty)
            .bind(product)
            .execute(&self.db)
            .await?;
        Ok(stock - qty)
    }
}
