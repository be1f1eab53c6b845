//! The shop's services, written the way a Spring user writes `@Service` classes: structs
//! holding their transaction manager (a [`Store`], i.e. a `TxPool`) and collaborators, with
//! `#[transactional(manager = self.db, ...)]` methods.
//!
//! Private helpers such as `OrderService::take_stock` carry no attribute: they run their
//! statements on `&self.db`, which joins whatever transaction the calling method began.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Barrier;
use tx_sqlx::prelude::*;
use tx_sqlx::{BoxError, TransactionSynchronization, after_commit, register_synchronization};

use super::error::ShopError;
use super::model::DeliveryFailure;
use super::store::{Store, sql};

/// Where every order ships to, unless a test leaves it out.
pub const ADDRESS: &str = "1 Nanjing Road, Shanghai";

/// An ordered log of what happened around a transaction (hook phases, messages sent), shared
/// by the services and read by the demo.
#[derive(Debug, Clone, Default)]
pub struct Timeline(Arc<Mutex<Vec<String>>>);

impl Timeline {
    /// Appends an entry.
    pub fn push(&self, entry: impl Into<String>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry.into());
    }

    /// Takes every entry so far, leaving the timeline empty.
    #[must_use]
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A stand-in for RabbitMQ: records the messages it "sends" (and logs them in the timeline).
#[derive(Debug, Clone, Default)]
pub struct MessageQueue {
    sent: Arc<Mutex<Vec<String>>>,
    timeline: Timeline,
}

impl MessageQueue {
    /// A queue that also logs into `timeline`.
    #[must_use]
    pub fn new(timeline: Timeline) -> Self {
        MessageQueue {
            sent: Arc::default(),
            timeline,
        }
    }

    /// Sends a message: once sent, it cannot be taken back.
    pub fn send(&self, topic: &str, payload: impl std::fmt::Display) {
        let message = format!("{topic} {payload}");
        self.timeline.push(format!("MQ sent: {message}"));
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
    }

    /// Every message sent so far.
    #[must_use]
    pub fn sent(&self) -> Vec<String> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A [`TransactionSynchronization`] that logs each phase it sees (seed 003's four hooks).
#[derive(Debug, Clone)]
pub struct PhaseLogger(pub Timeline);

impl TransactionSynchronization for PhaseLogger {
    async fn before_commit(&self, read_only: bool) -> Result<(), BoxError> {
        self.0.push(format!("before_commit(read_only={read_only})"));
        Ok(())
    }

    async fn before_completion(&self) {
        self.0.push("before_completion");
    }

    async fn after_commit(&self) {
        self.0.push("after_commit");
    }

    async fn after_completion(&self, completion: Completion) {
        self.0.push(format!("after_completion({completion:?})"));
    }
}

/// Accounts: transfers (seed 000), and the debit every payment goes through.
#[derive(Debug, Clone)]
pub struct AccountService<S> {
    db: S,
}

impl<S: Store> AccountService<S> {
    /// The service on `db`.
    pub fn new(db: S) -> Self {
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
        let changed = self
            .db
            .execute(
                sql("UPDATE account SET balance = balance - ? WHERE id = ? AND balance >= ?")
                    .bind(amount)
                    .bind(account)
                    .bind(amount),
            )
            .await?;
        if changed == 0 {
            return Err(if self.exists(account).await? {
                ShopError::InsufficientBalance {
                    account,
                    needed: amount,
                }
            } else {
                ShopError::AccountNotFound(account)
            });
        }
        Ok(())
    }

    /// Adds `amount` to an account, inside the caller's transaction.
    #[transactional(manager = self.db, propagation = Mandatory)]
    pub async fn credit(&self, account: i64, amount: i64) -> Result<(), ShopError> {
        let changed = self
            .db
            .execute(
                sql("UPDATE account SET balance = balance + ? WHERE id = ?")
                    .bind(amount)
                    .bind(account),
            )
            .await?;
        if changed == 0 {
            return Err(ShopError::AccountNotFound(account));
        }
        Ok(())
    }

    async fn exists(&self, account: i64) -> Result<bool, ShopError> {
        let n = self
            .db
            .fetch_int(sql("SELECT COUNT(*) FROM account WHERE id = ?").bind(account))
            .await?;
        Ok(n > 0)
    }
}

/// The audit log (seed 002): each entry in its own transaction, so it survives the failure of
/// the business transaction that wrote it. On SQLite it lives in a second database with its
/// own `TxPool` (a second transaction manager).
#[derive(Debug, Clone)]
pub struct AuditService<S> {
    db: S,
}

impl<S: Store> AuditService<S> {
    /// The service on `db` (the audit database).
    pub fn new(db: S) -> Self {
        AuditService { db }
    }

    /// Writes one entry and commits it at once, whatever the caller's transaction does later.
    #[transactional(manager = self.db, propagation = RequiresNew)]
    pub async fn record(&self, action: &str, detail: String) -> Result<(), ShopError> {
        self.db
            .execute(
                sql("INSERT INTO audit_log (action, detail) VALUES (?, ?)")
                    .bind(action)
                    .bind(detail),
            )
            .await?;
        Ok(())
    }
}

/// Gifts (seed 003): optional extras attached in a `Nested` scope, so that a failing gift
/// rolls back to its savepoint and the order goes on.
#[derive(Debug, Clone)]
pub struct GiftService<S> {
    db: S,
}

impl<S: Store> GiftService<S> {
    /// The service on `db`.
    pub fn new(db: S) -> Self {
        GiftService { db }
    }

    /// Attaches one unit of `gift` to an order and takes it from stock.
    #[transactional(manager = self.db, propagation = Nested)]
    pub async fn add_gift(&self, order_id: i64, gift: i64) -> Result<(), ShopError> {
        // Written first, undone by ROLLBACK TO SAVEPOINT when the stock is missing.
        self.db
            .execute(
                sql("INSERT INTO gift (order_id, product_id) VALUES (?, ?)")
                    .bind(order_id)
                    .bind(gift),
            )
            .await?;
        let changed = self
            .db
            .execute(
                sql("UPDATE product SET stock = stock - 1 WHERE id = ? AND stock >= 1").bind(gift),
            )
            .await?;
        if changed == 0 {
            return Err(ShopError::GiftOutOfStock(gift));
        }
        Ok(())
    }
}

/// Coupons (seed 004).
#[derive(Debug, Clone)]
pub struct CouponService<S> {
    db: S,
}

impl<S: Store> CouponService<S> {
    /// The service on `db`.
    pub fn new(db: S) -> Self {
        CouponService { db }
    }

    /// Marks a coupon used; fails if it is unknown or already used. `Required`: inside a
    /// checkout it joins the checkout's transaction, so its failure dooms that transaction.
    #[transactional(manager = self.db)]
    pub async fn redeem(&self, code: &str) -> Result<(), ShopError> {
        let changed = self
            .db
            .execute(sql("UPDATE coupon SET used = 1 WHERE code = ? AND used = 0").bind(code))
            .await?;
        if changed == 0 {
            return Err(ShopError::CouponInvalid(code.to_owned()));
        }
        Ok(())
    }
}

/// What the risk service says about an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RiskVerdict {
    /// Go ahead.
    Pass,
    /// Keep the order for manual review, for this reason.
    Reject(String),
}

/// A stand-in for the remote risk service of seed 003: rejects large amounts, and can be
/// switched off to play an outage.
#[derive(Debug, Clone)]
pub struct RiskClient {
    up: Arc<AtomicBool>,
    limit: i64,
}

impl RiskClient {
    /// A risk service that rejects amounts above `limit`.
    #[must_use]
    pub fn new(limit: i64) -> Self {
        RiskClient {
            up: Arc::new(AtomicBool::new(true)),
            limit,
        }
    }

    /// Brings the service up or down.
    pub fn set_available(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    /// Checks an order amount.
    pub async fn check(&self, amount: i64) -> Result<RiskVerdict, ShopError> {
        tokio::task::yield_now().await; // a remote call
        if !self.up.load(Ordering::SeqCst) {
            return Err(ShopError::RiskServiceDown);
        }
        Ok(if amount > self.limit {
            RiskVerdict::Reject(format!("amount {amount} over {}", self.limit))
        } else {
            RiskVerdict::Pass
        })
    }
}

/// Orders: seed 000 §5's placement and seed 003's variations on it.
#[derive(Debug, Clone)]
pub struct OrderService<S> {
    db: S,
    accounts: AccountService<S>,
    audit: AuditService<S>,
    gifts: GiftService<S>,
    coupons: CouponService<S>,
    risk: RiskClient,
    mq: MessageQueue,
    timeline: Timeline,
}

/// The collaborators of an [`OrderService`].
#[derive(Debug, Clone)]
pub struct OrderDeps<S> {
    /// Payments.
    pub accounts: AccountService<S>,
    /// The audit log.
    pub audit: AuditService<S>,
    /// Gifts.
    pub gifts: GiftService<S>,
    /// Coupons.
    pub coupons: CouponService<S>,
    /// The risk service.
    pub risk: RiskClient,
    /// The message queue.
    pub mq: MessageQueue,
    /// Where hooks log their phases.
    pub timeline: Timeline,
}

impl<S: Store> OrderService<S> {
    /// The service on `db`, with its collaborators.
    pub fn new(db: S, deps: OrderDeps<S>) -> Self {
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

    /// Seed 000 §5: take the stock, create the order, charge the buyer; all or nothing.
    /// Every attempt is audited first, in its own transaction (seed 002).
    #[transactional(manager = self.db)]
    pub async fn place_order(&self, user: i64, product: i64, qty: i64) -> Result<i64, ShopError> {
        let detail = format!("user={user} product={product} qty={qty}");
        if let Err(e) = self.audit.record("ORDER_ATTEMPT", detail).await {
            // An audit failure must not fail the order (seed 002).
            tracing::warn!("audit failed: {e}");
        }
        let price = self.take_stock(product, qty).await?;
        let order_id = self
            .insert_order(user, product, qty, "PAID", Some(ADDRESS))
            .await?;
        self.accounts.debit(user, price * qty).await?;
        Ok(order_id)
    }

    /// Seed 003: an order with a free gift. The gift is added in a `Nested` scope: when it
    /// fails, only its savepoint is rolled back and the order commits without it.
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

    /// Seed 003: create the order, then ask the risk service. A rejection is a business
    /// outcome: the order is kept in state `WAIT_AUDIT` for a human, so
    /// `ShopError::RiskRejected` commits (`no_rollback_for`). The risk service being down is
    /// a system failure: everything rolls back.
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
                self.db
                    .execute(
                        sql("UPDATE orders SET state = ?, note = ? WHERE id = ?")
                            .bind("WAIT_AUDIT")
                            .bind(format!("risk check failed: {reason}"))
                            .bind(order_id),
                    )
                    .await?;
                Err(ShopError::RiskRejected { order_id, reason })
            }
        }
    }

    /// Seed 003: the "cancel unpaid order in 30 minutes" message goes to the MQ only after
    /// the order has committed (`after_commit`), never for an order that rolled back. A
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

    /// Seed 004's trap: the coupon service joins this transaction (`Required`), fails, and
    /// so marks the whole transaction rollback-only. Catching its error and going on does not
    /// save the order: the commit turns into a rollback and the caller gets
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

    /// Seed 004's programmatic pattern with [`TransactionTemplate`]: on a failed coupon,
    /// mark the transaction rollback-only and return a friendly `Ok(None)`; the owner of the
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
            .execute(|status: TransactionStatus| async move {
                let order_id = self.place_order(user, product, qty).await?;
                if self.coupons.redeem(coupon).await.is_err() {
                    status.set_rollback_only();
                    return Ok(None);
                }
                Ok::<_, ShopError>(Some(order_id))
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
        let changed = self
            .db
            .execute(
                sql("UPDATE product SET stock = stock - ? WHERE id = ? AND stock >= ?")
                    .bind(qty)
                    .bind(product)
                    .bind(qty),
            )
            .await?;
        if changed == 0 {
            return Err(ShopError::OutOfStock {
                product,
                requested: qty,
            });
        }
        Ok(self
            .db
            .fetch_int(sql("SELECT price FROM product WHERE id = ?").bind(product))
            .await?)
    }

    async fn insert_order(
        &self,
        user: i64,
        product: i64,
        qty: i64,
        state: &str,
        address: Option<&str>,
    ) -> Result<i64, ShopError> {
        Ok(self
            .db
            .fetch_int(
                sql(
                    "INSERT INTO orders (user_id, product_id, quantity, state, address) \
                     VALUES (?, ?, ?, ?, ?) RETURNING id",
                )
                .bind(user)
                .bind(product)
                .bind(qty)
                .bind(state)
                .bind(address),
            )
            .await?)
    }

    async fn set_note(&self, order_id: i64, note: &str) -> Result<(), ShopError> {
        self.db
            .execute(
                sql("UPDATE orders SET note = ? WHERE id = ?")
                    .bind(note)
                    .bind(order_id),
            )
            .await?;
        Ok(())
    }
}

/// What a batch delivery did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchResult {
    /// Orders delivered (committed).
    pub delivered: Vec<i64>,
    /// Orders that failed (rolled back), and why.
    pub failed: Vec<DeliveryFailure>,
}

/// Delivery (seed 003): a batch where each order gets its own transaction.
#[derive(Debug, Clone)]
pub struct DeliveryService<S> {
    db: S,
}

impl<S: Store> DeliveryService<S> {
    /// The service on `db`.
    pub fn new(db: S) -> Self {
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

    /// Ships one order: marks it `DELIVERED` and creates its shipment. Seed 003's batch
    /// settings: always a new transaction, READ COMMITTED, 10 s timeout.
    #[transactional(
        manager = self.db,
        propagation = RequiresNew,
        isolation = ReadCommitted,
        timeout = 10
    )]
    pub async fn deliver(&self, order_id: i64) -> Result<(), ShopError> {
        self.db
            .execute(
                sql("UPDATE orders SET state = ? WHERE id = ? AND state = ?")
                    .bind("DELIVERED")
                    .bind(order_id)
                    .bind("PAID"),
            )
            .await?;
        let row = self
            .db
            .fetch_optional(sql("SELECT address FROM orders WHERE id = ?").bind(order_id))
            .await?;
        let Some(address) = row.and_then(|r| r.opt_text(0)) else {
            // The state change above is rolled back with this transaction.
            return Err(ShopError::MissingAddress(order_id));
        };
        self.db
            .execute(
                sql("INSERT INTO shipment (order_id, address) VALUES (?, ?)")
                    .bind(order_id)
                    .bind(address),
            )
            .await?;
        Ok(())
    }

    /// Records a failed delivery, in a transaction of its own.
    #[transactional(manager = self.db)]
    pub async fn record_failure(&self, order_id: i64, reason: &str) -> Result<(), ShopError> {
        self.db
            .execute(
                sql("INSERT INTO delivery_failure (order_id, reason) VALUES (?, ?)")
                    .bind(order_id)
                    .bind(reason),
            )
            .await?;
        Ok(())
    }
}

/// Inventory under contention: a read-modify-write of the stock, made safe by SERIALIZABLE
/// isolation and retried when the database aborts it with a serialization failure.
#[derive(Debug, Clone)]
pub struct InventoryService<S> {
    db: S,
}

impl<S: Store> InventoryService<S> {
    /// The service on `db`.
    pub fn new(db: S) -> Self {
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
        let stock = self
            .db
            .fetch_int(sql("SELECT stock FROM product WHERE id = ?").bind(product))
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
        self.db
            .execute(
                sql("UPDATE product SET stock = ? WHERE id = ?")
                    .bind(stock - qty)
                    .bind(product),
            )
            .await?;
        Ok(stock - qty)
    }
}
