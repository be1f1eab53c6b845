//! The scenario runner: each of the seeds' cases as a method of [`Shop`] returning a report of
//! what happened (each call's result) and the rows that prove it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Barrier;

use super::error::ShopError;
use super::model::{Account, AuditEntry, DeliveryFailure, Gift, Order, Product, Queries, ids::*};
use super::services::{
    AccountService, AuditService, BatchResult, CouponService, DeliveryService, GiftService,
    InventoryService, MessageQueue, OrderDeps, OrderService, RiskClient, Timeline,
};
use super::store::{Dialect, Store};

/// The risk service rejects orders above this amount.
pub const RISK_LIMIT: i64 = 20_000;

/// How many orders the batch delivers, and which of them (0-based) have no address.
pub const BATCH_SIZE: usize = 100;
/// Positions in the batch of the orders without an address (they fail).
pub const BATCH_WITHOUT_ADDRESS: [usize; 3] = [16, 49, 82];

/// The whole shop, wired: services on the shop's database, the audit log on `audit_db`.
#[derive(Debug, Clone)]
pub struct Shop<S> {
    /// Transfers and payments.
    pub accounts: AccountService<S>,
    /// Orders.
    pub orders: OrderService<S>,
    /// Batch delivery.
    pub delivery: DeliveryService<S>,
    /// Contended stock.
    pub inventory: InventoryService<S>,
    /// Read-only queries for the reports.
    pub queries: Queries<S>,
    /// The risk service stand-in.
    pub risk: RiskClient,
    /// The MQ stand-in.
    pub mq: MessageQueue,
    /// What hooks and the MQ logged.
    pub timeline: Timeline,
    audit_in_second_database: bool,
}

impl<S: Store> Shop<S> {
    /// Wires the services. `audit_db` is `db` itself on PostgreSQL and MariaDB, a second
    /// database (a second transaction manager) on SQLite; say which with
    /// `audit_in_second_database`.
    pub fn new(db: S, audit_db: S, audit_in_second_database: bool) -> Self {
        let timeline = Timeline::default();
        let mq = MessageQueue::new(timeline.clone());
        let risk = RiskClient::new(RISK_LIMIT);
        let accounts = AccountService::new(db.clone());
        let orders = OrderService::new(
            db.clone(),
            OrderDeps {
                accounts: accounts.clone(),
                audit: AuditService::new(audit_db.clone()),
                gifts: GiftService::new(db.clone()),
                coupons: CouponService::new(db.clone()),
                risk: risk.clone(),
                mq: mq.clone(),
                timeline: timeline.clone(),
            },
        );
        Shop {
            accounts,
            orders,
            delivery: DeliveryService::new(db.clone()),
            inventory: InventoryService::new(db.clone()),
            queries: Queries::new(db, audit_db),
            risk,
            mq,
            timeline,
            audit_in_second_database,
        }
    }

    /// Runs every case in order, on a freshly created schema.
    pub async fn run_all(&self) -> Result<DemoReport, ShopError> {
        Ok(DemoReport {
            dialect: self.queries.dialect(),
            transfer: self.bank_transfer().await?,
            orders: self.order_placement().await?,
            audit: self.audit_log().await?,
            gift: self.nested_gift().await?,
            risk: self.risk_check().await?,
            hooks: self.mq_after_commit().await?,
            batch: self.batch_delivery().await?,
            retry: self.serialization_retry().await?,
            rollback_only: self.rollback_only().await?,
        })
    }

    /// Seed 000: transfers between alice (200) and bob (0).
    pub async fn bank_transfer(&self) -> Result<TransferReport, ShopError> {
        let q = &self.queries;
        let total_before = q.account(ALICE).await?.balance + q.account(BOB).await?.balance;
        let steps = vec![
            Step::new(
                "transfer 100 alice -> bob",
                self.accounts.transfer(ALICE, BOB, 100).await,
                unit,
            ),
            Step::new(
                "transfer 500 alice -> bob",
                self.accounts.transfer(ALICE, BOB, 500).await,
                unit,
            ),
            Step::new(
                "transfer 50 alice -> #99 (no account)",
                self.accounts.transfer(ALICE, NOBODY, 50).await,
                unit,
            ),
        ];
        let accounts = vec![q.account(ALICE).await?, q.account(BOB).await?];
        Ok(TransferReport {
            steps,
            total_before,
            total_after: accounts.iter().map(|a| a.balance).sum(),
            accounts,
        })
    }

    /// Seed 000 §5: zhang san (5000) buys laptops (10 in stock, 5000 each).
    pub async fn order_placement(&self) -> Result<OrderReport, ShopError> {
        let o = &self.orders;
        let steps = vec![
            Step::new(
                "buy 1 laptop",
                o.place_order(ZHANG_SAN, LAPTOP, 1).await,
                order,
            ),
            Step::new(
                "buy 20 laptops",
                o.place_order(ZHANG_SAN, LAPTOP, 20).await,
                order,
            ),
            Step::new(
                "buy 1 more laptop",
                o.place_order(ZHANG_SAN, LAPTOP, 1).await,
                order,
            ),
        ];
        let q = &self.queries;
        Ok(OrderReport {
            steps,
            product: q.product(LAPTOP).await?,
            account: q.account(ZHANG_SAN).await?,
            orders: q.orders_of(ZHANG_SAN).await?,
        })
    }

    /// Seed 002: li si (100) cannot pay for a phone (1000); the order rolls back, the audit
    /// entry written in its own transaction stays.
    pub async fn audit_log(&self) -> Result<AuditReport, ShopError> {
        let step = Step::new(
            "li si buys 1 phone",
            self.orders.place_order(LI_SI, PHONE, 1).await,
            order,
        );
        let q = &self.queries;
        Ok(AuditReport {
            step,
            audit: q.audit_of(LI_SI).await?,
            orders: q.orders_of(LI_SI).await?,
            account: q.account(LI_SI).await?,
            audit_in_second_database: self.audit_in_second_database,
        })
    }

    /// Seed 003: wang wu buys a phone with a free mouse; the mouse is out of stock.
    pub async fn nested_gift(&self) -> Result<GiftReport, ShopError> {
        let result = self
            .orders
            .place_order_with_gift(WANG_WU, PHONE, 1, MOUSE_GIFT)
            .await;
        let step = Step::new(
            "wang wu buys 1 phone + gift mouse",
            result,
            |(id, dropped)| match dropped {
                Some(why) => format!("order #{id}, gift dropped ({why})"),
                None => format!("order #{id} with its gift"),
            },
        );
        let q = &self.queries;
        let orders = q.orders_of(WANG_WU).await?;
        let mut gifts = Vec::new();
        for order in &orders {
            gifts.extend(q.gifts_of(order.id).await?);
        }
        Ok(GiftReport {
            step,
            orders,
            gifts,
            product: q.product(PHONE).await?,
            gift_product: q.product(MOUSE_GIFT).await?,
            account: q.account(WANG_WU).await?,
        })
    }

    /// Seed 003: zhao liu orders 30 tablets (30000, over the risk limit), then 1 while the
    /// risk service is down.
    pub async fn risk_check(&self) -> Result<RiskReport, ShopError> {
        let o = &self.orders;
        let rejected = Step::new(
            "order 30 tablets, risk rejects",
            o.place_order_with_risk_check(ZHAO_LIU, TABLET, 30).await,
            order,
        );
        self.risk.set_available(false);
        let down = Step::new(
            "order 1 tablet, risk service down",
            o.place_order_with_risk_check(ZHAO_LIU, TABLET, 1).await,
            order,
        );
        self.risk.set_available(true);
        let q = &self.queries;
        Ok(RiskReport {
            rejected,
            down,
            orders: q.orders_of(ZHAO_LIU).await?,
            product: q.product(TABLET).await?,
        })
    }

    /// Seed 003: sun qi (300) buys headphones (200) twice; the second payment fails.
    pub async fn mq_after_commit(&self) -> Result<HooksReport, ShopError> {
        let o = &self.orders;
        let _ = self.timeline.take();
        let committed = Step::new(
            "buy 1 headphones",
            o.place_order_with_mq(SUN_QI, HEADPHONES, 1).await,
            order,
        );
        let committed_timeline = self.timeline.take();
        let rolled_back = Step::new(
            "buy 1 more headphones",
            o.place_order_with_mq(SUN_QI, HEADPHONES, 1).await,
            order,
        );
        let rolled_back_timeline = self.timeline.take();
        let q = &self.queries;
        Ok(HooksReport {
            committed,
            committed_timeline,
            rolled_back,
            rolled_back_timeline,
            sent: self.mq.sent(),
            orders: q.orders_of(SUN_QI).await?,
            account: q.account(SUN_QI).await?,
        })
    }

    /// Seed 003: 100 paid book orders, 3 of them without an address, delivered one
    /// transaction per order.
    pub async fn batch_delivery(&self) -> Result<BatchReport, ShopError> {
        let ids = self
            .orders
            .create_paid_orders(ZHOU_BA, BOOK, BATCH_SIZE, &BATCH_WITHOUT_ADDRESS)
            .await?;
        let result = self.delivery.deliver_all(&ids).await?;
        let q = &self.queries;
        let orders = q.orders_of_product(BOOK).await?;
        let count = |state: &str| orders.iter().filter(|o| o.state == state).count();
        Ok(BatchReport {
            expected_failures: BATCH_WITHOUT_ADDRESS.iter().map(|&i| ids[i]).collect(),
            delivered_rows: count("DELIVERED"),
            paid_rows: count("PAID"),
            shipments: q.shipments_of_product(BOOK).await?,
            failure_rows: q.delivery_failures().await?,
            result,
        })
    }

    /// Two buyers take one limited sneaker each at the same time, under SERIALIZABLE with
    /// `retry = 5`. Skipped on SQLite, which has a single writer and no such conflict.
    pub async fn serialization_retry(&self) -> Result<RetryReport, ShopError> {
        if self.queries.dialect() == Dialect::Sqlite {
            return Ok(RetryReport::Skipped(
                "SQLite runs one writer at a time: no serialization conflict to retry \
                 (run with DATABASE_URL=postgres://... or mysql://...)",
            ));
        }
        let before = self.queries.product(SNEAKER).await?.stock;
        let both_read = Arc::new(Barrier::new(2));
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let inventory = self.inventory.clone();
            let both_read = both_read.clone();
            tasks.push(tokio::spawn(async move {
                let attempts = AtomicU32::new(0);
                let result = inventory
                    .buy_limited(SNEAKER, 1, &both_read, &attempts)
                    .await;
                (result, attempts.load(Ordering::SeqCst))
            }));
        }
        let mut results = Vec::new();
        let mut attempts = Vec::new();
        for task in tasks {
            let (result, n) = task.await.expect("buyer task panicked");
            results.push(Step::new("buy 1 limited sneaker", result, |left| {
                format!("{left} left")
            }));
            attempts.push(n);
        }
        attempts.sort_unstable();
        Ok(RetryReport::Ran {
            results,
            attempts,
            stock_before: before,
            product: self.queries.product(SNEAKER).await?,
        })
    }

    /// Seed 004: zhou ba checks out a keyboard with an already used coupon, twice.
    pub async fn rollback_only(&self) -> Result<RollbackOnlyReport, ShopError> {
        let o = &self.orders;
        let swallowed = Step::new(
            "checkout, coupon failure swallowed",
            o.checkout_ignoring_coupon_failure(ZHOU_BA, KEYBOARD, 1, "SPRING10")
                .await,
            order,
        );
        let programmatic = Step::new(
            "checkout, set_rollback_only() on failure",
            o.checkout_or_roll_back(ZHOU_BA, KEYBOARD, 1, "SPRING10")
                .await,
            |id| match id {
                Some(id) => format!("order #{id}"),
                None => "None (rolled back quietly)".to_owned(),
            },
        );
        let q = &self.queries;
        let orders = q
            .orders_of(ZHOU_BA)
            .await?
            .into_iter()
            .filter(|o| o.product_id == KEYBOARD)
            .collect();
        Ok(RollbackOnlyReport {
            swallowed,
            programmatic,
            orders,
            product: q.product(KEYBOARD).await?,
        })
    }
}

/// One service call and its result.
#[derive(Debug)]
pub struct Step<T> {
    /// What was called, in words.
    pub call: String,
    /// What it returned.
    pub result: Result<T, ShopError>,
    /// The `Ok` value in words.
    shown: String,
}

impl<T> Step<T> {
    fn new(call: &str, result: Result<T, ShopError>, show: impl FnOnce(&T) -> String) -> Self {
        let shown = result.as_ref().map(show).unwrap_or_default();
        Step {
            call: call.to_owned(),
            result,
            shown,
        }
    }
}

impl<T> fmt::Display for Step<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "  {:<40} -> ", self.call)?;
        match &self.result {
            Ok(_) if self.shown.is_empty() => f.write_str("Ok"),
            Ok(_) => write!(f, "Ok: {}", self.shown),
            Err(e) => write!(f, "Err: {e}"),
        }
    }
}

fn unit(_: &()) -> String {
    String::new()
}

fn order(id: &i64) -> String {
    format!("order #{id}")
}

fn rows<T: fmt::Display>(f: &mut fmt::Formatter<'_>, label: &str, rows: &[T]) -> fmt::Result {
    if rows.is_empty() {
        return writeln!(f, "    {label:<8} none");
    }
    for (i, row) in rows.iter().enumerate() {
        let label = if i == 0 { label } else { "" };
        writeln!(f, "    {label:<8} {row}")?;
    }
    Ok(())
}

/// Seed 000: bank transfers.
#[derive(Debug)]
pub struct TransferReport {
    /// The three transfers.
    pub steps: Vec<Step<()>>,
    /// Alice and bob afterwards.
    pub accounts: Vec<Account>,
    /// Their total before.
    pub total_before: i64,
    /// Their total after.
    pub total_after: i64,
}

impl fmt::Display for TransferReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "[1] Bank transfer (seed 000): debit and credit in one REQUIRED transaction"
        )?;
        for s in &self.steps {
            writeln!(f, "{s}")?;
        }
        rows(f, "rows:", &self.accounts)?;
        writeln!(
            f,
            "    total {} before, {} after: no money lost",
            self.total_before, self.total_after
        )
    }
}

/// Seed 000 §5: order placement.
#[derive(Debug)]
pub struct OrderReport {
    /// The three purchases.
    pub steps: Vec<Step<i64>>,
    /// The laptop afterwards.
    pub product: Product,
    /// Zhang san afterwards.
    pub account: Account,
    /// Zhang san's orders.
    pub orders: Vec<Order>,
}

impl fmt::Display for OrderReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "[2] Order placement (seed 000 §5): stock, order and payment, all or nothing"
        )?;
        for s in &self.steps {
            writeln!(f, "{s}")?;
        }
        writeln!(f, "    rows:    {}", self.product)?;
        writeln!(f, "             {}", self.account)?;
        rows(f, "", &self.orders)
    }
}

/// Seed 002: the audit log survives.
#[derive(Debug)]
pub struct AuditReport {
    /// The failing purchase.
    pub step: Step<i64>,
    /// Li si's audit entries.
    pub audit: Vec<AuditEntry>,
    /// Li si's orders.
    pub orders: Vec<Order>,
    /// Li si afterwards.
    pub account: Account,
    /// Whether the audit log is in a second database.
    pub audit_in_second_database: bool,
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = if self.audit_in_second_database {
            "in a second SQLite database with its own TxPool"
        } else {
            "on another connection of the same pool"
        };
        writeln!(f, "[3] Audit log (seed 002): REQUIRES_NEW, {place}")?;
        writeln!(f, "{}", self.step)?;
        rows(f, "audit:", &self.audit)?;
        rows(f, "orders:", &self.orders)?;
        writeln!(f, "    account: {}", self.account)
    }
}

/// Seed 003: the gift in a NESTED scope.
#[derive(Debug)]
pub struct GiftReport {
    /// The purchase: the order id and why the gift was dropped.
    pub step: Step<(i64, Option<String>)>,
    /// Wang wu's orders.
    pub orders: Vec<Order>,
    /// Gifts attached to them.
    pub gifts: Vec<Gift>,
    /// The phone afterwards.
    pub product: Product,
    /// The gift afterwards.
    pub gift_product: Product,
    /// Wang wu afterwards.
    pub account: Account,
}

impl fmt::Display for GiftReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "[4] Gift (seed 003): NESTED, the gift rolls back to its savepoint"
        )?;
        writeln!(f, "{}", self.step)?;
        rows(f, "rows:", &self.orders)?;
        writeln!(f, "             gifts: {}", self.gifts.len())?;
        writeln!(f, "             {}", self.product)?;
        writeln!(f, "             {}", self.gift_product)?;
        writeln!(f, "             {}", self.account)
    }
}

/// Seed 003: the risk check.
#[derive(Debug)]
pub struct RiskReport {
    /// The rejected order (an `Err` that commits).
    pub rejected: Step<i64>,
    /// The order while the risk service is down (rolls back).
    pub down: Step<i64>,
    /// Zhao liu's orders.
    pub orders: Vec<Order>,
    /// The tablet afterwards.
    pub product: Product,
}

impl fmt::Display for RiskReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "[5] Risk check (seed 003): no_rollback_for = ShopError::RiskRejected {{ .. }}"
        )?;
        writeln!(f, "{}", self.rejected)?;
        writeln!(f, "{}", self.down)?;
        rows(f, "rows:", &self.orders)?;
        writeln!(f, "             {}", self.product)
    }
}

/// Seed 003: the MQ message after commit, and the hook phases.
#[derive(Debug)]
pub struct HooksReport {
    /// The purchase that commits.
    pub committed: Step<i64>,
    /// What happened around it, in order.
    pub committed_timeline: Vec<String>,
    /// The purchase that rolls back.
    pub rolled_back: Step<i64>,
    /// What happened around it, in order.
    pub rolled_back_timeline: Vec<String>,
    /// Every MQ message sent.
    pub sent: Vec<String>,
    /// Sun qi's orders.
    pub orders: Vec<Order>,
    /// Sun qi afterwards.
    pub account: Account,
}

impl fmt::Display for HooksReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "[6] MQ after commit (seed 003): register_synchronization + after_commit"
        )?;
        writeln!(f, "{}", self.committed)?;
        for e in &self.committed_timeline {
            writeln!(f, "      . {e}")?;
        }
        writeln!(f, "{}", self.rolled_back)?;
        for e in &self.rolled_back_timeline {
            writeln!(f, "      . {e}")?;
        }
        rows(f, "MQ:", &self.sent)?;
        rows(f, "rows:", &self.orders)?;
        writeln!(f, "             {}", self.account)
    }
}

/// Seed 003: batch delivery.
#[derive(Debug)]
pub struct BatchReport {
    /// What `deliver_all` returned.
    pub result: BatchResult,
    /// The orders created without an address.
    pub expected_failures: Vec<i64>,
    /// Book orders in state `DELIVERED`.
    pub delivered_rows: usize,
    /// Book orders still `PAID`.
    pub paid_rows: usize,
    /// Shipments of book orders.
    pub shipments: i64,
    /// The `delivery_failure` table.
    pub failure_rows: Vec<DeliveryFailure>,
}

impl fmt::Display for BatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "[7] Batch delivery (seed 003): {BATCH_SIZE} orders, one transaction each"
        )?;
        writeln!(
            f,
            "  deliver_all -> {} delivered, {} failed",
            self.result.delivered.len(),
            self.result.failed.len()
        )?;
        writeln!(
            f,
            "    rows:    {} orders DELIVERED, {} still PAID, {} shipments",
            self.delivered_rows, self.paid_rows, self.shipments
        )?;
        for failure in &self.failure_rows {
            writeln!(f, "             delivery_failure: {}", failure.reason)?;
        }
        Ok(())
    }
}

/// A serialization conflict retried.
#[derive(Debug)]
pub enum RetryReport {
    /// Not run on this backend, and why.
    Skipped(&'static str),
    /// Run.
    Ran {
        /// The two purchases.
        results: Vec<Step<i64>>,
        /// How many runs each call took, ascending.
        attempts: Vec<u32>,
        /// The sneaker's stock before.
        stock_before: i64,
        /// The sneaker afterwards.
        product: Product,
    },
}

impl fmt::Display for RetryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[8] Serialization conflict: SERIALIZABLE + retry = 5")?;
        match self {
            RetryReport::Skipped(why) => writeln!(f, "  skipped: {why}"),
            RetryReport::Ran {
                results,
                attempts,
                stock_before,
                product,
            } => {
                for s in results {
                    writeln!(f, "{s}")?;
                }
                writeln!(
                    f,
                    "    runs per call: {attempts:?} (the aborted one was retried)"
                )?;
                writeln!(
                    f,
                    "    rows:    {product} (was {stock_before}: no lost update)"
                )
            }
        }
    }
}

/// Seed 004: rollback-only.
#[derive(Debug)]
pub struct RollbackOnlyReport {
    /// The checkout whose coupon failure was swallowed.
    pub swallowed: Step<i64>,
    /// The template checkout that marked itself rollback-only.
    pub programmatic: Step<Option<i64>>,
    /// Zhou ba's keyboard orders.
    pub orders: Vec<Order>,
    /// The keyboard afterwards.
    pub product: Product,
}

impl fmt::Display for RollbackOnlyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "[9] Rollback-only (seed 004): a failed participant dooms the transaction"
        )?;
        writeln!(f, "{}", self.swallowed)?;
        writeln!(f, "{}", self.programmatic)?;
        rows(f, "orders:", &self.orders)?;
        writeln!(f, "             {}", self.product)
    }
}

/// Every case's report.
#[derive(Debug)]
pub struct DemoReport {
    /// The backend it ran on.
    pub dialect: Dialect,
    /// Seed 000.
    pub transfer: TransferReport,
    /// Seed 000 §5.
    pub orders: OrderReport,
    /// Seed 002.
    pub audit: AuditReport,
    /// Seed 003, NESTED.
    pub gift: GiftReport,
    /// Seed 003, `no_rollback_for`.
    pub risk: RiskReport,
    /// Seed 003, hooks.
    pub hooks: HooksReport,
    /// Seed 003, batch.
    pub batch: BatchReport,
    /// Serialization conflict.
    pub retry: RetryReport,
    /// Seed 004.
    pub rollback_only: RollbackOnlyReport,
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.transfer)?;
        write!(f, "\n{}", self.orders)?;
        write!(f, "\n{}", self.audit)?;
        write!(f, "\n{}", self.gift)?;
        write!(f, "\n{}", self.risk)?;
        write!(f, "\n{}", self.hooks)?;
        write!(f, "\n{}", self.batch)?;
        write!(f, "\n{}", self.retry)?;
        write!(f, "\n{}", self.rollback_only)
    }
}
