//! The engine on PostgreSQL: isolation and read-only, the deadline, panics,
//! cancellation, hooks, isolation between tasks, misuse and the deferred `BEGIN`.
//!
//! Every test checks real outcomes: rows read from a separate connection, error variants,
//! hook order, server-side session state (`pg_stat_activity`, filtered by an
//! `application_name` unique to the test). Each test skips (loudly) when PostgreSQL is down,
//! unless `TX_TEST_REQUIRE_SERVERS=1`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, PgConnection};
use tx_sqlx::{Completion, Isolation, PgTxPool, Propagation, TransactionTemplate, TxError};
use tx_tests::reliability::{AppError, Backend, PgBackend, settle};

use crate::recorder::{Log, Recorder};

// ---------------------------------------------------------------------------------------------
// Support
// ---------------------------------------------------------------------------------------------

/// A pool of `max` connections whose sessions carry an `application_name` unique to `test`
/// (`b.app`), so `pg_stat_activity` can be filtered to this test's connections. `None` when
/// PostgreSQL is down (test skipped).
async fn open(max: u32, test: &str) -> Option<PgBackend> {
    PgBackend::connect(max, Duration::from_secs(10), test).await
}

/// A test's backend ([`open`]), a fresh `(id, tag)` table named after the test, and a log
/// its hooks write to.
struct Fixture {
    b: PgBackend,
    table: String,
    log: Log,
}

impl Fixture {
    async fn open(max: u32, test: &str) -> Option<Fixture> {
        let b = open(max, test).await?;
        let table = b.create_table(test).await;
        Some(Fixture {
            b,
            table,
            log: Log::default(),
        })
    }

    fn db(&self) -> &PgTxPool {
        &self.b.db
    }

    fn template(&self) -> TransactionTemplate {
        self.b.template()
    }

    /// Runs `body` in a new transaction (a `Required` scope with no transaction around it).
    async fn execute<T, F, Fut>(&self, body: F) -> Result<T, AppError>
    where
        F: FnOnce(tx_sqlx::TransactionStatus) -> Fut,
        Fut: Future<Output = Result<T, AppError>>,
    {
        self.template().execute(body).await
    }

    /// Inserts `tag` through the transaction-aware executor.
    async fn insert(&self, tag: &str) -> Result<(), sqlx::Error> {
        self.b.insert(&self.table, tag).await
    }

    /// A hook recording into this test's log under `label`.
    fn hook(&self, label: &'static str) -> Recorder {
        Recorder::new(label, &self.log)
    }

    /// Asserts the table's tags (read from a fresh connection) are `expected`.
    async fn assert_tags(&self, expected: &[&str], why: &str) {
        assert_eq!(self.b.tags(&self.table).await, expected, "{why}");
    }

    /// Asserts the hooks wrote down `expected`.
    fn assert_log<S: AsRef<str>>(&self, expected: &[S]) {
        let expected: Vec<&str> = expected.iter().map(AsRef::as_ref).collect();
        assert_eq!(*self.log.lock().unwrap(), expected);
    }

    async fn drop_table(&self) {
        self.b.drop_table(&self.table).await;
    }
}

/// Asserts every connection of `b`'s pool is back and idle, and no session of it sits idle
/// in a transaction.
async fn assert_pool_clean(b: &PgBackend, why: &str) {
    let (size, idle) = settle(b).await;
    assert_eq!(size as usize, idle, "{why}");
    assert_eq!(idle_in_transaction(&b.app).await, 0, "{why}");
}

async fn scalar_string(db: &PgTxPool, sql: &'static str) -> Result<String, sqlx::Error> {
    sqlx::query_scalar::<_, String>(sql).fetch_one(db).await
}

/// Sessions of `app` in state `idle in transaction` (or `... (aborted)`).
async fn idle_in_transaction(app: &str) -> i64 {
    let mut conn = PgBackend::fresh().await;
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
    )
    .bind(app)
    .fetch_one(&mut conn)
    .await
    .expect("query pg_stat_activity")
}

/// The SQLSTATE of the database error somewhere in `e`'s source chain.
fn sqlstate(e: &TxError) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(sqlx::Error::Database(db)) = s.downcast_ref::<sqlx::Error>() {
            return db.code().map(|c| c.into_owned());
        }
        if let Some(db) = s.downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            return Some(db.code().to_owned());
        }
        source = s.source();
    }
    None
}

/// What hook `h` writes down for a transaction that rolled back.
const ROLLED_BACK: [&str; 2] = ["h:before_completion", "h:after_completion(rolled_back)"];

/// What hook `label` writes down for a transaction that committed.
fn committed(label: &str) -> Vec<String> {
    [
        "before_commit",
        "before_completion",
        "after_commit",
        "after_completion(committed)",
    ]
    .map(|phase| format!("{label}:{phase}"))
    .to_vec()
}

// ---------------------------------------------------------------------------------------------
// Isolation and read-only
// ---------------------------------------------------------------------------------------------

/// A joined participant (Required, Supports, Mandatory) and a Nested savepoint run with their
/// owner's isolation level whatever they ask for; a RequiresNew scope gets its own, on its
/// own connection; the owner's level is back after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_participant_uses_owner_level_requires_new_its_own() {
    let Some(b) = open(4, "isolation").await else {
        return;
    };
    let db = &b.db;
    let server_default: String = {
        let mut conn = PgBackend::fresh().await;
        sqlx::query_scalar("SELECT current_setting('default_transaction_isolation')")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };

    const LEVEL: &str = "SELECT current_setting('transaction_isolation')";
    const PID: &str = "SELECT pg_backend_pid()::text";
    let seen: Mutex<Vec<(&str, String)>> = Mutex::new(Vec::new());
    let seen = &seen;
    let template = |p: Propagation, i: Isolation| {
        TransactionTemplate::new(db.clone())
            .propagation(p)
            .isolation(i)
    };

    let r: Result<(), AppError> = template(Propagation::Required, Isolation::Serializable)
        .execute(|status| async move {
            assert!(status.is_new_transaction());
            let level = scalar_string(db, LEVEL).await?;
            seen.lock().unwrap().push(("owner", level));
            let owner_pid = scalar_string(db, PID).await?;

            for (label, p) in [
                ("required", Propagation::Required),
                ("supports", Propagation::Supports),
                ("mandatory", Propagation::Mandatory),
                ("nested", Propagation::Nested),
            ] {
                let (level, pid) = template(p, Isolation::ReadCommitted)
                    .execute(|s| async move {
                        assert!(!s.is_new_transaction(), "{label} joins");
                        Ok::<_, AppError>((
                            scalar_string(db, LEVEL).await?,
                            scalar_string(db, PID).await?,
                        ))
                    })
                    .await?;
                assert_eq!(pid, owner_pid, "{label} runs on the owner's connection");
                seen.lock().unwrap().push((label, level));
            }

            let (level, pid) = template(Propagation::RequiresNew, Isolation::RepeatableRead)
                .execute(|s| async move {
                    assert!(s.is_new_transaction());
                    Ok::<_, AppError>((
                        scalar_string(db, LEVEL).await?,
                        scalar_string(db, PID).await?,
                    ))
                })
                .await?;
            assert_ne!(pid, owner_pid, "RequiresNew runs on another connection");
            seen.lock().unwrap().push(("requires_new", level));

            let level = template(Propagation::RequiresNew, Isolation::Default)
                .execute(|_| async move { Ok::<_, AppError>(scalar_string(db, LEVEL).await?) })
                .await?;
            seen.lock().unwrap().push(("requires_new_default", level));

            // Resumed: the owner's transaction, still serializable.
            let level = scalar_string(db, LEVEL).await?;
            seen.lock().unwrap().push(("owner_after", level));
            Ok(())
        })
        .await;
    r.unwrap();

    let seen: Vec<(&str, String)> = seen.lock().unwrap().clone();
    let expected: Vec<(&str, String)> = vec![
        ("owner", "serializable".into()),
        ("required", "serializable".into()),
        ("supports", "serializable".into()),
        ("mandatory", "serializable".into()),
        ("nested", "serializable".into()),
        ("requires_new", "repeatable read".into()),
        ("requires_new_default", server_default),
        ("owner_after", "serializable".into()),
    ];
    assert_eq!(seen, expected);
}

/// Asserts `r` failed with PostgreSQL's error `code` (`what` says which write).
fn assert_sqlstate(r: &Result<(), AppError>, code: &str, what: &str) {
    match r {
        Err(AppError::Tx(e)) => assert_eq!(sqlstate(e).as_deref(), Some(code), "{what}: {e:?}"),
        other => panic!("{what} must fail, got {other:?}"),
    }
}

/// A read-only transaction: BEGIN ... READ ONLY; a write fails with PostgreSQL's own error
/// (SQLSTATE 25006), also from a joined participant, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_write_fails_with_database_error_nothing_written() {
    let Some(f) = &Fixture::open(2, "read_only").await else {
        return;
    };

    let read_only: Mutex<Option<String>> = Mutex::new(None);
    let read_only = &read_only;
    let r: Result<(), AppError> = f
        .template()
        .read_only(true)
        .execute(|_| async move {
            *read_only.lock().unwrap() = Some(scalar_string(f.db(), READ_ONLY).await?);
            f.insert("must-not-exist").await?;
            Ok(())
        })
        .await;
    assert_eq!(read_only.lock().unwrap().as_deref(), Some("on"));
    assert_sqlstate(&r, "25006", "a write in a read-only transaction");

    // A joined participant writing in the read-only transaction fails the same way.
    let r: Result<(), AppError> = f
        .template()
        .read_only(true)
        .execute(|_| async move {
            f.template()
                .execute(|s| async move {
                    assert!(!s.is_new_transaction());
                    f.insert("participant-must-not-exist").await?;
                    Ok::<_, AppError>(())
                })
                .await
        })
        .await;
    assert_sqlstate(
        &r,
        "25006",
        "a participant's write in a read-only transaction",
    );

    f.assert_tags(&[], "nothing written").await;
    assert_pool_clean(&f.b, "connections back, none in a transaction").await;
    f.drop_table().await;
}

/// Whether the current transaction is read-only (`on`/`off`).
const READ_ONLY: &str = "SELECT current_setting('transaction_read_only')";

/// A RequiresNew writer inside a read-only transaction is a new, writable transaction of its
/// own, and commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_outer_requires_new_writer_commits() {
    let Some(f) = &Fixture::open(3, "ro_writer").await else {
        return;
    };

    let r: Result<(), AppError> = f
        .template()
        .read_only(true)
        .execute(|_| async move {
            assert_eq!(scalar_string(f.db(), READ_ONLY).await?, "on");
            let inner_ro = f
                .template()
                .propagation(Propagation::RequiresNew)
                .execute(|s| async move {
                    assert!(s.is_new_transaction());
                    let ro = scalar_string(f.db(), READ_ONLY).await?;
                    f.insert("written-by-requires-new").await?;
                    Ok::<_, AppError>(ro)
                })
                .await?;
            assert_eq!(inner_ro, "off");
            // Back in the read-only transaction: it sees the committed row.
            let count = format!("SELECT count(*) FROM {}", f.table);
            let n: i64 = sqlx::query_scalar(AssertSqlSafe(count))
                .fetch_one(f.db())
                .await?;
            assert_eq!(n, 1);
            Ok(())
        })
        .await;
    r.unwrap();
    f.assert_tags(
        &["written-by-requires-new"],
        "the RequiresNew writer committed",
    )
    .await;
    f.drop_table().await;
}

// ---------------------------------------------------------------------------------------------
// Deadline
// ---------------------------------------------------------------------------------------------

/// A body still awaiting (not in a statement) at the deadline gets `TxError::Timeout` at the
/// deadline, not when it would have woken, and its writes are rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_interrupts_awaiting_body_and_rolls_back() {
    let Some(f) = &Fixture::open(2, "deadline").await else {
        return;
    };

    let timeout = Duration::from_millis(300);
    let woke = AtomicBool::new(false);
    let woke = &woke;
    let started = Instant::now();
    let r: Result<(), AppError> = f
        .template()
        .timeout(timeout)
        .execute(|_| async move {
            f.insert("doomed").await?;
            tx_sqlx::register_synchronization(f.hook("h"))?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            woke.store(true, Ordering::SeqCst);
            Ok(())
        })
        .await;
    let elapsed = started.elapsed();

    assert!(
        matches!(r, Err(AppError::Tx(TxError::Timeout))),
        "expected TxError::Timeout, got {r:?}"
    );
    assert!(
        elapsed >= timeout - Duration::from_millis(10),
        "returned before the deadline: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "must return at the deadline ({timeout:?}), not when the body wakes (5 s): took {elapsed:?}"
    );
    assert!(!woke.load(Ordering::SeqCst));
    f.assert_tags(&[], "the writes were rolled back").await;
    f.assert_log(&ROLLED_BACK);
    assert_pool_clean(&f.b, "connections back in the pool").await;
    f.drop_table().await;
}

/// Statements running on the server whose text contains `marker`, other than `conn`'s own.
async fn running_with(conn: &mut PgConnection, marker: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
         AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
    )
    .bind(marker)
    .fetch_one(conn)
    .await
    .unwrap()
}

/// A long server statement (`pg_sleep(5)`) under a 300 ms timeout is cancelled: the call
/// returns near the deadline and the statement stops running on the server long before its
/// 5 s (watched in `pg_stat_activity`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_cancels_long_server_statement() {
    let Some(b) = open(2, "deadline_stmt").await else {
        return;
    };
    let marker = format!("tx_sleep_marker_{}", std::process::id());
    let sql = format!("SELECT pg_sleep(5) AS {marker}");

    // Watches the statement on the server from a separate connection.
    let stop = Arc::new(AtomicBool::new(false));
    let seen_running = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn({
        let (stop, seen_running, marker) = (stop.clone(), seen_running.clone(), marker.clone());
        async move {
            let mut conn = PgBackend::fresh().await;
            while !stop.load(Ordering::SeqCst) {
                if running_with(&mut conn, &marker).await > 0 {
                    seen_running.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            conn
        }
    });

    let started = Instant::now();
    let (db, sql_ref) = (&b.db, &sql);
    let r: Result<(), AppError> = b
        .template()
        .timeout(Duration::from_millis(300))
        .execute(|_| async move {
            sqlx::query(AssertSqlSafe(sql_ref.clone()))
                .execute(db)
                .await?;
            Ok(())
        })
        .await;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut watch_conn = watcher.await.unwrap();

    // Past the deadline the transaction is rolled back and the call returns
    // TxError::Timeout, whichever fired first: the engine's deadline while the statement was
    // awaited, or the server's statement_timeout (set to the remaining time) cancelling it
    // (SQLSTATE 57014) a moment before.
    assert!(
        matches!(r, Err(AppError::Tx(TxError::Timeout))),
        "a statement cancelled by the transaction's deadline must end the call with \
         TxError::Timeout; got {r:?} after {elapsed:?}{}",
        match &r {
            Err(AppError::Tx(e)) if sqlstate(e).as_deref() == Some("57014") => {
                " (the server's statement_timeout fired first and its error was returned as is)"
            }
            _ => "",
        }
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "the call must end near the 300 ms deadline, took {elapsed:?}"
    );
    assert!(
        seen_running.load(Ordering::SeqCst),
        "the statement was never seen running (the probe would prove nothing)"
    );
    // The statement must stop on the server too, long before pg_sleep(5) would end.
    let until = started + Duration::from_millis(2500);
    let running = loop {
        let n = running_with(&mut watch_conn, &marker).await;
        if n == 0 || Instant::now() > until {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        running,
        0,
        "pg_sleep(5) still running on the server {:?} after the call started",
        started.elapsed()
    );
    assert_pool_clean(&b, "connections back after the cancelled statement").await;
}

// ---------------------------------------------------------------------------------------------
// Panic and cancellation
// ---------------------------------------------------------------------------------------------

/// A panic in a body rolls the transaction back and continues (a JoinError of the spawned
/// task); the pool's only connection comes back clean: the next autocommit statement on it is
/// committed at once (a fresh connection sees it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_body_rolls_back_and_continues() {
    // One connection: the statement after the panic necessarily reuses it.
    let Some(f) = Fixture::open(1, "panic").await else {
        return;
    };
    let f = Arc::new(f);

    let handle = tokio::spawn({
        let f = f.clone();
        async move {
            f.template()
                .execute(|_| async {
                    f.insert("panicked").await?;
                    tx_sqlx::register_synchronization(f.hook("h"))?;
                    if !f.table.is_empty() {
                        panic!("boom in the body");
                    }
                    Ok::<_, AppError>(())
                })
                .await
        }
    });
    let err = handle
        .await
        .expect_err("the panic must continue out of execute");
    assert!(err.is_panic(), "{err:?}");
    let payload = err.into_panic();
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert_eq!(msg, "boom in the body", "the body's own panic continues");

    f.assert_tags(&[], "rolled back").await;
    f.assert_log(&ROLLED_BACK);
    assert_pool_clean(&f.b, "the connection is back in the pool").await;

    // The same connection, outside any transaction: autocommit, visible at once elsewhere.
    assert!(!tx_sqlx::is_actual_transaction_active());
    f.insert("after-panic").await.unwrap();
    f.assert_tags(&["after-panic"], "autocommitted").await;
    f.drop_table().await;
}

/// A dropped (cancelled) transactional future: rolled back, never committed; no
/// `idle in transaction` session left; every pool connection back; after_completion sees
/// `RolledBack` (it runs in a spawned task).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_future_rolls_back_and_returns_connection() {
    let Some(f) = Fixture::open(3, "cancel").await else {
        return;
    };
    let (inserted_tx, inserted_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Completion>();

    let template = f.template();
    let f = &f;
    // The body runs once: the senders move into it.
    let mut fut = Box::pin(template.execute(|_| async move {
        tx_sqlx::after_completion(move |c: Completion| async move {
            let _ = done_tx.send(c);
        })?;
        tx_sqlx::register_synchronization(f.hook("h"))?;
        f.insert("cancelled").await?;
        let _ = inserted_tx.send(());
        std::future::pending::<()>().await;
        Ok::<_, AppError>(())
    }));
    tokio::select! {
        r = fut.as_mut() => panic!("the body never finishes, got {r:?}"),
        _ = inserted_rx => {}
    }
    // The probe works: right now our transaction sits idle in transaction.
    assert_eq!(idle_in_transaction(&f.b.app).await, 1);
    drop(fut);

    let completion = tokio::time::timeout(Duration::from_secs(5), done_rx)
        .await
        .expect("after_completion of the cancelled transaction must run")
        .expect("after_completion hook dropped without running");
    assert_eq!(completion, Completion::RolledBack);

    let until = Instant::now() + Duration::from_secs(5);
    let mut left = idle_in_transaction(&f.b.app).await;
    while left != 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = idle_in_transaction(&f.b.app).await;
    }
    assert_eq!(left, 0, "an `idle in transaction` session was left behind");
    assert_pool_clean(&f.b, "every pool connection back").await;
    f.assert_tags(&[], "never committed").await;
    f.assert_log(&ROLLED_BACK);

    // The pool still works and its connections are clean (autocommit visible at once).
    f.insert("after-cancel").await.unwrap();
    f.assert_tags(&["after-cancel"], "autocommitted").await;
    f.drop_table().await;
}

// ---------------------------------------------------------------------------------------------
// Hooks
// ---------------------------------------------------------------------------------------------

/// A before_commit error rolls back and is returned as `TxError::BeforeCommit`; the other
/// hooks complete as rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_commit_error_rolls_back_and_is_returned() {
    let Some(f) = &Fixture::open(2, "hook_veto").await else {
        return;
    };

    let r: Result<(), AppError> = f
        .execute(|_| async move {
            f.insert("vetoed").await?;
            tx_sqlx::register_synchronization(f.hook("a"))?;
            let veto = Recorder {
                veto: true,
                ..f.hook("veto")
            };
            tx_sqlx::register_synchronization(veto)?;
            tx_sqlx::register_synchronization(f.hook("b"))?;
            Ok(())
        })
        .await;
    match &r {
        Err(AppError::Tx(TxError::BeforeCommit(e))) => {
            assert_eq!(e.to_string(), "veto from before_commit")
        }
        other => panic!("expected TxError::BeforeCommit, got {other:?}"),
    }
    f.assert_tags(&[], "rolled back").await;
    f.assert_log(&[
        "a:before_commit",
        "veto:before_commit",
        "a:before_completion",
        "veto:before_completion",
        "b:before_completion",
        "a:after_completion(rolled_back)",
        "veto:after_completion(rolled_back)",
        "b:after_completion(rolled_back)",
    ]);
    assert_pool_clean(&f.b, "connections back after the veto").await;
    f.drop_table().await;
}

/// A panicking after_commit hook cannot undo the commit: the call is `Ok`, the row is there,
/// and the next hook still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_after_commit_hook_leaves_call_ok() {
    let Some(f) = &Fixture::open(2, "hook_panic").await else {
        return;
    };

    let r: Result<u32, AppError> = f
        .execute(|_| async move {
            f.insert("kept").await?;
            let panicking = Recorder {
                panic_after_commit: true,
                ..f.hook("a")
            };
            tx_sqlx::register_synchronization(panicking)?;
            tx_sqlx::register_synchronization(f.hook("b"))?;
            Ok(7)
        })
        .await;
    assert_eq!(r.unwrap(), 7);
    f.assert_tags(&["kept"], "committed").await;
    f.assert_log(&[
        "a:before_commit",
        "b:before_commit",
        "a:before_completion",
        "b:before_completion",
        "a:after_commit",
        "b:after_commit",
        "a:after_completion(committed)",
        "b:after_completion(committed)",
    ]);
    f.drop_table().await;
}

/// Outside every scope, registering hooks (and marking rollback-only) fails with
/// `TxError::NoTransaction`, and nothing leaks into a later transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_outside_any_scope_return_no_transaction() {
    let Some(b) = open(2, "hook_outside").await else {
        return;
    };
    let log: Log = Arc::default();

    assert!(tx_sqlx::current_status().is_none());
    assert!(!tx_sqlx::is_actual_transaction_active());
    let outside = [
        (
            "register_synchronization",
            tx_sqlx::register_synchronization(Recorder::new("outside", &log)),
        ),
        ("after_commit", tx_sqlx::after_commit(async {})),
        ("after_rollback", tx_sqlx::after_rollback(async {})),
        (
            "after_completion",
            tx_sqlx::after_completion(|_c: Completion| async {}),
        ),
        ("set_rollback_only", tx_sqlx::set_rollback_only()),
    ];
    for (what, r) in outside {
        assert!(matches!(r, Err(TxError::NoTransaction)), "{what}: {r:?}");
    }

    // A transaction afterwards runs only its own hooks, and commits (nothing marked it).
    let (db, log_ref) = (&b.db, &log);
    let r: Result<(), AppError> = b
        .template()
        .execute(|_| async move {
            sqlx::query("SELECT 1").execute(db).await?;
            tx_sqlx::register_synchronization(Recorder::new("inside", log_ref))?;
            Ok(())
        })
        .await;
    r.unwrap();
    assert_eq!(*log.lock().unwrap(), committed("inside"));
    // And once it is over, we are outside again.
    assert!(matches!(
        tx_sqlx::after_commit(async {}),
        Err(TxError::NoTransaction)
    ));
}

// ---------------------------------------------------------------------------------------------
// Isolation between tasks
// ---------------------------------------------------------------------------------------------

const TASKS: usize = 32;

/// Outer transactions of [`task_work`] open right now, and the most seen at once.
static OPEN: AtomicUsize = AtomicUsize::new(0);
static MAX_OPEN: AtomicUsize = AtomicUsize::new(0);

/// Counts an open outer transaction while alive.
struct OpenGuard;

impl OpenGuard {
    fn new() -> OpenGuard {
        let now = OPEN.fetch_add(1, Ordering::SeqCst) + 1;
        MAX_OPEN.fetch_max(now, Ordering::SeqCst);
        OpenGuard
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One task's unit of work: an outer transaction named `task-i`, an inner RequiresNew
/// `task-i-new` and an inner Nested `task-i-nested`; some nested scopes and some outer
/// transactions fail. Every statement records the transaction id and backend pid it ran in.
async fn task_work(db: PgTxPool, t: String, i: usize) -> Result<(), AppError> {
    let name = format!("task-{i}");
    let (db, t, name) = (&db, t.as_str(), name.as_str());
    let pause = move |k: usize| async move {
        tokio::time::sleep(Duration::from_millis(((i * 7 + k * 3) % 5) as u64)).await;
        tokio::task::yield_now().await;
    };
    // INSERT recording txid_current() (the top-level transaction, also inside a savepoint)
    // and the backend pid.
    let record = move |tag: String| async move {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {t} (tag, txid, pid) VALUES ($1, txid_current(), pg_backend_pid())"
        )))
        .bind(tag)
        .execute(db)
        .await
        .map(|_| ())
    };
    let mine_in_this_tx = move || async move {
        sqlx::query_scalar::<_, String>(AssertSqlSafe(format!(
            "SELECT tag FROM {t} WHERE txid = txid_current() ORDER BY id"
        )))
        .fetch_all(db)
        .await
    };
    let current_name = || tx_sqlx::current_status().map(|s| s.name().to_owned());

    TransactionTemplate::new(db.clone())
        .name(name.to_owned())
        .execute(|status| async move {
            let _open = OpenGuard::new();
            assert!(status.is_new_transaction());
            assert_eq!(current_name().as_deref(), Some(name));
            record(format!("{name}-outer")).await?;
            pause(1).await;
            assert_eq!(current_name().as_deref(), Some(name));

            // A spawned task starts outside any transaction.
            let outside = tokio::spawn(async {
                (
                    tx_sqlx::current_status().is_none(),
                    tx_sqlx::is_actual_transaction_active(),
                    tx_sqlx::after_commit(async {}).is_err(),
                )
            })
            .await
            .unwrap();
            assert_eq!(outside, (true, false, true), "{name}: spawned task context");

            let new_name = format!("{name}-new");
            let nn = new_name.as_str();
            TransactionTemplate::new(db.clone())
                .propagation(Propagation::RequiresNew)
                .name(new_name.clone())
                .execute(|s| async move {
                    assert!(s.is_new_transaction());
                    assert_eq!(current_name().as_deref(), Some(nn));
                    pause(2).await;
                    record(nn.to_owned()).await?;
                    assert_eq!(current_name().as_deref(), Some(nn));
                    assert_eq!(mine_in_this_tx().await?, vec![nn.to_owned()]);
                    Ok::<_, AppError>(())
                })
                .await?;
            assert_eq!(current_name().as_deref(), Some(name), "{name}: resumed");
            assert_eq!(mine_in_this_tx().await?, vec![format!("{name}-outer")]);

            let nested_name = format!("{name}-nested");
            let ns = nested_name.as_str();
            let nested = TransactionTemplate::new(db.clone())
                .propagation(Propagation::Nested)
                .name(nested_name.clone())
                .execute(|s| async move {
                    assert!(s.has_savepoint());
                    assert_eq!(current_name().as_deref(), Some(ns));
                    record(ns.to_owned()).await?;
                    pause(3).await;
                    assert_eq!(current_name().as_deref(), Some(ns));
                    if i.is_multiple_of(3) {
                        return Err(AppError::Injected("boom"));
                    }
                    Ok(())
                })
                .await;
            match nested {
                Ok(()) => assert!(!i.is_multiple_of(3)),
                Err(AppError::Injected("boom")) => assert!(i.is_multiple_of(3)),
                Err(e) => return Err(e),
            }
            assert_eq!(current_name().as_deref(), Some(name));
            let mut expected = vec![format!("{name}-outer")];
            if !i.is_multiple_of(3) {
                expected.push(nested_name.clone());
            }
            assert_eq!(mine_in_this_tx().await?, expected, "{name}: own rows only");
            pause(4).await;
            if i % 4 == 3 {
                return Err(AppError::Injected("boom"));
            }
            Ok(())
        })
        .await
}

/// Many concurrent tasks on one TxPool, each in its own transactions with inner RequiresNew
/// and Nested scopes, never see each other's context or rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_never_share_context() {
    // Each task may hold two connections at once (outer + RequiresNew); with one more than
    // TASKS connections some RequiresNew can always proceed (no pool starvation).
    let Some(b) = open(TASKS as u32 + 2, "tasks").await else {
        return;
    };
    let db = &b.db;
    let table = tx_tests::unique_table("tasks");
    {
        let mut conn = PgBackend::fresh().await;
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE {table} (id serial PRIMARY KEY, tag text NOT NULL, txid bigint NOT NULL, pid int NOT NULL)"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }

    let handles: Vec<_> = (0..TASKS)
        .map(|i| tokio::spawn(task_work(db.clone(), table.clone(), i)))
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let r = h
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        match r {
            Ok(()) => assert!(i % 4 != 3, "task-{i} must fail"),
            Err(AppError::Injected("boom")) => assert!(i % 4 == 3, "task-{i} must succeed"),
            Err(e) => panic!("task-{i}: {e:?}"),
        }
    }

    // The tasks really overlapped (their contexts were live at the same time).
    let max_open = MAX_OPEN.load(Ordering::SeqCst);
    assert!(
        max_open >= TASKS / 4,
        "only {max_open} outer transactions were ever open at once"
    );

    let mut conn = PgBackend::fresh().await;
    let rows: Vec<(String, i64, i32)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT tag, txid, pid FROM {table} ORDER BY id"
    )))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut outer_txids = std::collections::HashSet::new();
    for i in 0..TASKS {
        let name = format!("task-{i}");
        let mine: Vec<&(String, i64, i32)> = rows
            .iter()
            .filter(|(tag, _, _)| tag == &name || tag.starts_with(&format!("{name}-")))
            .collect();
        let mut got: Vec<&str> = mine.iter().map(|(tag, _, _)| tag.as_str()).collect();
        got.sort_unstable();
        let mut expected = vec![format!("{name}-new")];
        if i % 4 != 3 {
            expected.push(format!("{name}-outer"));
            if i % 3 != 0 {
                expected.push(format!("{name}-nested"));
            }
        }
        expected.sort_unstable();
        assert_eq!(got, expected, "task-{i}'s committed rows");

        let find = |suffix: &str| {
            mine.iter()
                .find(|(tag, _, _)| tag == &format!("{name}-{suffix}"))
                .map(|(_, txid, pid)| (*txid, *pid))
        };
        let new = find("new").unwrap();
        if let Some(outer) = find("outer") {
            assert_ne!(
                outer.0, new.0,
                "task-{i}: RequiresNew is another transaction"
            );
            assert_ne!(
                outer.1, new.1,
                "task-{i}: RequiresNew is another connection"
            );
            if let Some(nested) = find("nested") {
                assert_eq!(
                    nested, outer,
                    "task-{i}: Nested runs in the outer transaction"
                );
            }
            assert!(outer_txids.insert(outer.0), "task-{i} shares a transaction");
        }
    }
    assert_eq!(rows.len(), {
        (0..TASKS)
            .map(|i| 1 + usize::from(i % 4 != 3) * (1 + usize::from(i % 3 != 0)))
            .sum::<usize>()
    });
    b.drop_table(&table).await;
}

// ---------------------------------------------------------------------------------------------
// Misuse
// ---------------------------------------------------------------------------------------------

/// Runs a `p` scope whose body would write `tag` (noting that it ran), within a transaction
/// that writes before and after it when `inside`. Asserts that the call fails with `refused`
/// (propagated out of the outer transaction, which rolls back), that the body never ran, and
/// that nothing was written.
async fn assert_refused_before_the_body(
    f: &Fixture,
    p: Propagation,
    inside: bool,
    refused: TxError,
) {
    let ran = AtomicBool::new(false);
    let ran = &ran;
    let scope = || async move {
        f.template()
            .propagation(p)
            .execute(|_| async move {
                ran.store(true, Ordering::SeqCst);
                f.insert(&format!("{p:?}")).await?;
                Ok::<_, AppError>(())
            })
            .await
    };
    let r = if inside {
        f.template()
            .execute(|_| async move {
                f.insert("outer").await?;
                scope().await?;
                f.insert("outer-after").await?;
                Ok(())
            })
            .await
    } else {
        scope().await
    };
    assert!(
        matches!(&r, Err(AppError::Tx(e)) if std::mem::discriminant(e) == std::mem::discriminant(&refused)),
        "expected {refused:?}, got {r:?}"
    );
    assert!(!ran.load(Ordering::SeqCst), "the body must not run");
    f.assert_tags(&[], "nothing written").await;
}

/// Mandatory without a transaction fails with `TxError::NoTransaction` before its body runs;
/// nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_without_transaction_is_no_transaction() {
    let Some(f) = Fixture::open(2, "mandatory").await else {
        return;
    };
    assert_refused_before_the_body(&f, Propagation::Mandatory, false, TxError::NoTransaction).await;
    f.drop_table().await;
}

/// Never inside a transaction fails with `TxError::ExistingTransaction` before its body runs;
/// propagated, it rolls the outer transaction back: nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_inside_transaction_is_existing_transaction() {
    let Some(f) = Fixture::open(2, "never").await else {
        return;
    };
    let existing = TxError::ExistingTransaction;
    assert_refused_before_the_body(&f, Propagation::Never, true, existing).await;
    assert_pool_clean(&f.b, "connections back after the refusal").await;
    f.drop_table().await;
}

// ---------------------------------------------------------------------------------------------
// Deferred BEGIN
// ---------------------------------------------------------------------------------------------

/// A transactional call whose body runs no statement sends no statement: with the pool's only
/// connection held elsewhere it still completes at once (it never asks for a connection), and
/// its hooks run as committed. The control: the same call with one statement cannot complete
/// while the connection is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_begin_sends_nothing_without_a_statement() {
    let Some(b) = &open(1, "deferred").await else {
        return;
    };
    let db = &b.db;
    let held = db.pool().acquire().await.expect("the only connection");
    assert_eq!(db.pool().num_idle(), 0);
    let log: Log = Arc::default();
    let log_ref = &log;

    let r = tokio::time::timeout(
        Duration::from_secs(2),
        b.template().execute(|status| async move {
            assert!(status.is_new_transaction());
            assert!(tx_sqlx::is_actual_transaction_active());
            tx_sqlx::register_synchronization(Recorder::new("h", log_ref))?;
            // Inner scopes without statements send nothing either.
            for p in [Propagation::RequiresNew, Propagation::Nested] {
                b.template()
                    .propagation(p)
                    .execute(|_| async { Ok::<_, AppError>(()) })
                    .await?;
            }
            Ok::<_, AppError>(())
        }),
    )
    .await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("the empty transactional call failed: {e:?}"),
        Err(_) => {
            panic!("the empty transactional call waited for a connection: BEGIN was not deferred")
        }
    }
    assert_eq!(*log.lock().unwrap(), committed("h"));

    // Control: one statement needs the connection, so the call cannot finish while it is held.
    let one_statement = || async move {
        b.template()
            .execute(|_| async move {
                sqlx::query("SELECT 1").execute(db).await?;
                Ok::<_, AppError>(())
            })
            .await
    };
    let r = tokio::time::timeout(Duration::from_millis(300), one_statement()).await;
    assert!(
        r.is_err(),
        "a call with a statement must wait for the held connection: {r:?}"
    );

    drop(held);
    let r = one_statement().await;
    assert!(r.is_ok(), "{r:?}");
}
