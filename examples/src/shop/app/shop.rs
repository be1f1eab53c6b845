// The scenario runner: each case of the demo as a method of `Shop`, returning a report of
// what happened (each call's result) and the rows that prove it. Compiled once per backend,
// with the services of this file's module.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Barrier;

use crate::shop::collaborators::{MessageQueue, RiskClient, Timeline};
use crate::shop::connect::Backend;
use crate::shop::error::ShopError;
use crate::shop::model::{
    BATCH_SIZE, BATCH_WITHOUT_ADDRESS, Order, RISK_LIMIT, USED_COUPON, ids::*,
};
use crate::shop::reports::{
    AuditReport, BatchReport, DemoReport, GiftReport, HooksReport, OrderReport, RetryReport,
    RiskReport, RollbackOnlyReport, Step, TransferReport, order, unit,
};

/// The whole shop, wired: services on the shop's database, the audit log on `audit_db`.
#[derive(Debug, Clone)]
pub struct Shop {
    /// Transfers and payments.
    pub accounts: AccountService,
    /// Orders.
    pub orders: OrderService,
    /// Batch delivery.
    pub delivery: DeliveryService,
    /// Contended stock.
    pub inventory: InventoryService,
    /// Read-only queries for the reports.
    pub queries: Queries,
    /// The risk service stand-in.
    pub risk: RiskClient,
    /// The MQ stand-in.
    pub mq: MessageQueue,
    /// What hooks and the MQ logged.
    pub timeline: Timeline,
    audit_in_second_database: bool,
}

impl Shop {
    /// Wires the services. `audit_db` is `db` itself on PostgreSQL and MariaDB, a second
    /// database (a second transaction manager) on SQLite; say which with
    /// `audit_in_second_database`.
    pub fn new(db: Db, audit_db: Db, audit_in_second_database: bool) -> Self {
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

    /// Creates the tables and the seed data on `db` and `audit_db` ([`create_schema`]), then
    /// wires the shop on them.
    ///
    /// # Errors
    ///
    /// The database's (a table that already exists, a lost connection, ...).
    pub async fn create(
        db: Db,
        audit_db: Db,
        audit_in_second_database: bool,
    ) -> Result<Self, ShopError> {
        create_schema(&db, &audit_db).await?;
        Ok(Shop::new(db, audit_db, audit_in_second_database))
    }

    /// Runs every case in order, on a freshly created schema.
    pub async fn run_all(&self) -> Result<DemoReport, ShopError> {
        Ok(DemoReport {
            backend: BACKEND,
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

    /// Transfers between alice (200) and bob (0).
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

    /// Zhang san (5000) buys laptops (10 in stock, 5000 each).
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
            audit: q.audit_of(ZHANG_SAN).await?,
        })
    }

    /// Li si (100) cannot pay for a phone (1000); the order rolls back, the audit
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

    /// Wang wu buys a phone with a free mouse; the mouse is out of stock.
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

    /// Zhao liu orders 30 tablets (30000, over the risk limit), then 1 while the
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

    /// Sun qi (300) buys headphones (200) twice; the second payment fails.
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

    /// 100 paid book orders, 3 of them without an address, delivered one
    /// transaction per order.
    pub async fn batch_delivery(&self) -> Result<BatchReport, ShopError> {
        let ids = self
            .orders
            .create_paid_orders(ZHOU_BA, BOOK, BATCH_SIZE, &BATCH_WITHOUT_ADDRESS)
            .await?;
        let result = self.delivery.deliver_all(&ids).await?;
        let q = &self.queries;
        let orders = self.orders_of(ZHOU_BA, BOOK).await?;
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
        if BACKEND == Backend::Sqlite {
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

    /// Zhou ba checks out a keyboard with an already used coupon, twice.
    pub async fn rollback_only(&self) -> Result<RollbackOnlyReport, ShopError> {
        let o = &self.orders;
        let swallowed = Step::new(
            "checkout, coupon failure swallowed",
            o.checkout_ignoring_coupon_failure(ZHOU_BA, KEYBOARD, 1, USED_COUPON)
                .await,
            order,
        );
        let programmatic = Step::new(
            "checkout, set_rollback_only() on failure",
            o.checkout_or_roll_back(ZHOU_BA, KEYBOARD, 1, USED_COUPON)
                .await,
            |id| match id {
                Some(id) => format!("order #{id}"),
                None => "None (rolled back quietly)".to_owned(),
            },
        );
        let q = &self.queries;
        Ok(RollbackOnlyReport {
            swallowed,
            programmatic,
            orders: self.orders_of(ZHOU_BA, KEYBOARD).await?,
            product: q.product(KEYBOARD).await?,
            coupon_used: q.coupon_used(USED_COUPON).await?,
        })
    }

    /// The orders of `user` for `product`, oldest first (zhou ba buys books in the batch and
    /// keyboards in the rollback-only case).
    async fn orders_of(&self, user: i64, product: i64) -> Result<Vec<Order>, ShopError> {
        let orders = self.queries.orders_of(user).await?;
        Ok(orders
            .into_iter()
            .filter(|o| o.product_id == product)
            .collect())
    }
}
