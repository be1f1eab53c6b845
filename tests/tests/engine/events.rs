//! Transactional events on PostgreSQL (the order-created example): each phase runs exactly
//! when it should for commit, rollback, rollback-only, timeout and cancellation, with the database state observed by the listener itself at the moment it
//! runs (through a fresh connection from the pool); RequiresNew, Nested and no-transaction
//! rules; ordering; fallback execution; failing listeners.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tx_sqlx::TransactionPhase::{self, AfterCommit, AfterCompletion, AfterRollback, BeforeCommit};
use tx_sqlx::prelude::*;
use tx_sqlx::{BoxError, EventBus, ListenerHandle, ListenerResult, PgTxPool};

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

    /// Registers a listener of `phase` that is handed this database along with the event.
    fn listen<F, Fut>(&self, bus: &EventBus, phase: TransactionPhase, f: F) -> ListenerHandle
    where
        F: Fn(Db, Arc<OrderCreated>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: ListenerResult,
    {
        let d = self.clone();
        bus.listen(phase, move |e: Arc<OrderCreated>| f(d.clone(), e))
    }

    /// A BeforeCommit listener writing an outbox row (`id + 1000`) for the order, in the
    /// transaction.
    fn write_outbox(&self, bus: &EventBus) {
        self.listen(bus, BeforeCommit, |d, e| async move {
            d.insert(e.id + 1000, "outbox").await
        });
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
        self.listen(bus, phase, move |d, e| async move {
            let mut line = format!("{name} {} committed={}", e.id, d.committed(e.id).await);
            match phase {
                BeforeCommit => {
                    line += &format!(" in_tx={}", d.visible_here(e.id).await);
                }
                AfterRollback => {
                    line += &format!(" row={}", d.row_state(e.id).await);
                }
                _ => {}
            }
            d.log.push(line);
        })
    }

    /// The order service: inserts order `id` and publishes `OrderCreated`, in the current
    /// scope.
    async fn create_order(&self, bus: &EventBus, id: i64) -> Result<(), TxError> {
        self.insert(id, "order").await?;
        bus.publish(OrderCreated { id }).await
    }

    /// In a scope of `t`: creates orders `ids`, then writes `then` down, at the end of the
    /// body.
    async fn create_in(
        &self,
        t: &TransactionTemplate,
        bus: &EventBus,
        ids: &[i64],
        then: Option<&str>,
    ) -> Result<(), TxError> {
        t.execute(|_| async {
            for &id in ids {
                self.create_order(bus, id).await?;
            }
            if let Some(line) = then {
                self.log.push(line.to_owned());
            }
            Ok(())
        })
        .await
    }

    /// In a transaction of its own that commits: creates order `id`, then writes `then`
    /// down, at the end of the body.
    async fn commit_order(&self, bus: &EventBus, id: i64, then: &str) {
        self.create_in(&self.template(), bus, &[id], Some(then))
            .await
            .unwrap();
    }

    /// In a scope of `t`: creates order `id`, then fails, so that the scope rolls back.
    async fn fail_order(&self, t: &TransactionTemplate, bus: &EventBus, id: i64) -> TxError {
        t.execute(|_| async {
            self.create_order(bus, id).await?;
            Err::<(), _>(TxError::UnexpectedRollback)
        })
        .await
        .unwrap_err()
    }

    /// Asserts the log is `lines`, and empties it.
    fn expect(&self, lines: &[&str]) {
        self.expect_all(&[strings(lines)]);
    }

    /// Asserts the log is `parts`, one after the other, and empties it.
    fn expect_all(&self, parts: &[Vec<String>]) {
        assert_eq!(self.log.take(), parts.concat());
    }

    /// Asserts the observers wrote down order `id` rolled back (waiting for them, as those of
    /// a cancelled call run in a spawned task) and that no row is left, then drops the table.
    async fn finish_rolled_back(&self, id: i64) {
        assert_eq!(self.log.wait_for(2).await, rolled_back_order(id));
        self.finish(&[]).await;
    }

    /// Asserts the rows left are `ids`, then drops the table.
    async fn finish(&self, ids: &[i64]) {
        assert_eq!(self.ids().await, ids);
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

/// Every phase, each observed under its own name by [`observed`].
const ALL_PHASES: &[TransactionPhase] =
    &[BeforeCommit, AfterCommit, AfterRollback, AfterCompletion];

/// A test's database (its own `orders` table) with a bus whose observing listeners watch
/// `phases`, each named after its phase (`before_commit`, `after_commit`, `after_rollback`,
/// `after_completion`).
async fn observed(max: u32, prefix: &str, phases: &[TransactionPhase]) -> Option<(Db, EventBus)> {
    let db = tx_tests::pg_pool(max).await?;
    let table = tx_tests::unique_table(prefix);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id BIGINT PRIMARY KEY, note TEXT)"
    )))
    .execute(db.pool())
    .await
    .unwrap();
    let log = Log::default();
    let d = Db { db, table, log };
    let bus = EventBus::new();
    for &phase in phases {
        let name = match phase {
            BeforeCommit => "before_commit",
            AfterCommit => "after_commit",
            AfterRollback => "after_rollback",
            AfterCompletion => "after_completion",
        };
        d.observe(&bus, phase, name);
    }
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
    let Some((d, bus)) = observed(4, "ev_commit", ALL_PHASES).await else {
        return;
    };
    // A BeforeCommit listener's statements are part of the transaction (an outbox row).
    d.write_outbox(&bus);
    // An AfterCommit listener writing the business log through `&TxPool` runs outside the
    // transaction: its row is committed at once.
    d.listen(&bus, AfterCommit, |d, e| async move {
        d.insert(e.id + 2000, "business log").await?;
        let committed = d.committed(e.id + 2000).await;
        d.log
            .push(format!("business log {} committed={committed}", e.id));
        Ok::<_, TxError>(())
    });
    // The probe used by the AfterRollback observers tells an open transaction holding the
    // row (before the commit) from a committed row (after it).
    for (phase, when) in [(BeforeCommit, "before"), (AfterCommit, "after")] {
        d.listen(&bus, phase, move |d, e| async move {
            let row = d.row_state(e.id).await;
            d.log.push(format!("probe {when} commit row={row}"));
        });
    }

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
    d.expect(&[
        "body end committed=false",
        "before_commit 1 committed=false in_tx=true",
        "probe before commit row=locked",
        "after_commit 1 committed=true",
        "business log 1 committed=true",
        "probe after commit row=exists",
        "after_completion 1 committed=true",
    ]);
    d.finish(&[1, 1001, 2001]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_runs_after_rollback_with_the_order_gone() {
    let Some((d, bus)) = observed(4, "ev_rollback", ALL_PHASES).await else {
        return;
    };
    let r = d.fail_order(&d.template(), &bus, 1).await;
    assert!(matches!(r, TxError::UnexpectedRollback));
    // row=free: the transaction no longer holds the row when the listener runs (a still
    // open transaction would make the probe wait for its lock).
    d.expect_all(&[rolled_back_order(1)]);
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
    d.finish_rolled_back(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_only_runs_after_rollback() {
    let Some((d, bus)) = observed(4, "ev_rbonly", ALL_PHASES).await else {
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
    d.expect_all(&[rolled_back_order(1)]);

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
    d.expect_all(&[strings(&["owner end"]), rolled_back_order(2)]);
    d.finish(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_runs_after_rollback() {
    let Some((d, bus)) = observed(4, "ev_timeout", ALL_PHASES).await else {
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
    d.finish_rolled_back(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_runs_after_rollback() {
    let Some((d, bus)) = observed(4, "ev_cancel", ALL_PHASES).await else {
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
    d.finish_rolled_back(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_commit_listener_error_rolls_back_everything_and_is_returned() {
    let Some((d, bus)) = observed(4, "ev_bcfail", &[AfterCommit, AfterRollback]).await else {
        return;
    };
    // First listener writes to the transaction, the second vetoes the commit.
    d.write_outbox(&bus);
    bus.listen(BeforeCommit, |e: Arc<OrderCreated>| async move {
        Err::<(), _>(format!("order {} failed validation", e.id))
    });
    let r = d
        .template()
        .execute(|_| async { d.create_order(&bus, 1).await })
        .await;
    match r {
        Err(TxError::BeforeCommit(e)) => assert_eq!(e.to_string(), "order 1 failed validation"),
        other => panic!("expected TxError::BeforeCommit, got {other:?}"),
    }
    d.expect(&["after_rollback 1 committed=false row=free"]);
    // The order and the outbox row are rolled back.
    d.finish(&[]).await;
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

    let Some((d, bus)) = observed(4, "ev_acfail", &[]).await else {
        return;
    };
    // Each failing listener is registered before the observer of its phase, which still runs.
    bus.listen(AfterCommit, |_: Arc<OrderCreated>| async {
        Err::<(), _>("message broker down")
    });
    bus.listen(AfterCommit, |_: Arc<OrderCreated>| async {
        explode("bug in a listener")
    });
    d.observe(&bus, AfterCommit, "after_commit");
    bus.listen(AfterRollback, |_: Arc<OrderCreated>| async {
        explode("bug in a rollback listener")
    });
    d.observe(&bus, AfterRollback, "after_rollback");
    bus.listen(AfterCompletion, |_: Arc<OrderCreated>| async {
        Err::<(), _>("completion listener failed")
    });
    d.observe(&bus, AfterCompletion, "after_completion");

    let r = d
        .template()
        .execute(|_| async {
            d.create_order(&bus, 1).await?;
            Ok::<_, TxError>("committed")
        })
        .await;
    assert_eq!(r.unwrap(), "committed");
    d.expect(&[
        "after_commit 1 committed=true",
        "after_completion 1 committed=true",
    ]);
    assert_eq!(d.ids().await, vec![1]);
    let logged = capture.text();
    for line in [
        "ERROR tx: AfterCommit listener of engine::events::OrderCreated failed: message broker down",
        "ERROR tx: AfterCommit listener of engine::events::OrderCreated panicked: bug in a listener",
        "ERROR tx: AfterCompletion listener of engine::events::OrderCreated failed: completion listener failed",
    ] {
        assert!(logged.contains(line), "{line:?} not logged in:\n{logged}");
    }

    let r = d.fail_order(&d.template(), &bus, 2).await;
    assert!(matches!(r, TxError::UnexpectedRollback));
    d.expect_all(&[rolled_back_order(2)]);
    assert!(
        capture
            .text()
            .contains("ERROR tx: AfterRollback listener of engine::events::OrderCreated panicked: bug in a rollback listener"),
        "{}",
        capture.text()
    );
    d.finish(&[1]).await;
}

// ---------------------------------------------------------------------------------------
// Which transaction an event follows
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requires_new_event_follows_the_inner_transaction() {
    let Some((d, bus)) = observed(5, "ev_reqnew", ALL_PHASES).await else {
        return;
    };
    let t = d.template();
    let inner = d.template().propagation(Propagation::RequiresNew);

    // Inner commits, outer rolls back: the inner event's AfterCommit runs when the inner
    // transaction commits, before the outer one ends; the outer event rolls back.
    let r = t
        .execute(|_| async {
            d.create_order(&bus, 1).await?;
            d.create_in(&inner, &bus, &[2], None).await?;
            d.log.push(format!(
                "inner returned, outer order committed={}",
                d.committed(1).await
            ));
            Err::<(), _>(TxError::UnexpectedRollback)
        })
        .await;
    assert!(r.is_err());
    d.expect_all(&[
        committed_order(2),
        strings(&["inner returned, outer order committed=false"]),
        rolled_back_order(1),
    ]);
    assert_eq!(d.ids().await, vec![2]);

    // Inner rolls back, outer commits.
    t.execute(|_| async {
        d.create_order(&bus, 3).await?;
        d.fail_order(&inner, &bus, 4).await;
        d.log.push("inner failed".into());
        Ok::<_, TxError>(())
    })
    .await
    .unwrap();
    d.expect_all(&[
        rolled_back_order(4),
        strings(&["inner failed"]),
        committed_order(3),
    ]);
    d.finish(&[2, 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_savepoint_rollback_never_runs_after_commit_for_its_events() {
    let Some((d, bus)) = observed(4, "ev_nested", &[AfterCommit, AfterCompletion]).await else {
        return;
    };
    // Not the probing observer: the savepoint rolls back inside a still open transaction.
    d.listen(&bus, AfterRollback, |d, e| async move {
        let committed = d.committed(e.id).await;
        d.log
            .push(format!("after_rollback {} committed={committed}", e.id));
    });
    let nested = d.template().propagation(Propagation::Nested);
    d.template()
        .execute(|_| async {
            d.create_order(&bus, 1).await?;
            d.fail_order(&nested, &bus, 2).await;
            let here = d.visible_here(2).await;
            d.log
                .push(format!("savepoint rolled back, order 2 here={here}"));
            d.create_in(&nested, &bus, &[3], None).await?;
            d.log.push("savepoint released".into());
            Ok::<_, TxError>(())
        })
        .await
        .unwrap();
    d.expect(&[
        "after_rollback 2 committed=false",
        "after_completion 2 committed=false",
        "savepoint rolled back, order 2 here=false",
        "savepoint released",
        "after_commit 1 committed=true",
        "after_commit 3 committed=true",
        "after_completion 1 committed=true",
        "after_completion 3 committed=true",
    ]);
    d.finish(&[1, 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_transaction_only_fallback_listeners_run_and_at_once() {
    let Some((d, bus)) = observed(4, "ev_notx", ALL_PHASES).await else {
        return;
    };
    d.observe(&bus, AfterCommit, "fallback_after_commit")
        .fallback_execution(true);
    d.observe(&bus, BeforeCommit, "fallback_before_commit")
        .fallback_execution(true);
    // What the fallback listeners write down for order `id`, run at once on the autocommitted
    // row, followed by `then`.
    let at_once = |id: i64, then: &[&str]| {
        [
            vec![
                format!("fallback_before_commit {id} committed=true in_tx=true"),
                format!("fallback_after_commit {id} committed=true"),
            ],
            strings(then),
        ]
        .concat()
    };

    // Outside every scope: the insert autocommitted; only the fallback listeners run, inside
    // publish.
    d.create_order(&bus, 1).await.unwrap();
    d.log.push("published".into());
    assert_eq!(d.log.take(), at_once(1, &["published"]));

    // A scope without an actual transaction (Supports, Never, NotSupported) is the same.
    for (id, p) in [
        (2, Propagation::Supports),
        (3, Propagation::Never),
        (4, Propagation::NotSupported),
    ] {
        let t = d.template().propagation(p);
        d.create_in(&t, &bus, &[id], Some("published"))
            .await
            .unwrap();
        assert_eq!(d.log.take(), at_once(id, &["published"]), "{p:?}");
    }

    // NotSupported inside a transaction suspends it: nothing to follow either.
    let not_supported = d.template().propagation(Propagation::NotSupported);
    d.template()
        .execute(|_| async {
            d.create_in(&not_supported, &bus, &[5], None).await?;
            d.log.push("outer end".into());
            Ok::<_, TxError>(())
        })
        .await
        .unwrap();
    assert_eq!(d.log.take(), at_once(5, &["outer end"]));

    // fallback_execution(false) again: skipped.
    let h = d
        .observe(&bus, AfterCommit, "toggled")
        .fallback_execution(true);
    d.create_order(&bus, 6).await.unwrap();
    assert_eq!(d.log.take().len(), 3);
    h.fallback_execution(false);
    d.create_order(&bus, 7).await.unwrap();
    assert_eq!(d.log.take(), at_once(7, &[]));

    // In a transaction, fallback listeners wait for it like the others.
    d.commit_order(&bus, 8, "body end").await;
    d.expect(&[
        "body end",
        "before_commit 8 committed=false in_tx=true",
        "fallback_before_commit 8 committed=false in_tx=true",
        "after_commit 8 committed=true",
        "fallback_after_commit 8 committed=true",
        "toggled 8 committed=true",
        "after_completion 8 committed=true",
    ]);
    d.finish(&[1, 2, 3, 4, 5, 6, 7, 8]).await;
}

// ---------------------------------------------------------------------------------------
// Ordering, plain listeners
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_run_by_order_then_registration_and_events_in_publish_order() {
    let Some((d, bus)) = observed(4, "ev_order", &[]).await else {
        return;
    };
    let late = d.observe(&bus, AfterCommit, "a");
    d.observe(&bus, AfterCommit, "b").order(10);
    d.observe(&bus, AfterCommit, "c");
    d.observe(&bus, AfterCommit, "d").order(-10);
    d.observe(&bus, BeforeCommit, "y");
    d.observe(&bus, BeforeCommit, "x").order(-1);

    // Commits orders `ids` in one transaction, then checks what the listeners wrote down:
    // the BeforeCommit ones per order, then the AfterCommit ones per order, in `after` order.
    let run = |ids: Vec<i64>, after: &'static [&'static str]| {
        let (d, bus) = (d.clone(), bus.clone());
        async move {
            d.create_in(&d.template(), &bus, &ids, None).await.unwrap();
            let before = ids.iter().flat_map(|id| {
                ["x", "y"].map(|name| format!("{name} {id} committed=false in_tx=true"))
            });
            let after = ids.iter().flat_map(|id| {
                after
                    .iter()
                    .map(move |name| format!("{name} {id} committed=true"))
            });
            assert_eq!(d.log.take(), before.chain(after).collect::<Vec<_>>());
        }
    };
    run(vec![1, 2], &["d", "a", "c", "b"]).await;
    // Re-ordering a registered listener through its handle.
    let late = late.order(20);
    run(vec![3], &["d", "c", "b", "a"]).await;
    assert!(late.remove());
    run(vec![4], &["d", "c", "b"]).await;
    d.finish(&[1, 2, 3, 4]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listeners_run_at_publish_inside_the_transaction() {
    let Some((d, bus)) = observed(4, "ev_plain", &[AfterCommit, AfterRollback]).await else {
        return;
    };
    // A plain listener: runs in publish, sees the uncommitted order through `&TxPool`, and its
    // own statement joins the transaction.
    let plain = d.clone();
    bus.on(move |e: Arc<OrderCreated>| {
        let d = plain.clone();
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
    d.commit_order(&bus, 1, "published").await;
    d.expect(&[
        "plain 1 committed=false in_tx=true",
        "published",
        "after_commit 1 committed=true",
    ]);
    assert_eq!(d.ids().await, vec![1, 101]);

    // Its error comes out of publish; propagated, it rolls back the transaction, and the
    // event's AfterRollback listener sees it.
    let r = d.create_in(&d.template(), &bus, &[2], None).await;
    assert!(
        matches!(&r, Err(TxError::Listener(e)) if e.to_string() == "plain listener refused"),
        "{r:?}"
    );
    d.expect(&[
        "plain 2 committed=false in_tx=true",
        "after_rollback 2 committed=false row=free",
    ]);
    d.finish(&[1, 101]).await;
}
