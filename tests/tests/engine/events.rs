//! Transactional events on PostgreSQL (the order-created example): each phase runs exactly
//! when it should for commit, rollback, rollback-only, timeout and cancellation, with the database state observed by the listener itself at the moment it
//! runs (through a fresh connection from the pool); RequiresNew, Nested and no-transaction
//! rules; ordering; fallback execution; failing listeners.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tx_sqlx::prelude::*;
use tx_sqlx::{BoxError, EventBus, ListenerHandle, PgTxPool, TransactionPhase};

/// The event: an order was created.
#[derive(Debug)]
struct OrderCreated {
    id: i64,
}

/// What the listeners write down.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    /// Waits until `n` lines are there (listeners of a cancelled call run in a spawned task).
    async fn wait_for(&self, n: usize) -> Vec<String> {
        let start = Instant::now();
        while self.0.lock().unwrap().len() < n && start.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.take()
    }
}

/// A test's database: the pool, its own `orders` table, and the log.
#[derive(Clone)]
struct Db {
    db: PgTxPool,
    table: String,
    log: Log,
}

async fn setup(max: u32, prefix: &str) -> Option<Db> {
    let db = tx_tests::pg_pool(max).await?;
    let table = tx_tests::unique_table(prefix);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id BIGINT PRIMARY KEY, note TEXT)"
    )))
    .execute(db.pool())
    .await
    .unwrap();
    Some(Db {
        db,
        table,
        log: Log::default(),
    })
}

impl Db {
    fn template(&self) -> TransactionTemplate {
        TransactionTemplate::new(self.db.clone())
    }

    /// Inserts through `&TxPool`: in the current task's transaction, or in autocommit.
    async fn insert(&self, id: i64, note: &str) -> Result<(), TxError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} (id, note) VALUES ($1, $2)",
            self.table
        )))
        .bind(id)
        .bind(note)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Whether row `id` is committed: read on a fresh connection from the pool, never the
    /// transaction's.
    async fn committed(&self, id: i64) -> bool {
        let mut conn = self.db.pool().acquire().await.unwrap();
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {} WHERE id = $1",
            self.table
        )))
        .bind(id)
        .fetch_one(&mut *conn)
        .await
        .unwrap()
            == 1
    }

    /// Whether row `id` is visible through `&TxPool` (inside the current transaction, if any).
    async fn visible_here(&self, id: i64) -> bool {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {} WHERE id = $1",
            self.table
        )))
        .bind(id)
        .fetch_one(&self.db)
        .await
        .unwrap()
            == 1
    }

    /// On a fresh connection, tries to insert row `id` (then rolls that back): `free` when
    /// no transaction holds an uncommitted row `id` any more, `exists` when it is committed,
    /// `locked` when a still open transaction holds it.
    async fn row_state(&self, id: i64) -> &'static str {
        let mut tx = self.db.pool().begin().await.unwrap();
        sqlx::query("SET LOCAL lock_timeout = '1s'")
            .execute(&mut *tx)
            .await
            .unwrap();
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} (id, note) VALUES ($1, 'probe')",
            self.table
        )))
        .bind(id)
        .execute(&mut *tx)
        .await;
        let state = match r {
            Ok(_) => "free",
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => "exists",
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => "locked",
            Err(e) => panic!("probe insert failed: {e}"),
        };
        tx.rollback().await.unwrap();
        state
    }

    async fn ids(&self) -> Vec<i64> {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM {} ORDER BY id",
            self.table
        )))
        .fetch_all(self.db.pool())
        .await
        .unwrap()
    }

    /// A listener of `phase` that writes down what it sees of the order when it runs:
    /// `"{name} {id} committed={..}"`, plus `in_tx={..}` (visible through `&TxPool`) for
    /// `BeforeCommit`, and the probe's `row=..` for `AfterRollback`.
    fn observe(
        &self,
        bus: &EventBus,
        phase: TransactionPhase,
        name: &'static str,
    ) -> ListenerHandle {
        let d = self.clone();
        bus.listen(phase, move |e: Arc<OrderCreated>| {
            let d = d.clone();
            async move {
                let mut line = format!("{name} {} committed={}", e.id, d.committed(e.id).await);
                match phase {
                    TransactionPhase::BeforeCommit => {
                        line += &format!(" in_tx={}", d.visible_here(e.id).await);
                    }
                    TransactionPhase::AfterRollback => {
                        line += &format!(" row={}", d.row_state(e.id).await);
                    }
                    _ => {}
                }
                d.log.push(line);
            }
        })
    }

    /// One observing listener per phase.
    fn observe_all(&self, bus: &EventBus) {
        self.observe(bus, TransactionPhase::BeforeCommit, "before_commit");
        self.observe(bus, TransactionPhase::AfterCommit, "after_commit");
        self.observe(bus, TransactionPhase::AfterRollback, "after_rollback");
        self.observe(bus, TransactionPhase::AfterCompletion, "after_completion");
    }

    /// The order service: inserts order `id` and publishes `OrderCreated`, in the current
    /// scope.
    async fn create_order(&self, bus: &EventBus, id: i64) -> Result<(), TxError> {
        self.insert(id, "order").await?;
        bus.publish(OrderCreated { id }).await
    }

    async fn drop_table(&self) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {}",
            self.table
        )))
        .execute(self.db.pool())
        .await
        .unwrap();
    }
}

/// A listener body that panics (typed `()`, as a `panic!` alone would be `!`).
fn explode(message: &str) {
    panic!("{message}")
}

/// A test's database with a bus whose observing listeners watch every phase.
async fn observed(max: u32, prefix: &str) -> Option<(Db, EventBus)> {
    let d = setup(max, prefix).await?;
    let bus = EventBus::new();
    d.observe_all(&bus);
    Some((d, bus))
}

/// What the observing listeners write down for order `id` committed: not yet committed but
/// visible in the transaction before the commit, committed after it.
fn committed_order(id: i64) -> Vec<String> {
    vec![
        format!("before_commit {id} committed=false in_tx=true"),
        format!("after_commit {id} committed=true"),
        format!("after_completion {id} committed=true"),
    ]
}

/// What the observing listeners write down for order `id` rolled back: the row is gone
/// (`row=free`), nothing committed.
fn rolled_back_order(id: i64) -> Vec<String> {
    vec![
        format!("after_rollback {id} committed=false row=free"),
        format!("after_completion {id} committed=false"),
    ]
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

// ---------------------------------------------------------------------------------------
// Each phase, for each way a transaction ends
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_runs_before_commit_in_the_transaction_and_after_commit_on_committed_data() {
    let Some((d, bus)) = observed(4, "ev_commit").await else {
        return;
    };
    // A BeforeCommit listener's statements are part of the transaction (an outbox row).
    let d2 = d.clone();
    bus.listen(
        TransactionPhase::BeforeCommit,
        move |e: Arc<OrderCreated>| {
            let d = d2.clone();
            async move { d.insert(e.id + 1000, "outbox").await }
        },
    );
    // An AfterCommit listener writing the business log through `&TxPool` runs outside the
    // transaction: its row is committed at once.
    let d3 = d.clone();
    bus.listen(
        TransactionPhase::AfterCommit,
        move |e: Arc<OrderCreated>| {
            let d = d3.clone();
            async move {
                d.insert(e.id + 2000, "business log").await?;
                d.log.push(format!(
                    "business log {} committed={}",
                    e.id,
                    d.committed(e.id + 2000).await
                ));
                Ok::<_, TxError>(())
            }
        },
    );

    // The probe used by the AfterRollback observers tells an open transaction holding the
    // row (before the commit) from a committed row (after it).
    let d4 = d.clone();
    bus.listen(
        TransactionPhase::BeforeCommit,
        move |e: Arc<OrderCreated>| {
            let d = d4.clone();
            async move {
                d.log.push(format!(
                    "probe before commit row={}",
                    d.row_state(e.id).await
                ));
            }
        },
    );
    let d5 = d.clone();
    bus.listen(
        TransactionPhase::AfterCommit,
        move |e: Arc<OrderCreated>| {
            let d = d5.clone();
            async move {
                d.log.push(format!(
                    "probe after commit row={}",
                    d.row_state(e.id).await
                ));
            }
        },
    );

    let r = d
        .template()
        .execute(|_| async {
            d.create_order(&bus, 1).await?;
            d.log
                .push(format!("body end committed={}", d.committed(1).await));
            Ok::<_, TxError>(1)
        })
        .await;
    assert_eq!(r.unwrap(), 1);
    assert_eq!(
        d.log.take(),
        strings(&[
            "body end committed=false",
            "before_commit 1 committed=false in_tx=true",
            "probe before commit row=locked",
            "after_commit 1 committed=true",
            "business log 1 committed=true",
            "probe after commit row=exists",
            "after_completion 1 committed=true",
        ])
    );
    assert_eq!(d.ids().await, vec![1, 1001, 2001]);
    d.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_runs_after_rollback_with_the_order_gone() {
    let Some((d, bus)) = observed(4, "ev_rollback").await else {
        return;
    };
    let r = d
        .template()
        .execute(|_| async {
            d.create_order(&bus, 1).await?;
            Err::<(), _>(TxError::UnexpectedRollback)
        })
        .await;
    assert!(matches!(r, Err(TxError::UnexpectedRollback)));
    // row=free: the transaction no longer holds the row when the listener runs (a still
    // open transaction would make the probe wait for its lock).
    assert_eq!(d.log.take(), rolled_back_order(1));
    assert!(d.ids().await.is_empty());

    // A failing statement rolls back the same way.
    let r = d
        .template()
        .execute(|_| async {
            d.create_order(&bus, 2).await?;
            sqlx::query("SELECT 1/0").execute(&d.db).await?;
            Ok::<_, TxError>(())
        })
        .await;
    assert!(r.is_err());
    assert_eq!(d.log.take(), rolled_back_order(2));
    assert!(d.ids().await.is_empty());
    d.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_only_runs_after_rollback() {
    let Some((d, bus)) = observed(4, "ev_rbonly").await else {
        return;
    };

    // The owner marks its own transaction: rolled back, the call returns Ok.
    let (d, bus) = (&d, &bus);
    let r = d
        .template()
        .execute(|status| async move {
            d.create_order(bus, 1).await?;
            status.set_rollback_only();
            Ok::<_, TxError>(())
        })
        .await;
    assert!(r.is_ok());
    assert_eq!(d.log.take(), rolled_back_order(1));

    // A participant publishes and marks the transaction: the event follows the owner's
    // transaction, which rolls back with UnexpectedRollback.
    let t = d.template();
    let r = t
        .execute(|_| async {
            t.execute(|_| async {
                d.create_order(bus, 2).await?;
                tx_sqlx::set_rollback_only()
            })
            .await?;
            d.log.push("owner end".into());
            Ok::<_, TxError>(())
        })
        .await;
    assert!(matches!(r, Err(TxError::UnexpectedRollback)));
    assert_eq!(
        d.log.take(),
        [strings(&["owner end"]), rolled_back_order(2)].concat()
    );
    assert!(d.ids().await.is_empty());
    d.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_runs_after_rollback() {
    let Some((d, bus)) = observed(4, "ev_timeout").await else {
        return;
    };
    let started = Instant::now();
    let r = d
        .template()
        .timeout(Duration::from_millis(500))
        .execute(|_| async {
            d.create_order(&bus, 1).await?;
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, TxError>(())
        })
        .await;
    assert!(matches!(r, Err(TxError::Timeout)), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(d.log.take(), rolled_back_order(1));
    assert!(d.ids().await.is_empty());
    d.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_runs_after_rollback() {
    let Some((d, bus)) = observed(4, "ev_cancel").await else {
        return;
    };
    let (inserted_tx, inserted_rx) = tokio::sync::oneshot::channel::<()>();
    let t = d.template();
    let (d, bus) = (&d, &bus);
    // The body runs once: it takes the sender itself.
    let call = t.execute(|_| async move {
        d.create_order(bus, 1).await?;
        let _ = inserted_tx.send(());
        std::future::pending::<()>().await;
        Ok::<_, TxError>(())
    });
    // Drop the call once the order is written and the event published.
    tokio::select! {
        _ = call => panic!("the call never ends on its own"),
        r = inserted_rx => r.unwrap(),
    }
    assert_eq!(d.log.wait_for(2).await, rolled_back_order(1));
    assert!(d.ids().await.is_empty());
    d.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_commit_listener_error_rolls_back_everything_and_is_returned() {
    let Some(d) = setup(4, "ev_bcfail").await else {
        return;
    };
    let bus = EventBus::new();
    // First listener writes to the transaction, the second vetoes the commit.
    let d2 = d.clone();
    bus.listen(
        TransactionPhase::BeforeCommit,
        move |e: Arc<OrderCreated>| {
            let d = d2.clone();
            async move { d.insert(e.id + 1000, "outbox").await }
        },
    );
    bus.listen(TransactionPhase::BeforeCommit, |e: Arc<OrderCreated>| async move {
        Err::<(), _>(format!("order {} failed validation", e.id))
    });
    d.observe(&bus, TransactionPhase::AfterCommit, "after_commit");
    d.observe(&bus, TransactionPhase::AfterRollback, "after_rollback");
    let r = d
        .template()
        .execute(|_| async { d.create_order(&bus, 1).await })
        .await;
    match r {
        Err(TxError::BeforeCommit(e)) => assert_eq!(e.to_string(), "order 1 failed validation"),
        other => panic!("expected TxError::BeforeCommit, got {other:?}"),
    }
    assert_eq!(
        d.log.take(),
        strings(&["after_rollback 1 committed=false row=free"])
    );
    assert!(
        d.ids().await.is_empty(),
        "the order and the outbox row are rolled back"
    );
    d.drop_table().await;
}

/// Collects what a `tracing` subscriber writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// Current-thread runtime: the capturing subscriber is the thread's default, and every
// listener runs on this thread.
#[tokio::test]
async fn failing_after_commit_listeners_do_not_affect_the_call_or_each_other() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::ERROR)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let Some(d) = setup(4, "ev_acfail").await else {
        return;
    };
    let bus = EventBus::new();
    bus.listen(
        TransactionPhase::AfterCommit,
        |_: Arc<OrderCreated>| async { Err::<(), _>("message broker down") },
    );
    bus.listen(
        TransactionPhase::AfterCommit,
        |_: Arc<OrderCreated>| async { explode("bug in a listener") },
    );
    d.observe(&bus, TransactionPhase::AfterCommit, "after_commit");
    bus.listen(
        TransactionPhase::AfterRollback,
        |_: Arc<OrderCreated>| async { explode("bug in a rollback listener") },
    );
    d.observe(&bus, TransactionPhase::AfterRollback, "after_rollback");
    bus.listen(
        TransactionPhase::AfterCompletion,
        |_: Arc<OrderCreated>| async { Err::<(), _>("completion listener failed") },
    );
    d.observe(&bus, TransactionPhase::AfterCompletion, "after_completion");

    let r = d
        .template()
        .execute(|_| async {
            d.create_order(&bus, 1).await?;
            Ok::<_, TxError>("committed")
        })
        .await;
    assert_eq!(r.unwrap(), "committed");
    assert_eq!(
        d.log.take(),
        strings(&[
            "after_commit 1 committed=true",
            "after_completion 1 committed=true"
        ])
    );
    assert_eq!(d.ids().await, vec![1]);
    let logged = capture.text();
    for line in [
        "ERROR tx: AfterCommit listener of engine::events::OrderCreated failed: message broker down",
        "ERROR tx: AfterCommit listener of engine::events::OrderCreated panicked: bug in a listener",
        "ERROR tx: AfterCompletion listener of engine::events::OrderCreated failed: completion listener failed",
    ] {
        assert!(logged.contains(line), "{line:?} not logged in:\n{logged}");
    }

    let r = d
        .template()
        .execute(|_| async {
            d.create_order(&bus, 2).await?;
            Err::<(), _>(TxError::UnexpectedRollback)
        })
        .await;
    assert!(matches!(r, Err(TxError::UnexpectedRollback)));
    assert_eq!(d.log.take(), rolled_back_order(2));
    assert_eq!(d.ids().await, vec![1]);
    assert!(
        capture
            .text()
            .contains("ERROR tx: AfterRollback listener of engine::events::OrderCreated panicked: bug in a rollback listener"),
        "{}",
        capture.text()
    );
    d.drop_table().await;
}

// ---------------------------------------------------------------------------------------
// Which transaction an event follows
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requires_new_event_follows_the_inner_transaction() {
    let Some((d, bus)) = observed(5, "ev_reqnew").await else {
        return;
    };
    let t = d.template();
    let inner = d.template().propagation(Propagation::RequiresNew);

    // Inner commits, outer rolls back: the inner event's AfterCommit runs when the inner
    // transaction commits, before the outer one ends; the outer event rolls back.
    let r = t
        .execute(|_| async {
            d.create_order(&bus, 1).await?;
            inner
                .execute(|_| async { d.create_order(&bus, 2).await })
                .await?;
            d.log.push(format!(
                "inner returned, outer order committed={}",
                d.committed(1).await
            ));
            Err::<(), _>(TxError::UnexpectedRollback)
        })
        .await;
    assert!(r.is_err());
    assert_eq!(
        d.log.take(),
        [
            committed_order(2),
            strings(&["inner returned, outer order committed=false"]),
            rolled_back_order(1)
        ]
        .concat()
    );
    assert_eq!(d.ids().await, vec![2]);

    // Inner rolls back, outer commits.
    let r = t
        .execute(|_| async {
            d.create_order(&bus, 3).await?;
            let r = inner
                .execute(|_| async {
                    d.create_order(&bus, 4).await?;
                    Err::<(), _>(TxError::UnexpectedRollback)
                })
                .await;
            assert!(r.is_err());
            d.log.push("inner failed".into());
            Ok::<_, TxError>(())
        })
        .await;
    r.unwrap();
    assert_eq!(
        d.log.take(),
        [
            rolled_back_order(4),
            strings(&["inner failed"]),
            committed_order(3)
        ]
        .concat()
    );
    assert_eq!(d.ids().await, vec![2, 3]);
    d.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_savepoint_rollback_never_runs_after_commit_for_its_events() {
    let Some(d) = setup(4, "ev_nested").await else {
        return;
    };
    let bus = EventBus::new();
    d.observe(&bus, TransactionPhase::AfterCommit, "after_commit");
    d.observe(&bus, TransactionPhase::AfterCompletion, "after_completion");
    // Not the probing observer: the savepoint rolls back inside a still open transaction.
    let d2 = d.clone();
    bus.listen(
        TransactionPhase::AfterRollback,
        move |e: Arc<OrderCreated>| {
            let d = d2.clone();
            async move {
                d.log.push(format!(
                    "after_rollback {} committed={}",
                    e.id,
                    d.committed(e.id).await
                ));
            }
        },
    );
    let nested = d.template().propagation(Propagation::Nested);
    d.template()
        .execute(|_| async {
            d.create_order(&bus, 1).await?;
            let r = nested
                .execute(|_| async {
                    d.create_order(&bus, 2).await?;
                    Err::<(), _>(TxError::UnexpectedRollback)
                })
                .await;
            assert!(r.is_err());
            d.log.push(format!(
                "savepoint rolled back, order 2 here={}",
                d.visible_here(2).await
            ));
            nested
                .execute(|_| async { d.create_order(&bus, 3).await })
                .await?;
            d.log.push("savepoint released".into());
            Ok::<_, TxError>(())
        })
        .await
        .unwrap();
    assert_eq!(
        d.log.take(),
        strings(&[
            "after_rollback 2 committed=false",
            "after_completion 2 committed=false",
            "savepoint rolled back, order 2 here=false",
            "savepoint released",
            "after_commit 1 committed=true",
            "after_commit 3 committed=true",
            "after_completion 1 committed=true",
            "after_completion 3 committed=true",
        ])
    );
    assert_eq!(d.ids().await, vec![1, 3]);
    d.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_transaction_only_fallback_listeners_run_and_at_once() {
    let Some((d, bus)) = observed(4, "ev_notx").await else {
        return;
    };
    d.observe(&bus, TransactionPhase::AfterCommit, "fallback_after_commit")
        .fallback_execution(true);
    d.observe(
        &bus,
        TransactionPhase::BeforeCommit,
        "fallback_before_commit",
    )
    .fallback_execution(true);

    // Outside every scope: the insert autocommitted; only the fallback listeners run, inside
    // publish.
    d.create_order(&bus, 1).await.unwrap();
    d.log.push("published".into());
    assert_eq!(
        d.log.take(),
        strings(&[
            "fallback_before_commit 1 committed=true in_tx=true",
            "fallback_after_commit 1 committed=true",
            "published",
        ])
    );

    // A scope without an actual transaction (Supports, Never, NotSupported) is the same.
    for (id, p) in [
        (2, Propagation::Supports),
        (3, Propagation::Never),
        (4, Propagation::NotSupported),
    ] {
        d.template()
            .propagation(p)
            .execute(|_| async {
                d.create_order(&bus, id).await?;
                d.log.push("published".into());
                Ok::<_, TxError>(())
            })
            .await
            .unwrap();
        let expected = [
            format!("fallback_before_commit {id} committed=true in_tx=true"),
            format!("fallback_after_commit {id} committed=true"),
            "published".to_owned(),
        ];
        assert_eq!(d.log.take(), expected, "{p:?}");
    }

    // NotSupported inside a transaction suspends it: nothing to follow either.
    d.template()
        .execute(|_| async {
            d.template()
                .propagation(Propagation::NotSupported)
                .execute(|_| async { d.create_order(&bus, 5).await })
                .await?;
            d.log.push("outer end".into());
            Ok::<_, TxError>(())
        })
        .await
        .unwrap();
    assert_eq!(
        d.log.take(),
        strings(&[
            "fallback_before_commit 5 committed=true in_tx=true",
            "fallback_after_commit 5 committed=true",
            "outer end",
        ])
    );

    // fallback_execution(false) again: skipped.
    let h = d
        .observe(&bus, TransactionPhase::AfterCommit, "toggled")
        .fallback_execution(true);
    d.create_order(&bus, 6).await.unwrap();
    assert_eq!(d.log.take().len(), 3);
    h.fallback_execution(false);
    d.create_order(&bus, 7).await.unwrap();
    assert_eq!(
        d.log.take(),
        strings(&[
            "fallback_before_commit 7 committed=true in_tx=true",
            "fallback_after_commit 7 committed=true",
        ])
    );

    // In a transaction, fallback listeners wait for it like the others.
    d.template()
        .execute(|_| async {
            d.create_order(&bus, 8).await?;
            d.log.push("body end".into());
            Ok::<_, TxError>(())
        })
        .await
        .unwrap();
    assert_eq!(
        d.log.take(),
        strings(&[
            "body end",
            "before_commit 8 committed=false in_tx=true",
            "fallback_before_commit 8 committed=false in_tx=true",
            "after_commit 8 committed=true",
            "fallback_after_commit 8 committed=true",
            "toggled 8 committed=true",
            "after_completion 8 committed=true",
        ])
    );
    assert_eq!(d.ids().await, (1..=8).collect::<Vec<_>>());
    d.drop_table().await;
}

// ---------------------------------------------------------------------------------------
// Ordering, plain listeners
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_run_by_order_then_registration_and_events_in_publish_order() {
    let Some(d) = setup(4, "ev_order").await else {
        return;
    };
    let bus = EventBus::new();
    let late = d.observe(&bus, TransactionPhase::AfterCommit, "a");
    d.observe(&bus, TransactionPhase::AfterCommit, "b")
        .order(10);
    d.observe(&bus, TransactionPhase::AfterCommit, "c");
    d.observe(&bus, TransactionPhase::AfterCommit, "d")
        .order(-10);
    d.observe(&bus, TransactionPhase::BeforeCommit, "y");
    d.observe(&bus, TransactionPhase::BeforeCommit, "x")
        .order(-1);

    let run = |ids: Vec<i64>| {
        let (d, bus) = (d.clone(), bus.clone());
        async move {
            d.template()
                .execute(|_| async {
                    for id in ids {
                        d.create_order(&bus, id).await?;
                    }
                    Ok::<_, TxError>(())
                })
                .await
                .unwrap();
        }
    };
    run(vec![1, 2]).await;
    assert_eq!(
        d.log.take(),
        strings(&[
            "x 1 committed=false in_tx=true",
            "y 1 committed=false in_tx=true",
            "x 2 committed=false in_tx=true",
            "y 2 committed=false in_tx=true",
            "d 1 committed=true",
            "a 1 committed=true",
            "c 1 committed=true",
            "b 1 committed=true",
            "d 2 committed=true",
            "a 2 committed=true",
            "c 2 committed=true",
            "b 2 committed=true",
        ])
    );

    // Re-ordering a registered listener through its handle.
    let late = late.order(20);
    run(vec![3]).await;
    assert_eq!(
        d.log.take(),
        strings(&[
            "x 3 committed=false in_tx=true",
            "y 3 committed=false in_tx=true",
            "d 3 committed=true",
            "c 3 committed=true",
            "b 3 committed=true",
            "a 3 committed=true",
        ])
    );
    assert!(late.remove());
    run(vec![4]).await;
    assert_eq!(
        d.log.take(),
        strings(&[
            "x 4 committed=false in_tx=true",
            "y 4 committed=false in_tx=true",
            "d 4 committed=true",
            "c 4 committed=true",
            "b 4 committed=true",
        ])
    );
    d.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listeners_run_at_publish_inside_the_transaction() {
    let Some(d) = setup(4, "ev_plain").await else {
        return;
    };
    let bus = EventBus::new();
    d.observe(&bus, TransactionPhase::AfterCommit, "after_commit");
    d.observe(&bus, TransactionPhase::AfterRollback, "after_rollback");
    // A plain listener: runs in publish, sees the uncommitted order through `&TxPool`, and its
    // own statement joins the transaction.
    let d2 = d.clone();
    bus.on(move |e: Arc<OrderCreated>| {
        let d = d2.clone();
        async move {
            d.log.push(format!(
                "plain {} committed={} in_tx={}",
                e.id,
                d.committed(e.id).await,
                d.visible_here(e.id).await
            ));
            if e.id == 2 {
                return Err(BoxError::from("plain listener refused"));
            }
            Ok(d.insert(e.id + 100, "audit").await?)
        }
    });
    d.template()
        .execute(|_| async {
            d.create_order(&bus, 1).await?;
            d.log.push("published".into());
            Ok::<_, TxError>(())
        })
        .await
        .unwrap();
    assert_eq!(
        d.log.take(),
        strings(&[
            "plain 1 committed=false in_tx=true",
            "published",
            "after_commit 1 committed=true",
        ])
    );
    assert_eq!(d.ids().await, vec![1, 101]);

    // Its error comes out of publish; propagated, it rolls back the transaction, and the
    // event's AfterRollback listener sees it.
    let r = d
        .template()
        .execute(|_| async { d.create_order(&bus, 2).await })
        .await;
    assert!(
        matches!(&r, Err(TxError::Listener(e)) if e.to_string() == "plain listener refused"),
        "{r:?}"
    );
    assert_eq!(
        d.log.take(),
        strings(&[
            "plain 2 committed=false in_tx=true",
            "after_rollback 2 committed=false row=free",
        ])
    );
    assert_eq!(d.ids().await, vec![1, 101]);
    d.drop_table().await;
}
