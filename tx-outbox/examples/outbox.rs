//! The shop's order case with a transactional outbox: placing an order takes stock, debits
//! the customer's balance, writes the order and publishes `OrderPlaced`, all in one
//! transaction. A relay sends the events to NATS JetStream; an inventory consumer reserves
//! the goods through the inbox (exactly once per event). Midway the relay is killed and a new
//! one started: nothing is lost, nothing handled twice, and orders that failed (out of stock,
//! not enough money) never produce an event.
//!
//! ```text
//! cargo run -p tx-outbox --features nats --example outbox          # SQLite + NATS at 127.0.0.1:4222
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run -p tx-outbox --features nats --example outbox
//! DATABASE_URL=mysql://root@127.0.0.1:3306/test cargo run -p tx-outbox --features nats --example outbox
//! NATS_URL=127.0.0.1:4222 ...
//! ```
//!
//! Its tables are prefixed `outbox_demo_<pid>_` and dropped at the end; the JetStream stream
//! `OUTBOX_DEMO_<pid>` likewise.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tx_outbox::nats::{ConsumeOptions, JetStreamSink};
use tx_outbox::{Delivery, Inbox, Message, Outbox, Relay};
use tx_sqlx::{TxError, TxPool, transactional};

/// The event the order service publishes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: i64,
    customer: i64,
    item: i64,
    quantity: i64,
}

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error("item {0} is out of stock")]
    OutOfStock(i64),
    #[error("customer {0} cannot afford it")]
    InsufficientFunds(i64),
    #[error(transparent)]
    Tx(#[from] TxError),
}

impl From<sqlx::Error> for ShopError {
    fn from(e: sqlx::Error) -> Self {
        ShopError::Tx(e.into())
    }
}

impl From<serde_json::Error> for ShopError {
    fn from(e: serde_json::Error) -> Self {
        ShopError::Tx(TxError::database(tx_sqlx::Operation::Statement, false, e))
    }
}

const ORDERS: i64 = 60;
const PRICE: i64 = 10;

/// The shop on one backend: the same code for each, instantiated per database type.
macro_rules! shop {
    ($module:ident, $db:ty, $pg:expr) => {
        mod $module {
            use super::*;

            /// `?` placeholders in the backend's spelling.
            fn sql(text: &str) -> sqlx::AssertSqlSafe<String> {
                if !$pg {
                    return sqlx::AssertSqlSafe(text.to_owned());
                }
                let mut n = 0;
                sqlx::AssertSqlSafe(
                    text.chars()
                        .map(|c| if c == '?' { n += 1; format!("${n}") } else { c.to_string() })
                        .collect(),
                )
            }

            pub struct Shop {
                pub db: TxPool<$db>,
                pub outbox: Outbox<$db>,
                pub t: String,
            }

            impl Shop {
                pub async fn create(db: TxPool<$db>, t: &str) -> Result<Shop, ShopError> {
                    for stmt in [
                        format!("CREATE TABLE {t}items (id BIGINT PRIMARY KEY, stock BIGINT NOT NULL)"),
                        format!("CREATE TABLE {t}accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)"),
                        format!("CREATE TABLE {t}orders (id BIGINT PRIMARY KEY, customer BIGINT NOT NULL, item BIGINT NOT NULL, quantity BIGINT NOT NULL)"),
                        format!("CREATE TABLE {t}reservations (order_id BIGINT NOT NULL, item BIGINT NOT NULL, quantity BIGINT NOT NULL)"),
                        format!("INSERT INTO {t}items (id, stock) VALUES (1, 40), (2, 25), (3, 1000)"),
                        format!("INSERT INTO {t}accounts (id, balance) VALUES (1, 300), (2, 5000), (3, 5000)"),
                    ] {
                        sqlx::query(sqlx::AssertSqlSafe(stmt)).execute(db.pool()).await?;
                    }
                    let outbox = Outbox::with_table(db.clone(), &format!("{t}outbox"))?;
                    outbox.install().await?;
                    Ok(Shop { db, outbox, t: t.to_owned() })
                }

                /// Stock, balance, order and event: one transaction.
                #[transactional(manager = self.db)]
                pub async fn place_order(&self, id: i64, customer: i64, item: i64, quantity: i64) -> Result<(), ShopError> {
                    let t = &self.t;
                    let took = sqlx::query(sql(&format!("UPDATE {t}items SET stock = stock - ? WHERE id = ? AND stock >= ?")))
                        .bind(quantity).bind(item).bind(quantity)
                        .execute(&self.db).await?;
                    if took.rows_affected() == 0 {
                        return Err(ShopError::OutOfStock(item));
                    }
                    let paid = sqlx::query(sql(&format!("UPDATE {t}accounts SET balance = balance - ? WHERE id = ? AND balance >= ?")))
                        .bind(quantity * PRICE).bind(customer).bind(quantity * PRICE)
                        .execute(&self.db).await?;
                    if paid.rows_affected() == 0 {
                        return Err(ShopError::InsufficientFunds(customer)); // the stock comes back too
                    }
                    sqlx::query(sql(&format!("INSERT INTO {t}orders (id, customer, item, quantity) VALUES (?, ?, ?, ?)")))
                        .bind(id).bind(customer).bind(item).bind(quantity)
                        .execute(&self.db).await?;
                    let event = OrderPlaced { order_id: id, customer, item, quantity };
                    // Ordered per item: the inventory sees an item's orders in commit order.
                    self.outbox.publish(Message::json("orders.placed", &event)?.key(format!("item-{item}"))).await?;
                    Ok(())
                }

                /// The inventory service's handler: reserve the goods (runs in the inbox's
                /// transaction, so exactly once per event).
                pub fn reserve(&self) -> impl Fn(Delivery) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ShopError>> + Send>> + Send + Sync + 'static {
                    let (db, t) = (self.db.clone(), self.t.clone());
                    move |d: Delivery| {
                        let (db, t) = (db.clone(), t.clone());
                        Box::pin(async move {
                            let e: OrderPlaced = d.json()?;
                            sqlx::query(sql(&format!("INSERT INTO {t}reservations (order_id, item, quantity) VALUES (?, ?, ?)")))
                                .bind(e.order_id).bind(e.item).bind(e.quantity)
                                .execute(&db).await?;
                            Ok(())
                        })
                    }
                }

                pub async fn count(&self, what: &str) -> Result<i64, ShopError> {
                    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {}{what}", self.t)))
                        .fetch_one(self.db.pool()).await?;
                    Ok(n)
                }

                pub async fn duplicates(&self) -> Result<i64, ShopError> {
                    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT COUNT(*) - COUNT(DISTINCT order_id) FROM {}reservations", self.t)))
                        .fetch_one(self.db.pool()).await?;
                    Ok(n)
                }

                pub async fn drop_tables(&self) {
                    let t = &self.t;
                    for name in ["items", "accounts", "orders", "reservations", "outbox", "outbox_partitions", "inbox"] {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}{name}"))).execute(self.db.pool()).await;
                    }
                }
            }

            pub async fn run(db: TxPool<$db>, js: jetstream::Context, nats_url: &str) -> Result<(), ShopError> {
                let pid = std::process::id();
                let shop = Shop::create(db.clone(), &format!("outbox_demo_{pid}_")).await?;
                let result = demo(&shop, db, js, nats_url).await;
                shop.drop_tables().await;
                result
            }

            async fn demo(shop: &Shop, db: TxPool<$db>, js: jetstream::Context, nats_url: &str) -> Result<(), ShopError> {
                let pid = std::process::id();
                let (stream, prefix) = (format!("OUTBOX_DEMO_{pid}"), format!("outbox_demo_{pid}"));
                js.create_stream(jetstream::stream::Config {
                    name: stream.clone(),
                    subjects: vec![format!("{prefix}.>")],
                    ..Default::default()
                })
                .await
                .map_err(|e| TxError::database(tx_sqlx::Operation::Statement, false, e))?;
                let consumer = tx_outbox::nats::durable_pull_consumer(&js, &stream, "inventory", "", Duration::from_secs(5))
                    .await
                    .map_err(|e| TxError::database(tx_sqlx::Operation::Statement, false, e))?;
                let inbox = Inbox::with_table(db.clone(), &format!("{}inbox", shop.t))?;
                inbox.install().await?;
                let (stop_tx, stop) = watch::channel(false);

                // The inventory consumer.
                let inventory = {
                    let (inbox, handler, mut stop) = (inbox.clone(), shop.reserve(), stop.clone());
                    tokio::spawn(async move {
                        let options = ConsumeOptions::default().retry_delay(Duration::from_millis(100));
                        tx_outbox::nats::consume(&inbox, "inventory", &consumer, options, handler, async move {
                            let _ = stop.wait_for(|s| *s).await;
                        })
                        .await
                    })
                };
                let start_relay = || {
                    let outbox = shop.outbox.clone();
                    let (nats_url, prefix, mut stop) = (nats_url.to_owned(), prefix.clone(), stop.clone());
                    tokio::spawn(async move {
                        let sink = JetStreamSink::connect(&nats_url).await.expect("NATS").subject_prefix(prefix);
                        let relay = Relay::new(outbox, sink).batch(10).lease(Duration::from_secs(1)).poll_interval(Duration::from_millis(50));
                        relay.run(async move { let _ = stop.wait_for(|s| *s).await; }).await
                    })
                };

                let mut relay = start_relay();
                let (mut placed, mut refused) = (0, 0);
                for id in 1..=ORDERS {
                    let (customer, item) = (1 + id % 3, 1 + id % 3);
                    match shop.place_order(id, customer, item, 2).await {
                        Ok(()) => placed += 1,
                        Err(ShopError::OutOfStock(_) | ShopError::InsufficientFunds(_)) => refused += 1,
                        Err(e) => return Err(e),
                    }
                    if id == ORDERS / 2 {
                        // Kill the relay mid-run (whatever batch it was in) and start another.
                        relay.abort();
                        let _ = relay.await;
                        println!("relay killed after order {id} ({} events still pending); starting a new one",
                            shop.outbox.stats().await?.pending);
                        relay = start_relay();
                    }
                }
                println!("orders placed: {placed}, refused (out of stock / not enough money): {refused}");
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while shop.count("reservations").await? < placed {
                    if tokio::time::Instant::now() > deadline {
                        eprintln!("the inventory did not see every order within 30 s");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = stop_tx.send(true);
                let _ = relay.await;
                let _ = inventory.await;
                let _ = js.delete_stream(&stream).await;
                let (orders, reserved, dups) = (shop.count("orders").await?, shop.count("reservations").await?, shop.duplicates().await?);
                let stats = shop.outbox.stats().await?;
                println!("orders in the database: {orders}; reservations made by the inventory: {reserved}; handled twice: {dups}");
                println!("outbox: {} pending, {} failed", stats.pending, stats.failed);
                if orders != placed || reserved != placed || dups != 0 {
                    return Err(TxError::database(tx_sqlx::Operation::Statement, false,
                        format!("lost or duplicated work: {placed} placed, {orders} orders, {reserved} reserved, {dups} twice")).into());
                }
                println!("nothing lost, nothing handled twice, no event for a refused order");
                Ok(())
            }
        }
    };
}

shop!(on_sqlite, sqlx::Sqlite, false);
shop!(on_postgres, sqlx::Postgres, true);
shop!(on_mysql, sqlx::MySql, false);

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .without_time()
        .init();
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".into());
    let js = match async_nats::connect(&nats_url).await {
        Ok(c) => jetstream::new(c),
        Err(e) => {
            eprintln!(
                "cannot reach NATS at {nats_url} ({e}); start nats-server -js, or set NATS_URL"
            );
            return ExitCode::FAILURE;
        }
    };
    let url = std::env::var("DATABASE_URL").ok();
    let result = match url.as_deref() {
        None => {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("shop.db");
            println!(
                "outbox demo on SQLite ({}) and NATS at {nats_url}",
                path.display()
            );
            let opts = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            match sqlx::SqlitePool::connect_with(opts).await {
                Ok(p) => on_sqlite::run(TxPool::new(p), js, &nats_url).await,
                Err(e) => Err(e.into()),
            }
        }
        Some(u) if u.starts_with("postgres") => match sqlx::PgPool::connect(u).await {
            Ok(p) => on_postgres::run(TxPool::new(p), js, &nats_url).await,
            Err(e) => Err(e.into()),
        },
        Some(u) if u.starts_with("mysql") || u.starts_with("mariadb") => {
            match sqlx::MySqlPool::connect(u).await {
                Ok(p) => on_mysql::run(TxPool::new(p), js, &nats_url).await,
                Err(e) => Err(e.into()),
            }
        }
        Some(u) => {
            eprintln!("DATABASE_URL {u:?}: expected postgres://, mysql:// or unset (SQLite)");
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}
