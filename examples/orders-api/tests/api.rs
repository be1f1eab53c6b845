//! The order API served on loopback and driven through `reqwest`, on SQLite, PostgreSQL and
//! MariaDB: orders (201, 409 out of stock, 402 insufficient balance, 404, 422), what each
//! outcome left in the database (stock, balance, points, the audit log), and 50 concurrent
//! SERIALIZABLE transfers that conserve the sum of the balances.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use orders_api::schema::ids::*;
use orders_api::schema::{POINTS_CAP, YUAN_PER_POINT};
use orders_api::{Account, AuditEntry, Order, Placed, Product, Transferred};
use serde_json::{Value, json};

/// Serves `router` on a loopback port.
async fn serve(router: Router) -> Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Client {
        base: format!("http://{addr}"),
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
    }
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn account(&self, id: i64) -> Account {
        let (status, body) = self.get(&format!("/accounts/{id}")).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).unwrap()
    }

    async fn stock(&self, id: i64) -> i64 {
        let (status, body) = self.get(&format!("/products/{id}")).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value::<Product>(body).unwrap().stock
    }

    async fn audit(&self) -> Vec<AuditEntry> {
        let (status, body) = self.get("/audit").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).unwrap()
    }

    async fn order(&self, account: i64, product: i64, quantity: i64) -> (u16, Value) {
        self.post(
            "/orders",
            json!({ "account": account, "product": product, "quantity": quantity }),
        )
        .await
    }
}

/// Orders and what each outcome leaves behind.
async fn orders(c: Client) {
    // 201: stock taken, order created, buyer charged, points credited.
    let (status, body) = c.order(ZHANG_SAN, LAPTOP, 2).await;
    assert_eq!(status, 201, "{body}");
    let placed: Placed = serde_json::from_value(body).unwrap();
    assert_eq!(
        (placed.order.total, placed.points),
        (2000, 2000 / YUAN_PER_POINT)
    );
    let (status, body) = c.get(&format!("/orders/{}", placed.order.id)).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_value::<Order>(body).unwrap(), placed.order);
    let zhang = c.account(ZHANG_SAN).await;
    assert_eq!((zhang.balance, zhang.points), (3000, 200));
    assert_eq!(c.stock(LAPTOP).await, 8);

    // 409: not enough stock; nothing changed.
    let (status, body) = c.order(ZHANG_SAN, LAPTOP, 9).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("stock"), "{body}");
    assert_eq!(c.stock(LAPTOP).await, 8);
    assert_eq!(c.account(ZHANG_SAN).await, zhang);

    // 402: the stock was taken before the charge failed; the rollback gave it back.
    let (status, body) = c.order(LI_SI, LAPTOP, 1).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(c.stock(LAPTOP).await, 8);
    assert_eq!(c.account(LI_SI).await.balance, 100);

    // Nested points: at the cap only the points' savepoint rolls back; the order stands.
    let (status, body) = c.order(WANG_WU, LAPTOP, 1).await;
    assert_eq!(status, 201, "{body}");
    let placed: Placed = serde_json::from_value(body).unwrap();
    assert_eq!(placed.points, 0);
    let wang = c.account(WANG_WU).await;
    assert_eq!((wang.balance, wang.points), (99_000, POINTS_CAP - 10));
    assert_eq!(c.stock(LAPTOP).await, 7);

    // 404 and 422.
    assert_eq!(c.order(ZHANG_SAN, 999, 1).await.0, 404);
    assert_eq!(c.order(999, BOOK, 1).await.0, 404);
    assert_eq!(c.order(ZHANG_SAN, BOOK, 0).await.0, 422);
    assert_eq!(c.get("/orders/999999").await.0, 404);
    assert_eq!(
        c.stock(BOOK).await,
        1000,
        "the failed book orders took nothing"
    );

    // Every attempt that got past validation was audited in its own transaction, also
    // those whose order rolled back.
    let audit = c.audit().await;
    let attempts: Vec<&str> = audit.iter().map(|e| e.detail.as_str()).collect();
    assert_eq!(
        attempts,
        [
            "account=1 product=100 quantity=2",
            "account=1 product=100 quantity=9",
            "account=2 product=100 quantity=1",
            "account=3 product=100 quantity=1",
            "account=1 product=999 quantity=1",
            "account=999 product=200 quantity=1",
        ]
    );
    assert!(audit.iter().all(|e| e.action == "ORDER_ATTEMPT"));
}

/// How many concurrent transfers run.
const TRANSFERS: i64 = 50;

/// 50 concurrent SERIALIZABLE transfers between four accounts: the sum of the balances is
/// conserved, and each balance is exactly what the successful transfers made it.
async fn transfers(c: Client) {
    let (status, body) = c
        .post(
            "/transfers",
            json!({ "from": LI_SI, "to": ZHANG_SAN, "amount": 500 }),
        )
        .await;
    assert_eq!(status, 402, "{body}");
    let (status, _) = c
        .post(
            "/transfers",
            json!({ "from": ZHANG_SAN, "to": ZHANG_SAN, "amount": 1 }),
        )
        .await;
    assert_eq!(status, 422);

    let plan: Vec<(i64, i64, i64)> = (0..TRANSFERS)
        .map(|i| {
            let from = FIRST_TRANSFER_ACCOUNT + i % TRANSFER_ACCOUNTS;
            let to = FIRST_TRANSFER_ACCOUNT + (i + 1 + i / 7) % TRANSFER_ACCOUNTS;
            let to = if to == from {
                FIRST_TRANSFER_ACCOUNT + (i + 2) % TRANSFER_ACCOUNTS
            } else {
                to
            };
            (from, to, 1 + (i * 37) % 300)
        })
        .collect();
    let c = &c;
    let results =
        futures_util::future::join_all(plan.iter().map(|&(from, to, amount)| async move {
            c.post(
                "/transfers",
                json!({ "from": from, "to": to, "amount": amount }),
            )
            .await
        }))
        .await;

    let mut expected: HashMap<i64, i64> = (0..TRANSFER_ACCOUNTS)
        .map(|i| (FIRST_TRANSFER_ACCOUNT + i, TRANSFER_BALANCE))
        .collect();
    let mut ok = 0;
    for (&(from, to, amount), (status, body)) in plan.iter().zip(&results) {
        match status {
            200 => {
                let _: Transferred = serde_json::from_value(body.clone()).unwrap();
                *expected.get_mut(&from).unwrap() -= amount;
                *expected.get_mut(&to).unwrap() += amount;
                ok += 1;
            }
            // Not applied: a short balance, or a conflict that outlasted its retries.
            402 | 503 => {}
            other => panic!("transfer {from}->{to} {amount}: {other} {body}"),
        }
    }
    let statuses = results
        .iter()
        .fold(HashMap::<u16, u32>::new(), |mut m, (s, _)| {
            *m.entry(*s).or_default() += 1;
            m
        });
    eprintln!("transfers by status: {statuses:?}");
    assert!(ok > 0, "{results:?}");
    let mut total = 0;
    for (&id, &balance) in &expected {
        let account = c.account(id).await;
        assert_eq!(account.balance, balance, "account {id}");
        assert!(account.balance >= 0);
        total += account.balance;
    }
    assert_eq!(total, TRANSFER_ACCOUNTS * TRANSFER_BALANCE);
}

static NAMESPACES: AtomicU32 = AtomicU32::new(0);

fn namespace() -> String {
    format!(
        "orders_api_{}_{}",
        std::process::id(),
        NAMESPACES.fetch_add(1, Ordering::Relaxed)
    )
}

async fn on_sqlite(scenario: impl AsyncFnOnce(Client)) {
    let dir = tempfile::tempdir().unwrap();
    let api = orders_api::sqlite::connect(dir.path()).await.unwrap();
    scenario(serve(orders_api::sqlite::router(api)).await).await;
}

/// `on_postgres` and `on_mysql`: the scenario on a namespace of its own on that server
/// (a schema, a database), dropped afterwards. When the server is down it is skipped, or
/// fails under `TX_TEST_REQUIRE_SERVERS=1`.
macro_rules! on_server {
    ($name:ident, $probe:ident, $url:ident, $backend:ident, $drop:ident) => {
        async fn $name(scenario: impl AsyncFnOnce(Client)) {
            if tx_tests::$probe(1).await.is_none() {
                return;
            }
            let (url, namespace) = (tx_tests::$url(), namespace());
            let api = orders_api::$backend::connect(&url, &namespace)
                .await
                .unwrap();
            scenario(serve(orders_api::$backend::router(api)).await).await;
            orders_api::$backend::$drop(&url, &namespace).await.unwrap();
        }
    };
}

on_server!(on_postgres, pg_pool, pg_url, postgres, drop_schema);
on_server!(on_mysql, mysql_pool, mysql_url, mysql, drop_database);

#[tokio::test]
async fn sqlite_orders() {
    on_sqlite(orders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_transfers() {
    on_sqlite(transfers).await;
}

#[tokio::test]
async fn postgres_orders() {
    on_postgres(orders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_transfers() {
    on_postgres(transfers).await;
}

#[tokio::test]
async fn mysql_orders() {
    on_mysql(orders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_transfers() {
    on_mysql(transfers).await;
}
