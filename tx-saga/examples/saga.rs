//! The order saga of an online shop across three services (stock, orders, payment), each
//! with its own SQLite database: reserve the stock, create the order, charge the customer.
//!
//! Run it with `cargo run -p tx-saga --example saga`. It shows
//!
//! 1. an order that completes,
//! 2. an order whose payment is declined: the order is cancelled, then the stock put back
//!    (compensations in reverse order),
//! 3. a worker that dies in the middle of a step (its task is dropped, as a crash would): its
//!    transaction is rolled back, and once its lease expires a second worker resumes the saga
//!    from the last recorded step; the step's effect happens once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tx_saga::{Saga, SagaEngine, SagaId, SagaStatus, StepContext, StepError, StepOptions};
use tx_sqlx::{SqliteTxPool, TransactionTemplate, TxError};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlaceOrder {
    item: String,
    qty: i64,
    customer: String,
    price: i64,
}

/// The three services. Stock and payment are reached as remote services: their calls are
/// keyed by the step's idempotency key and applied once per key. The orders database is the
/// saga engine's own: its writes commit with the record of each step.
#[derive(Clone)]
struct Shop {
    stock: SqliteTxPool,
    orders: SqliteTxPool,
    payment: SqliteTxPool,
    /// Makes the next `create_order` hang, so that its worker can be killed in the middle.
    hang_once: Arc<AtomicBool>,
}

/// `qty` books for `customer`, at `price` in all.
fn order(customer: &str, qty: i64, price: i64) -> PlaceOrder {
    PlaceOrder {
        item: "book".into(),
        qty,
        customer: customer.into(),
        price,
    }
}

fn short(id: SagaId) -> String {
    id.to_string()[..8].to_owned()
}

/// Applies `delta` to a counter of `table` once per `key` (a service's own transaction).
async fn keyed_update(
    db: &SqliteTxPool,
    table: &str,
    column: &str,
    id: &str,
    key: &str,
    delta: i64,
) -> Result<i64, StepError> {
    let (db, table, column, id, key) = (
        db.clone(),
        table.to_owned(),
        column.to_owned(),
        id.to_owned(),
        key.to_owned(),
    );
    TransactionTemplate::new(db.clone())
        .execute(move |_| {
            let (db, table, column, id, key) = (
                db.clone(),
                table.clone(),
                column.clone(),
                id.clone(),
                key.clone(),
            );
            async move {
                let done: Option<i64> = sqlx::query_scalar("SELECT 1 FROM applied WHERE key = ?")
                    .bind(&key)
                    .fetch_optional(&db)
                    .await?;
                let now: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT {column} FROM {table} WHERE id = ?"
                )))
                .bind(&id)
                .fetch_one(&db)
                .await?;
                if done.is_some() {
                    return Ok(now); // already applied: a retry after a crash
                }
                if now + delta < 0 {
                    return Err(StepError::Fail(
                        format!("{table} {id}: {now} left, {} needed", -delta).into(),
                    ));
                }
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {table} SET {column} = {column} + ? WHERE id = ?"
                )))
                .bind(delta)
                .bind(&id)
                .execute(&db)
                .await?;
                sqlx::query("INSERT INTO applied (key) VALUES (?)")
                    .bind(&key)
                    .execute(&db)
                    .await?;
                Ok::<_, StepError>(now + delta)
            }
        })
        .await
}

fn order_saga(shop: &Shop) -> Saga<PlaceOrder> {
    let options = StepOptions::default()
        .timeout(Duration::from_secs(1))
        .backoff(Duration::from_millis(50), Duration::from_secs(1));
    let (s1, s2, s3, s4, s5, s6) = (
        shop.clone(),
        shop.clone(),
        shop.clone(),
        shop.clone(),
        shop.clone(),
        shop.clone(),
    );
    Saga::<PlaceOrder>::named("place_order")
        .step_with(
            "reserve_stock",
            options.clone(),
            move |ctx: StepContext<PlaceOrder>| async move {
                let o = ctx.state();
                let left = keyed_update(&s1.stock, "items", "stock", &o.item, ctx.idempotency_key(), -o.qty).await?;
                println!("  [{}] reserve_stock: {} x {}, {left} left", short(ctx.saga_id()), o.qty, o.item);
                Ok(ctx.into_state())
            },
            move |ctx: StepContext<PlaceOrder>| async move {
                let o = ctx.state();
                let left = keyed_update(&s2.stock, "items", "stock", &o.item, ctx.idempotency_key(), o.qty).await?;
                println!("  [{}] compensate reserve_stock: {} x {} back, {left} left", short(ctx.saga_id()), o.qty, o.item);
                Ok(ctx.into_state())
            },
        )
        .step_with(
            "create_order",
            options.clone(),
            move |ctx: StepContext<PlaceOrder>| async move {
                let o = ctx.state();
                // Local: in the step's transaction, committed with the saga's progress.
                sqlx::query("INSERT INTO orders (id, customer, item, qty, status) VALUES (?, ?, ?, ?, 'created')")
                    .bind(ctx.saga_id().to_string())
                    .bind(&o.customer)
                    .bind(&o.item)
                    .bind(o.qty)
                    .execute(&s3.orders)
                    .await?;
                if s3.hang_once.swap(false, Ordering::SeqCst) {
                    println!("  [{}] create_order: order row written, not yet committed... (the worker dies here)", short(ctx.saga_id()));
                    std::future::pending::<()>().await;
                }
                println!("  [{}] create_order: order created (attempt {})", short(ctx.saga_id()), ctx.attempt());
                Ok(ctx.into_state())
            },
            move |ctx: StepContext<PlaceOrder>| async move {
                // The order stays as a trace, cancelled.
                sqlx::query("UPDATE orders SET status = 'cancelled' WHERE id = ?").bind(ctx.saga_id().to_string()).execute(&s4.orders).await?;
                println!("  [{}] compensate create_order: order cancelled", short(ctx.saga_id()));
                Ok(ctx.into_state())
            },
        )
        .step_with(
            "charge_payment",
            options,
            move |ctx: StepContext<PlaceOrder>| async move {
                let o = ctx.state();
                match keyed_update(&s5.payment, "accounts", "balance", &o.customer, ctx.idempotency_key(), -o.price).await {
                    Ok(left) => println!("  [{}] charge_payment: {} charged {}, balance {left}", short(ctx.saga_id()), o.customer, o.price),
                    Err(e) => {
                        println!("  [{}] charge_payment: declined ({e})", short(ctx.saga_id()));
                        return Err(e);
                    }
                }
                Ok(ctx.into_state())
            },
            move |ctx: StepContext<PlaceOrder>| async move {
                let o = ctx.state();
                let left = keyed_update(&s6.payment, "accounts", "balance", &o.customer, ctx.idempotency_key(), o.price).await?;
                println!("  [{}] compensate charge_payment: {} refunded, balance {left}", short(ctx.saga_id()), o.customer);
                Ok(ctx.into_state())
            },
        )
}

async fn open(dir: &std::path::Path, name: &str) -> Result<SqliteTxPool, TxError> {
    let opts = SqliteConnectOptions::new()
        .filename(dir.join(name))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    Ok(SqliteTxPool::new(
        SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?,
    ))
}

async fn wait(engine: &SagaEngine<sqlx::Sqlite>, id: SagaId) -> Result<SagaStatus, TxError> {
    loop {
        let status = engine.status(id).await?;
        if status.is_final() || matches!(status, SagaStatus::Stuck(_)) {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A worker on its own task, stopped through the returned sender (or killed by aborting it).
fn worker(
    engine: &SagaEngine<sqlx::Sqlite>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), TxError>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let engine = engine.clone();
    (stop, tokio::spawn(async move { engine.run(stopped).await }))
}

#[tokio::main]
async fn main() -> Result<(), TxError> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let shop = Shop {
        stock: open(dir.path(), "stock.db").await?,
        orders: open(dir.path(), "orders.db").await?,
        payment: open(dir.path(), "payment.db").await?,
        hang_once: Arc::new(AtomicBool::new(false)),
    };
    for (db, ddl) in [
        (
            &shop.stock,
            "CREATE TABLE items (id TEXT PRIMARY KEY, stock INTEGER NOT NULL); CREATE TABLE applied (key TEXT PRIMARY KEY); INSERT INTO items VALUES ('book', 10)",
        ),
        (
            &shop.payment,
            "CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL); CREATE TABLE applied (key TEXT PRIMARY KEY); INSERT INTO accounts VALUES ('alice', 100), ('bob', 5)",
        ),
        (
            &shop.orders,
            "CREATE TABLE orders (id TEXT PRIMARY KEY, customer TEXT, item TEXT, qty INTEGER, status TEXT)",
        ),
    ] {
        sqlx::raw_sql(ddl).execute(db.pool()).await?;
    }

    let engine = SagaEngine::new(shop.orders.clone())
        .lease(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(50))
        .register(order_saga(&shop));
    engine.install().await?;
    let (stop, running) = worker(&engine);

    println!("1. alice orders 2 books for 30:");
    // Started in the caller's transaction: the saga exists only if this commits.
    let id = TransactionTemplate::new(shop.orders.clone())
        .execute(|_| {
            let engine = engine.clone();
            async move { engine.start("place_order", order("alice", 2, 30)).await }
        })
        .await?;
    println!("   saga {}: {}\n", short(id), wait(&engine, id).await?);

    println!("2. bob orders 1 book for 20 but has 5:");
    let id = engine.start("place_order", order("bob", 1, 20)).await?;
    println!("   saga {}: {}\n", short(id), wait(&engine, id).await?);

    println!("3. alice orders 1 more book; the worker dies in the middle of create_order:");
    shop.hang_once.store(true, Ordering::SeqCst);
    let id = engine.start("place_order", order("alice", 1, 15)).await?;
    while shop.hang_once.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    running.abort(); // the crash: the step's transaction is rolled back, the lease stays taken
    drop(stop);
    println!(
        "   worker killed; saga {} is {} (its lease expires in about 2 s)",
        short(id),
        engine.status(id).await?
    );
    let (stop, running) = worker(&engine);
    println!("   a new worker started");
    println!("   saga {}: {}\n", short(id), wait(&engine, id).await?);
    let _ = stop.send(());
    running.await.expect("worker task")?;

    let stock: i64 = sqlx::query_scalar("SELECT stock FROM items WHERE id = 'book'")
        .fetch_one(shop.stock.pool())
        .await?;
    let alice: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = 'alice'")
        .fetch_one(shop.payment.pool())
        .await?;
    let orders: Vec<(String, String)> =
        sqlx::query_as("SELECT customer, status FROM orders ORDER BY rowid")
            .fetch_all(shop.orders.pool())
            .await?;
    println!("stock of book: {stock} (10 - 2 - 1); alice's balance: {alice} (100 - 30 - 15)");
    println!("orders: {orders:?}");
    assert_eq!(
        (stock, alice, orders.len()),
        (7, 55, 3),
        "each effect happened exactly once"
    );
    Ok(())
}
