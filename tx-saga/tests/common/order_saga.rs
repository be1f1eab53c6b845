//! The order saga the tests run: reserve stock (stock service), create the order (the engine's
//! own database), charge the account (payment service); each step and compensation also
//! appends to a journal.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tx_saga::{Direction, Saga, SagaId, StepAction, StepContext, StepError, StepOptions};
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

    /// Journals `<step>:<direction>` for the attempt of `ctx`, in the step's transaction.
    pub async fn log_step<S: Sync>(&self, ctx: &StepContext<S>) -> Result<(), StepError> {
        let event = format!("{}:{}", ctx.step_name(), ctx.direction());
        self.log(ctx.saga_id(), &event).await
    }

    /// The stock service: moves `delta` of `item`, once per `key` (its own transaction on its
    /// own database).
    pub async fn move_stock(&self, key: &str, item: &str, delta: i64) -> Result<(), StepError> {
        let refused = format!("out of stock: {item}");
        self.ledger(
            "stock",
            ["items", "stock", "item"],
            ["moves", "mkey"],
            refused,
        )
        .apply_once(&self.stock, key, item, delta)
        .await
    }

    /// The payment service: moves `delta` on `account`, once per `key`; declines an overdraft.
    pub async fn pay(&self, key: &str, account: &str, delta: i64) -> Result<(), StepError> {
        let refused = format!("payment declined: insufficient balance on {account}");
        let balances = ["accounts", "balance", "account"];
        self.ledger("payment", balances, ["payments", "pkey"], refused)
            .apply_once(&self.payment, key, account, delta)
            .await
    }

    /// The ledger of `service`: its balances in `[table, balance column, owner column]`, the
    /// moves it applied in `[table, key column]`.
    fn ledger(
        &self,
        service: &str,
        [balances, balance, owner]: [&str; 3],
        [moves, key]: [&str; 2],
        refused: String,
    ) -> Ledger {
        let (balances, moves) = (self.t(service, balances), self.t(service, moves));
        Ledger {
            balances: format!(
                "UPDATE {balances} SET {balance} = {balance} + ? WHERE {owner} = ? AND {balance} + ? >= 0"
            ),
            seen: format!("SELECT COUNT(*) FROM {moves} WHERE {key} = ?"),
            record: format!("INSERT INTO {moves} ({key}, {owner}, delta) VALUES (?, ?, ?)"),
            refused,
        }
    }

    /// The order saga: reserve stock (stock service, keyed), create the order (local: the
    /// orders database is the engine's), charge the account (payment service, keyed). Every
    /// step and compensation also appends to the journal, locally.
    pub fn order_saga(&self, hook: Option<Hook>) -> Saga<Order> {
        self.order_saga_with(hook, StepOptions::default())
    }

    /// [`order_saga`](Self::order_saga) with `options` for every step.
    pub fn order_saga_with(&self, hook: Option<Hook>, options: StepOptions) -> Saga<Order> {
        // Forward takes from the stock or the account, the compensation gives it back; both
        // keyed.
        let stock: Effect<DB> = |env, ctx| {
            let o = ctx.state();
            Box::pin(env.move_stock(ctx.idempotency_key(), &o.item, taken(ctx) * o.qty))
        };
        let payment: Effect<DB> = |env, ctx| {
            let o = ctx.state();
            Box::pin(env.pay(ctx.idempotency_key(), &o.account, taken(ctx) * o.amount))
        };
        let steps: [(&str, Effect<DB>, Effect<DB>); 3] = [
            ("reserve_stock", stock, stock),
            ("create_order", Env::create_order, Env::cancel_order),
            ("charge_payment", payment, payment),
        ];
        let mut saga = Saga::<Order>::named("place_order");
        for (name, forward, compensate) in steps {
            let (forward, compensate) = (
                self.order_step(&hook, forward),
                self.order_step(&hook, compensate),
            );
            saga = saga.step_with(name, options.clone(), forward, compensate);
        }
        saga
    }

    /// A step action of the order saga: journals `<step>:<direction>`, applies `effect`, then
    /// reaches the fault point of that name, all in the step's transaction.
    fn order_step(
        &self,
        hook: &Option<Hook>,
        effect: Effect<DB>,
    ) -> impl StepAction<Order, BoxedStep<Order>> {
        let (env, hook) = (self.clone(), hook.clone());
        move |ctx: StepContext<Order>| -> BoxedStep<Order> {
            Box::pin(async move {
                let point = format!("{}:{}", ctx.step_name(), ctx.direction());
                env.log(ctx.saga_id(), &point).await?;
                effect(&env, &ctx).await?;
                if let Some(hook) = hook {
                    hook(ctx.saga_id(), point, ctx.state().clone()).await;
                }
                Ok(ctx.into_state())
            })
        }
    }

    /// A step action that only journals `<step>:<direction>` (in the step's transaction) and
    /// keeps the state.
    pub fn journal_step<S: Send + Sync + 'static>(&self) -> impl StepAction<S, BoxedStep<S>> {
        let env = self.clone();
        move |ctx: StepContext<S>| -> BoxedStep<S> {
            Box::pin(async move {
                env.log_step(&ctx).await?;
                Ok(ctx.into_state())
            })
        }
    }

    /// The order's row, created in the step's transaction.
    fn create_order<'a>(
        &'a self,
        ctx: &'a StepContext<Order>,
    ) -> BoxFuture<'a, Result<(), StepError>> {
        let o = ctx.state();
        let sql = self.on(
            "orders",
            "orders",
            "INSERT INTO {t} (id, item, qty, status) VALUES (?, ?, ?, 'created')",
        );
        let args = vec![ctx.saga_id().into(), o.item.clone().into(), o.qty.into()];
        Box::pin(async move {
            DB::exec(&self.orders, &sql, args).await?;
            Ok(())
        })
    }

    /// The order stays, cancelled, as a trace.
    fn cancel_order<'a>(
        &'a self,
        ctx: &'a StepContext<Order>,
    ) -> BoxFuture<'a, Result<(), StepError>> {
        let sql = self.on(
            "orders",
            "orders",
            "UPDATE {t} SET status = 'cancelled' WHERE id = ?",
        );
        let args = vec![ctx.saga_id().into()];
        Box::pin(async move {
            DB::exec(&self.orders, &sql, args).await?;
            Ok(())
        })
    }

    /// Asserts what the order saga `id` leaves once completed: every step journaled, the
    /// stock moved and the account charged once, the order created.
    pub async fn assert_order_completed(&self, id: SagaId) {
        assert_eq!(
            self.journal(id).await,
            vec![
                "reserve_stock:forward",
                "create_order:forward",
                "charge_payment:forward"
            ],
            "saga {id}"
        );
        assert_eq!(
            self.stock_moves(id).await,
            vec![format!("{id}:reserve_stock:forward")]
        );
        assert_eq!(
            self.payments(id).await,
            vec![format!("{id}:charge_payment:forward")]
        );
        assert_eq!(self.order_statuses(id).await, vec!["created"]);
    }

    /// Asserts what the order saga `id` leaves once compensated after its payment was
    /// declined: the order cancelled, then the stock put back (reverse order), nothing
    /// charged.
    pub async fn assert_order_compensated(&self, id: SagaId) {
        assert_eq!(
            self.journal(id).await,
            vec![
                "reserve_stock:forward",
                "create_order:forward",
                "create_order:compensate",
                "reserve_stock:compensate"
            ],
            "saga {id}"
        );
        assert_eq!(
            self.stock_moves(id).await,
            vec![
                format!("{id}:reserve_stock:compensate"),
                format!("{id}:reserve_stock:forward")
            ]
        );
        assert!(self.payments(id).await.is_empty());
        assert_eq!(self.order_statuses(id).await, vec!["cancelled"]);
    }
}

/// A step action's future, boxed.
pub type BoxedStep<S> = BoxFuture<'static, Result<S, StepError>>;

/// What a step of the order saga does to a service, besides journaling.
type Effect<DB> =
    for<'a> fn(&'a Env<DB>, &'a StepContext<Order>) -> BoxFuture<'a, Result<(), StepError>>;

/// The sign of a step's move: taken going forward, given back compensating.
fn taken<S>(ctx: &StepContext<S>) -> i64 {
    match ctx.direction() {
        Direction::Forward => -1,
        Direction::Compensate => 1,
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
