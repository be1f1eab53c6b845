//! The shop demo (`cargo run --example shop`) run end to end on SQLite, PostgreSQL and
//! MariaDB, with every fact it prints asserted: balances, stock, order states, audit rows,
//! the order of the synchronization hooks, the 97/3 batch, the retried conflict.
//!
//! The test runs the demo's library (`tx_examples::shop`), exactly the code the example prints.

use tx_examples::shop;

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use shop::ids::*;
use shop::{Account, Backend, DemoReport, Order, Product, RetryReport, ShopError, Target};

fn account(id: i64, name: &str, balance: i64) -> Account {
    Account {
        id,
        name: name.to_owned(),
        balance,
    }
}

fn order(
    id: i64,
    user_id: i64,
    product_id: i64,
    quantity: i64,
    state: &str,
    note: Option<&str>,
) -> Order {
    Order {
        id,
        user_id,
        product_id,
        quantity,
        state: state.to_owned(),
        note: note.map(str::to_owned),
    }
}

fn product(id: i64, name: &str, stock: i64, price: i64) -> Product {
    Product {
        id,
        name: name.to_owned(),
        stock,
        price,
    }
}

/// Asserts that `$step` ended as `$pat`, showing the step otherwise.
macro_rules! assert_step {
    ($step:expr, $pat:pat) => {
        assert!(matches!($step.result, $pat), "{:?}", $step)
    };
}

/// Asserts every case's outcome and rows. `backend` says which backend ran it.
fn assert_report(r: &DemoReport, backend: Backend) {
    assert_eq!(r.backend, backend);

    // [1] Bank transfer.
    let t = &r.transfer;
    assert_step!(t.steps[0], Ok(()));
    assert_step!(
        t.steps[1],
        Err(ShopError::InsufficientBalance {
            account: ALICE,
            needed: 500
        })
    );
    assert_step!(t.steps[2], Err(ShopError::AccountNotFound(NOBODY)));
    assert_eq!(
        t.accounts,
        vec![account(ALICE, "alice", 100), account(BOB, "bob", 100)]
    );
    assert_eq!((t.total_before, t.total_after), (200, 200));

    // [2] Order placement.
    let o = &r.orders;
    let first = *o.steps[0]
        .result
        .as_ref()
        .expect("first laptop order commits");
    assert_step!(
        o.steps[1],
        Err(ShopError::OutOfStock {
            product: LAPTOP,
            requested: 20
        })
    );
    assert_step!(
        o.steps[2],
        Err(ShopError::InsufficientBalance {
            account: ZHANG_SAN,
            needed: 5000
        })
    );
    assert_eq!(o.product, product(LAPTOP, "laptop", 9, 5000));
    assert_eq!(o.account, account(ZHANG_SAN, "zhang san", 0));
    assert_eq!(
        o.orders,
        vec![order(first, ZHANG_SAN, LAPTOP, 1, "PAID", None)]
    );

    // [3] Audit log: the failed attempt's entry survives, in its own database on SQLite;
    // zhang san's three attempts (two failed) are all audited too.
    let a = &r.audit;
    assert_step!(
        a.step,
        Err(ShopError::InsufficientBalance {
            account: LI_SI,
            needed: 1000
        })
    );
    assert_eq!(a.audit.len(), 1, "{:?}", a.audit);
    assert_eq!(a.audit[0].action, "ORDER_ATTEMPT");
    assert_eq!(
        a.audit[0].detail,
        format!("user={LI_SI} product={PHONE} qty=1")
    );
    assert!(a.orders.is_empty(), "{:?}", a.orders);
    assert_eq!(a.account, account(LI_SI, "li si", 100));
    assert_eq!(a.audit_in_second_database, backend == Backend::Sqlite);
    let details: Vec<_> = o.audit.iter().map(|e| e.detail.as_str()).collect();
    assert_eq!(
        details,
        [
            "user=1 product=100 qty=1",
            "user=1 product=100 qty=20",
            "user=1 product=100 qty=1"
        ]
    );

    // [4] Gift in a NESTED scope.
    let g = &r.gift;
    let (gift_order, dropped) = g
        .step
        .result
        .as_ref()
        .expect("the order commits without its gift");
    let why = "gift product 200 is out of stock";
    assert_eq!(dropped.as_deref(), Some(why));
    let note = format!("no gift: {why}");
    assert_eq!(
        g.orders,
        vec![order(*gift_order, WANG_WU, PHONE, 1, "PAID", Some(&note))]
    );
    assert!(
        g.gifts.is_empty(),
        "the gift row was rolled back to the savepoint: {:?}",
        g.gifts
    );
    assert_eq!(g.product, product(PHONE, "phone", 99, 1000));
    assert_eq!(g.gift_product, product(MOUSE_GIFT, "mouse (gift)", 0, 0));
    assert_eq!(g.account, account(WANG_WU, "wang wu", 99_000));

    // [5] Risk check: rejected commits (WAIT_AUDIT), service down rolls back.
    let k = &r.risk;
    let Err(ShopError::RiskRejected { order_id, reason }) = &k.rejected.result else {
        panic!("expected RiskRejected, got {:?}", k.rejected);
    };
    assert_eq!(reason, "amount 30000 over 20000");
    assert_step!(k.down, Err(ShopError::RiskServiceDown));
    assert_eq!(
        k.orders,
        vec![order(
            *order_id,
            ZHAO_LIU,
            TABLET,
            30,
            "WAIT_AUDIT",
            Some("risk check failed: amount 30000 over 20000")
        )]
    );
    assert_eq!(k.product, product(TABLET, "tablet", 70, 1000));

    // [6] MQ after commit, and the order of the synchronization phases.
    let h = &r.hooks;
    let mq_order = *h
        .committed
        .result
        .as_ref()
        .expect("first headphones order commits");
    assert_eq!(
        h.committed_timeline,
        vec![
            format!("body: order #{mq_order} inserted, MQ send registered for after commit"),
            "before_commit(read_only=false)".to_owned(),
            "before_completion".to_owned(),
            "after_commit".to_owned(),
            format!("MQ sent: order.cancel.delay order=#{mq_order}"),
            "after_completion(Committed)".to_owned(),
        ]
    );
    assert_step!(
        h.rolled_back,
        Err(ShopError::InsufficientBalance {
            account: SUN_QI,
            needed: 200
        })
    );
    assert_eq!(
        h.rolled_back_timeline.len(),
        3,
        "{:?}",
        h.rolled_back_timeline
    );
    assert!(h.rolled_back_timeline[0].starts_with("body: order #"));
    assert!(h.rolled_back_timeline[0].ends_with(" inserted, MQ send registered for after commit"));
    assert_eq!(
        h.rolled_back_timeline[1..],
        ["before_completion", "after_completion(RolledBack)"]
    );
    assert_eq!(
        h.sent,
        vec![format!("order.cancel.delay order=#{mq_order}")]
    );
    assert_eq!(
        h.orders,
        vec![order(mq_order, SUN_QI, HEADPHONES, 1, "PAID", None)]
    );
    assert_eq!(h.account, account(SUN_QI, "sun qi", 100));

    // [7] Batch delivery: 97 delivered, 3 failed and recorded.
    let b = &r.batch;
    assert_eq!(b.result.delivered.len(), 97);
    assert_eq!(b.expected_failures.len(), 3);
    let failed: Vec<i64> = b.result.failed.iter().map(|f| f.order_id).collect();
    assert_eq!(failed, b.expected_failures);
    for f in &b.result.failed {
        assert_eq!(
            f.reason,
            format!("order {} has no delivery address", f.order_id)
        );
        assert!(!b.result.delivered.contains(&f.order_id));
    }
    assert_eq!((b.delivered_rows, b.paid_rows, b.shipments), (97, 3, 97));
    assert_eq!(b.failure_rows, b.result.failed);

    // [8] Serialization conflict retried (PostgreSQL, MariaDB).
    match (&r.retry, backend) {
        (RetryReport::Skipped(why), Backend::Sqlite) => assert!(why.contains("SQLite"), "{why}"),
        (
            RetryReport::Ran {
                results,
                attempts,
                stock_before,
                product: sneaker,
            },
            Backend::Postgres | Backend::MySql,
        ) => {
            let mut left: Vec<i64> = results
                .iter()
                .map(|s| *s.result.as_ref().expect("both buyers succeed in the end"))
                .collect();
            left.sort_unstable();
            assert_eq!(left, [8, 9]);
            assert_eq!(
                attempts,
                &[1, 2],
                "exactly one buyer was aborted and retried once"
            );
            assert_eq!(*stock_before, 10);
            assert_eq!(sneaker, &product(SNEAKER, "limited sneaker", 8, 100));
        }
        (other, d) => panic!("unexpected retry report on {d:?}: {other:?}"),
    }

    // [9] Rollback-only.
    let z = &r.rollback_only;
    assert!(
        z.swallowed
            .result
            .as_ref()
            .is_err_and(ShopError::is_unexpected_rollback),
        "{:?}",
        z.swallowed
    );
    assert_step!(z.programmatic, Ok(None));
    assert!(z.orders.is_empty(), "{:?}", z.orders);
    assert_eq!(z.product, product(KEYBOARD, "keyboard", 10, 100));
    assert_eq!(z.coupon_used, 1);

    // What the demo prints says the same.
    let text = r.to_string();
    for line in [
        "    rows:    account #2 alice: balance 100",
        "    total 200 before, 200 after: no money lost",
        "    rows:    product #100 laptop: stock 9",
        "             account #1 zhang san: balance 0",
        "    orders:  none",
        "             gifts: 0",
        "             product #310 tablet: stock 70",
        "      . after_completion(RolledBack)",
        "  deliver_all -> 97 delivered, 3 failed",
        "    rows:    97 orders DELIVERED, 3 still PAID, 97 shipments",
        "             product #330 keyboard: stock 10",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let retry_line = if backend == Backend::Sqlite {
        "  skipped: SQLite runs one writer at a time"
    } else {
        "    runs per call: [1, 2]"
    };
    assert!(
        text.contains(retry_line),
        "missing {retry_line:?} in:\n{text}"
    );
}

#[tokio::test]
async fn shop_demo_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let shop = shop::sqlite::connect(dir.path())
        .await
        .expect("set up on SQLite");
    let report = shop.run_all().await.expect("demo runs");
    assert_report(&report, Backend::Sqlite);
}

/// The demo on a server: skipped when `$probe` finds it down (loudly), else run in a schema
/// or database of its own (`$connect`), which `$drop` removes afterwards whatever happened.
macro_rules! demo_on_server {
    ($probe:path, $url:path, $backend:expr, $server:literal, $connect:path, $drop:path) => {{
        // Probes the server: None (and a loud SKIPPED) when it is down.
        let Some(probe) = $probe(1).await else {
            return;
        };
        probe.pool().close().await;
        let url = $url();
        let namespace = tx_tests::unique_table("shop");
        let outcome = AssertUnwindSafe(async {
            let shop = $connect(&url, &namespace)
                .await
                .expect(concat!("set up on ", $server));
            let report = shop.run_all().await.expect("demo runs");
            assert_report(&report, $backend);
        })
        .catch_unwind()
        .await;
        $drop(&url, &namespace).await.unwrap();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }};
}

#[tokio::test]
async fn shop_demo_on_postgres() {
    demo_on_server!(
        tx_tests::pg_pool,
        tx_tests::pg_url,
        Backend::Postgres,
        "PostgreSQL",
        shop::postgres::connect,
        shop::postgres::drop_schema
    );
}

#[tokio::test]
async fn shop_demo_on_mariadb() {
    demo_on_server!(
        tx_tests::mysql_pool,
        tx_tests::mysql_url,
        Backend::MySql,
        "MariaDB",
        shop::mysql::connect,
        shop::mysql::drop_database
    );
}

#[test]
fn database_url_picks_the_backend() {
    assert_eq!(Target::from_url(None), Some(Target::Sqlite));
    assert_eq!(Target::from_url(Some("")), Some(Target::Sqlite));
    assert_eq!(
        Target::from_url(Some("postgres://postgres@127.0.0.1:5432/test")),
        Some(Target::Postgres(
            "postgres://postgres@127.0.0.1:5432/test".to_owned()
        ))
    );
    assert_eq!(
        Target::from_url(Some("mariadb://root@127.0.0.1:3306/test")),
        Some(Target::MySql("mysql://root@127.0.0.1:3306/test".to_owned()))
    );
    assert_eq!(Target::from_url(Some("oracle://x")), None);
}
