//! The order saga the tests run: reserve stock (stock service), create the order (the engine's
//! own database), charge the account (payment service); each step and compensation also
//! appends to a journal.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tx_saga::{Saga, SagaId, StepContext, StepError};
use tx_sqlx::TxPool;

use super::db::TestDb;
use super::env::Env;

/// The order saga's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub item: String,
    pub qty: i64,
    pub account: String,
    pub amount: i64,
    /// The test's fault injection point, `step:direction:mid|after`.
    pub crash_at: Option<String>,
}

/// Called at fault points of the order saga's steps: `mid` after the step's writes and calls,
/// before it returns; `after` registered to run right after the step's transaction commits.
pub type Hook = Arc<dyn Fn(SagaId, String, Order) -> BoxFuture<'static, ()> + Send + Sync>;

impl<DB: TestDb> Env<DB> {
    /// Appends to the saga's journal through `&orders`: inside a step, in the step's
    /// transaction.
    pub async fn log(&self, id: SagaId, event: &str) -> Result<(), StepError> {
        let j = self.t("orders", "journal");
        DB::exec(
            &self.orders,
            &format!("INSERT INTO {j} (saga_id, seq, event) SELECT ?, COALESCE(MAX(seq), 0) + 1, ? FROM {j} WHERE saga_id = ?"),
            vec![id.into(), event.into(), id.into()],
        )
        .await?;
        Ok(())
    }

    /// The stock service: moves `delta` of `item`, once per `key` (its own transaction on its
    /// own database).
    pub async fn move_stock(&self, key: &str, item: &str, delta: i64) -> Result<(), StepError> {
        let ledger = Ledger {
            balances: self.on(
                "stock",
                "items",
                "UPDATE {t} SET stock = stock + ? WHERE item = ? AND stock + ? >= 0",
            ),
            seen: self.on("stock", "moves", "SELECT COUNT(*) FROM {t} WHERE mkey = ?"),
            record: self.on(
                "stock",
                "moves",
                "INSERT INTO {t} (mkey, item, delta) VALUES (?, ?, ?)",
            ),
            refused: format!("out of stock: {item}"),
        };
        ledger.apply_once(&self.stock, key, item, delta).await
    }

    /// The payment service: moves `delta` on `account`, once per `key`; declines an overdraft.
    pub async fn pay(&self, key: &str, account: &str, delta: i64) -> Result<(), StepError> {
        let ledger = Ledger {
            balances: self.on(
                "payment",
                "accounts",
                "UPDATE {t} SET balance = balance + ? WHERE account = ? AND balance + ? >= 0",
            ),
            seen: self.on(
                "payment",
                "payments",
                "SELECT COUNT(*) FROM {t} WHERE pkey = ?",
            ),
            record: self.on(
                "payment",
                "payments",
                "INSERT INTO {t} (pkey, account, delta) VALUES (?, ?, ?)",
            ),
            refused: format!("payment declined: insufficient balance on {account}"),
        };
        ledger.apply_once(&self.payment, key, account, delta).await
    }

    /// The order saga: reserve stock (stock service, keyed), create the order (local: the
    /// orders database is the engine's), charge the account (payment service, keyed). Every
    /// step and compensation also appends to the journal, locally.
    pub fn order_saga(&self, hook: Option<Hook>) -> Saga<Order> {
        self.order_saga_with(hook, tx_saga::StepOptions::default())
    }

    /// [`order_saga`](Self::order_saga) with `options` for every step.
    pub fn order_saga_with(
        &self,
        hook: Option<Hook>,
        options: tx_saga::StepOptions,
    ) -> Saga<Order> {
        let point = |hook: &Option<Hook>, id: SagaId, name: &'static str, order: &Order| {
            let f = hook.as_ref().map(|h| h(id, name.to_owned(), order.clone()));
            async move {
                if let Some(f) = f {
                    f.await;
                }
            }
        };
        let (e1, e2, e3, e4, e5, e6) = (
            self.clone(),
            self.clone(),
            self.clone(),
            self.clone(),
            self.clone(),
            self.clone(),
        );
        let (h1, h2, h3, h4, h5, h6) = (
            hook.clone(),
            hook.clone(),
            hook.clone(),
            hook.clone(),
            hook.clone(),
            hook,
        );
        Saga::<Order>::named("place_order")
            .step_with(
                "reserve_stock",
                options.clone(),
                move |ctx: StepContext<Order>| async move {
                    e1.log(ctx.saga_id(), "reserve_stock:forward").await?;
                    let o = ctx.state();
                    e1.move_stock(ctx.idempotency_key(), &o.item, -o.qty)
                        .await?;
                    point(&h1, ctx.saga_id(), "reserve_stock:forward", o).await;
                    Ok(ctx.into_state())
                },
                move |ctx: StepContext<Order>| async move {
                    e2.log(ctx.saga_id(), "reserve_stock:compensate").await?;
                    let o = ctx.state();
                    e2.move_stock(ctx.idempotency_key(), &o.item, o.qty).await?;
                    point(&h2, ctx.saga_id(), "reserve_stock:compensate", o).await;
                    Ok(ctx.into_state())
                },
            )
            .step_with(
                "create_order",
                options.clone(),
                move |ctx: StepContext<Order>| async move {
                    e3.log(ctx.saga_id(), "create_order:forward").await?;
                    let o = ctx.state();
                    DB::exec(
                        &e3.orders,
                        &format!(
                            "INSERT INTO {} (id, item, qty, status) VALUES (?, ?, ?, 'created')",
                            e3.t("orders", "orders")
                        ),
                        vec![ctx.saga_id().into(), o.item.clone().into(), o.qty.into()],
                    )
                    .await?;
                    point(&h3, ctx.saga_id(), "create_order:forward", o).await;
                    Ok(ctx.into_state())
                },
                move |ctx: StepContext<Order>| async move {
                    e4.log(ctx.saga_id(), "create_order:compensate").await?;
                    // The order stays, cancelled, as a trace.
                    DB::exec(
                        &e4.orders,
                        &format!(
                            "UPDATE {} SET status = 'cancelled' WHERE id = ?",
                            e4.t("orders", "orders")
                        ),
                        vec![ctx.saga_id().into()],
                    )
                    .await?;
                    point(&h4, ctx.saga_id(), "create_order:compensate", ctx.state()).await;
                    Ok(ctx.into_state())
                },
            )
            .step_with(
                "charge_payment",
                options.clone(),
                move |ctx: StepContext<Order>| async move {
                    e5.log(ctx.saga_id(), "charge_payment:forward").await?;
                    let o = ctx.state();
                    e5.pay(ctx.idempotency_key(), &o.account, -o.amount).await?;
                    point(&h5, ctx.saga_id(), "charge_payment:forward", o).await;
                    Ok(ctx.into_state())
                },
                move |ctx: StepContext<Order>| async move {
                    e6.log(ctx.saga_id(), "charge_payment:compensate").await?;
                    let o = ctx.state();
                    e6.pay(ctx.idempotency_key(), &o.account, o.amount).await?;
                    point(&h6, ctx.saga_id(), "charge_payment:compensate", o).await;
                    Ok(ctx.into_state())
                },
            )
    }
}

/// The order for `n` units of `item`, paid from `account`.
pub fn order(item: &str, qty: i64, account: &str, amount: i64) -> Order {
    Order {
        item: item.to_owned(),
        qty,
        account: account.to_owned(),
        amount,
        crash_at: None,
    }
}

/// A service's balances (stock per item, money per account) and its ledger of applied moves,
/// keyed so that a move retried with its key is applied once.
struct Ledger {
    /// delta, owner, delta: changes a balance unless it would go negative.
    balances: String,
    /// key: how many moves of that key were recorded.
    seen: String,
    /// key, owner, delta.
    record: String,
    /// The step's failure when the balance would go negative.
    refused: String,
}

impl Ledger {
    /// Applies `delta` to `owner`'s balance and records it under `key`, in one transaction of
    /// `db`; nothing when `key` was applied before.
    async fn apply_once<DB: TestDb>(
        self,
        db: &TxPool<DB>,
        key: &str,
        owner: &str,
        delta: i64,
    ) -> Result<(), StepError> {
        let ledger = Arc::new(self);
        let pool = db.clone();
        let (key, owner) = (key.to_owned(), owner.to_owned());
        DB::template(db)
            .execute(move |_| {
                let (db, ledger, key, owner) =
                    (pool.clone(), ledger.clone(), key.clone(), owner.clone());
                async move {
                    let seen = DB::ints(&db, &ledger.seen, vec![key.clone().into()]).await?;
                    if seen[0] > 0 {
                        return Ok(());
                    }
                    let n = DB::exec(
                        &db,
                        &ledger.balances,
                        vec![delta.into(), owner.clone().into(), delta.into()],
                    )
                    .await?;
                    if n != 1 {
                        return Err(StepError::Fail(ledger.refused.clone().into()));
                    }
                    DB::exec(
                        &db,
                        &ledger.record,
                        vec![key.into(), owner.into(), delta.into()],
                    )
                    .await?;
                    Ok(())
                }
            })
            .await
    }
}
