//! The engine at its edges, against the real servers (PostgreSQL, MariaDB, SQLite): scopes of
//! one transaction running at once, checks right before COMMIT, retries exactly after a
//! retryable rollback, requests that would wait for the task itself, futures dropped outside
//! any runtime, and SQLite's single writer seen from after-commit hooks. Rows are read from a fresh
//! connection outside the pool under test.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::AssertSqlSafe;
use tokio::sync::Notify;
use tx_sqlx::testing::drop_outside_runtime;
use tx_sqlx::{
    BoxError, Propagation, SqliteTxPool, TransactionSynchronization, TransactionTemplate, TxError,
};
use tx_tests::reliability::{
    AppError, Backend, BoxFut, MySqlBackend, PgBackend, SqliteBackend, settle,
};

async fn pg() -> Option<PgBackend> {
    PgBackend::connect(4, Duration::from_secs(10), "edges").await
}

async fn mariadb() -> Option<MySqlBackend> {
    MySqlBackend::connect(4, Duration::from_secs(10)).await
}

async fn sqlite() -> SqliteBackend {
    SqliteBackend::connect(4).await
}

/// The results of two concurrent scopes.
type Pair = (Result<(), AppError>, Result<(), AppError>);

fn tx_error(e: &AppError) -> Option<&TxError> {
    match e {
        AppError::Tx(e) => Some(e),
        _ => None,
    }
}

/// Asserts that `r` failed with `WouldBlock`, its message saying `says` (`who` names the
/// backend in the panic message).
fn assert_would_block(r: &Result<(), AppError>, says: &str, who: &str) {
    assert!(
        matches!(r.as_ref().err().and_then(tx_error), Some(TxError::WouldBlock { message }) if message.contains(says)),
        "{who}: {r:?}"
    );
}

/// Asserts that `$r` failed with the engine error `$pat`; the message names the backend `$b`,
/// or says `$who`.
macro_rules! assert_tx_err {
    ($b:expr, $r:expr, $pat:pat) => {
        assert_tx_err!(@who $b.name(), $r, $pat)
    };
    (@who $who:expr, $r:expr, $pat:pat) => {{
        let r = &$r;
        assert!(
            matches!(r.as_ref().err().and_then(tx_error), Some($pat)),
            "{}: {r:?}",
            $who
        )
    }};
}

/// Asserts that every connection of `b`'s pool went back to it.
async fn assert_connections_back<B: Backend>(b: &B) {
    let (size, idle) = settle(b).await;
    assert_eq!(
        size as usize,
        idle,
        "{}: the connection went back",
        b.name()
    );
}

/// Runs `body` in a transaction of `b` that must commit, failing the test with `hang` if it
/// hangs instead; returns what `body` returned.
async fn commit_within_hang<B: Backend, T>(
    b: &B,
    hang: &str,
    body: impl Future<Output = Result<T, AppError>>,
) -> T {
    tokio::time::timeout(HANG, b.template().execute(|_| body))
        .await
        .expect(hang)
        .unwrap()
}

/// A hang on today's code must fail the test, not the suite.
const HANG: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Concurrent scopes inside one transaction.

/// `join!` of two Nested calls: A succeeds, B fails after its insert while A's savepoint is
/// still open. B's row must not survive (it is refused, as it would have run inside A's
/// savepoint and been released with A).
async fn join_of_two_nested_calls<B: Backend>(b: &B) {
    let table = b.create_table("edge_join").await;
    let (a_ran, b_tried, a_done) = (Notify::new(), Notify::new(), Notify::new());
    let nested = b.template().propagation(Propagation::Nested);
    let r: Result<Pair, AppError> = b
        .template()
        .execute(|_| async {
            b.insert(&table, "outer").await?;
            let first = async {
                let r = nested
                    .execute(|_| async {
                        b.insert(&table, "a").await?;
                        a_ran.notify_one();
                        b_tried.notified().await;
                        Ok(())
                    })
                    .await;
                a_done.notify_one();
                r
            };
            let second = nested.execute(|_| async {
                a_ran.notified().await;
                let insert = b.insert(&table, "b").await;
                b_tried.notify_one();
                a_done.notified().await;
                insert?;
                Err(AppError::Injected("B fails after its insert"))
            });
            Ok(tokio::join!(first, second))
        })
        .await;
    let (ra, rb) = r.unwrap();
    ra.unwrap();
    assert!(rb.is_err());
    assert_eq!(
        b.tags(&table).await,
        ["outer", "a"],
        "{}: the failed scope's row survived",
        b.name()
    );
    assert_tx_err!(b, rb, TxError::ConcurrentScopes { .. });
    b.drop_table(&table).await;
}

/// A joined participant beside a failing Nested call: if it reports success and its owner
/// commits, its row is there; here its statement would land in the Nested savepoint, so it is
/// refused, the participant fails, and the owner rolls back as an unexpected rollback.
async fn participant_beside_failing_nested_call<B: Backend>(b: &B) {
    let table = b.create_table("edge_part").await;
    let (a_ran, p_tried) = (Notify::new(), Notify::new());
    let (nested, joined) = (b.template().propagation(Propagation::Nested), b.template());
    let participant = Mutex::new(None);
    let r: Result<(), AppError> = b
        .template()
        .execute(|_| async {
            b.insert(&table, "outer").await?;
            let failing = nested.execute(|_| async {
                b.insert(&table, "nested").await?;
                a_ran.notify_one();
                p_tried.notified().await;
                Err::<(), _>(AppError::Injected("nested fails"))
            });
            let joins = joined.execute(|_| async {
                a_ran.notified().await;
                let r = b.insert(&table, "participant").await;
                p_tried.notify_one();
                Ok(r?)
            });
            let (_, rp) = tokio::join!(failing, joins);
            *participant.lock().unwrap() = Some(rp);
            Ok(())
        })
        .await;
    let rp = participant.into_inner().unwrap().unwrap();
    let rows = b.tags(&table).await;
    if rp.is_ok() && r.is_ok() {
        assert!(
            rows.contains(&"participant".to_owned()),
            "{}: the participant reported success, the owner committed, its row is lost: {rows:?}",
            b.name()
        );
    }
    assert_tx_err!(b, rp, TxError::ConcurrentScopes { .. });
    assert_tx_err!(b, r, TxError::UnexpectedRollback);
    assert!(rows.is_empty(), "{}: {rows:?}", b.name());
    b.drop_table(&table).await;
}

// ---------------------------------------------------------------------------------------------
// Right before COMMIT.

/// An outbox-style flush in before_commit that calls a Required service which fails.
struct FlushThroughFailingService<B: Backend> {
    b: B,
    table: String,
}

impl<B: Backend> TransactionSynchronization for FlushThroughFailingService<B> {
    async fn before_commit(&self, _: bool) -> Result<(), BoxError> {
        let r: Result<(), AppError> = self
            .b
            .template()
            .execute(|_| async {
                self.b.insert(&self.table, "flush").await?;
                Err(AppError::Injected("the flush service fails"))
            })
            .await;
        assert!(r.is_err());
        Ok(())
    }
}

struct MarkRollbackOnly;

impl TransactionSynchronization for MarkRollbackOnly {
    async fn before_commit(&self, _: bool) -> Result<(), BoxError> {
        tx_sqlx::set_rollback_only()?;
        Ok(())
    }
}

/// A transaction that writes and registers the before-commit `hook` ends in
/// `UnexpectedRollback` with nothing written (`what` names the hook in the message).
async fn assert_before_commit_forces_rollback<B, S>(
    b: &B,
    table: &str,
    hook: impl Fn() -> S,
    what: &str,
) where
    B: Backend,
    S: TransactionSynchronization,
{
    let r: Result<(), AppError> = b
        .template()
        .execute(|_| async {
            b.insert(table, "body").await?;
            tx_sqlx::register_synchronization(hook())?;
            Ok(())
        })
        .await;
    let who = format!("{}: {what}", b.name());
    assert_tx_err!(@who who, r, TxError::UnexpectedRollback);
    assert!(b.tags(table).await.is_empty(), "{}", b.name());
}

async fn marked_in_before_commit<B: Backend>(b: &B) {
    let table = b.create_table("edge_mark").await;
    let failing_participant = || FlushThroughFailingService {
        b: b.clone(),
        table: table.clone(),
    };
    assert_before_commit_forces_rollback(
        b,
        &table,
        failing_participant,
        "participant failing in before_commit",
    )
    .await;
    assert_before_commit_forces_rollback(
        b,
        &table,
        || MarkRollbackOnly,
        "set_rollback_only in before_commit",
    )
    .await;
    b.drop_table(&table).await;
}

struct SlowBeforeCommit;

impl TransactionSynchronization for SlowBeforeCommit {
    async fn before_commit(&self, _: bool) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(600)).await;
        Ok(())
    }
}

/// Past the deadline nothing commits: neither after a before_commit hook that outlasted it,
/// nor after a body that computed past it without awaiting.
async fn deadline_before_commit<B: Backend>(b: &B) {
    let table = b.create_table("edge_deadline").await;
    let timed = b.template().timeout(Duration::from_millis(300));
    for slow_hook in [true, false] {
        let r: Result<(), AppError> = timed
            .execute(|_| async {
                let tag = if slow_hook { "slow hook" } else { "slow body" };
                b.insert(&table, tag).await?;
                if slow_hook {
                    tx_sqlx::register_synchronization(SlowBeforeCommit)?;
                } else {
                    std::thread::sleep(Duration::from_millis(600));
                }
                Ok(())
            })
            .await;
        assert_tx_err!(b, r, TxError::Timeout);
    }
    assert!(b.tags(&table).await.is_empty(), "{}", b.name());
    b.drop_table(&table).await;
}

// ---------------------------------------------------------------------------------------------
// Retry only after a retryable rollback.

type Failing = Arc<dyn Fn() -> BoxFut<'static, Result<(), sqlx::Error>> + Send + Sync>;

/// `sql` on `db`, as a [`Failing`] statement.
macro_rules! failing {
    ($db:expr, $sql:expr) => {{
        let db = $db.clone();
        Arc::new(move || {
            let db = db.clone();
            Box::pin(async move { sqlx::raw_sql($sql).execute(&db).await.map(|_| ()) })
                as BoxFut<'static, Result<(), sqlx::Error>>
        }) as Failing
    }};
}

struct RetrySvc<B: Backend> {
    b: B,
    db: B::Pool,
    table: String,
    audit: String,
    /// A statement failing with SQLSTATE 40001 (serialization failure), through `&db`.
    serialization_failure: Failing,
    runs: Mutex<u32>,
}

impl<B: Backend> RetrySvc<B> {
    fn ran(&self) -> u32 {
        std::mem::take(&mut *self.runs.lock().unwrap())
    }

    /// A retryable failure handled inside a Nested step (rolled back to its savepoint).
    async fn handled_serialization_failure(&self) {
        let step: Result<(), AppError> = self
            .b
            .template()
            .propagation(Propagation::Nested)
            .execute(|_| async { Ok((self.serialization_failure)().await?) })
            .await;
        let e = step.expect_err("the statement fails");
        assert!(
            tx_error(&e).is_some_and(TxError::is_retryable),
            "{}: {e:?}",
            self.b.name()
        );
    }

    /// A Nested step whose statement fails with a serialization failure on the first run, and
    /// the body passes that error on: the call's transaction rolled back because of it.
    async fn nested_step(&self, tag: &str) -> Result<(), AppError> {
        let first = *self.runs.lock().unwrap() == 1;
        self.b
            .template()
            .propagation(Propagation::Nested)
            .execute(|_| async {
                if first {
                    (self.serialization_failure)().await?;
                }
                Ok(self.b.insert(&self.table, tag).await?)
            })
            .await
    }

    /// [`Self::nested_step`] through `#[transactional]`, which sees the failure through the
    /// error's `source()` chain by itself.
    #[tx_sqlx::transactional(manager = self.db, retry = 3)]
    async fn returns_nested_failure(&self) -> Result<(), AppError> {
        *self.runs.lock().unwrap() += 1;
        self.nested_step("nested-attr").await
    }

    /// Commits although it returns an error (`no_rollback_for`): never re-run.
    #[tx_sqlx::transactional(manager = self.db, retry = 3, no_rollback_for = AppError::Injected(_))]
    async fn commits_with_error(&self) -> Result<(), AppError> {
        *self.runs.lock().unwrap() += 1;
        self.b.insert(&self.table, "kept").await?;
        self.handled_serialization_failure().await;
        Err(AppError::Injected("matches no_rollback_for"))
    }
}

async fn retry_only_after_a_retryable_rollback<B: Backend>(b: &B, serialization_failure: Failing) {
    let svc = RetrySvc {
        b: b.clone(),
        db: b.manager().clone(),
        table: b.create_table("edge_retry").await,
        audit: b.create_table("edge_audit").await,
        serialization_failure,
        runs: Mutex::new(0),
    };
    let r = svc.commits_with_error().await;
    assert!(
        matches!(r, Err(AppError::Injected(_))),
        "{}: {r:?}",
        b.name()
    );
    assert_eq!(svc.ran(), 1, "{}: a committed call was re-run", b.name());
    assert_eq!(b.tags(&svc.table).await, ["kept"], "{}", b.name());

    // A retryable failure handled in a Nested step, then a non-retryable final error.
    let r: Result<(), AppError> = b
        .template()
        .retry(3)
        .execute(|_| async {
            *svc.runs.lock().unwrap() += 1;
            svc.handled_serialization_failure().await;
            b.template()
                .propagation(Propagation::RequiresNew)
                .execute(|_| async { Ok::<_, AppError>(b.insert(&svc.audit, "audit").await?) })
                .await?;
            Err(AppError::Injected("not retryable"))
        })
        .await;
    assert!(
        matches!(r, Err(AppError::Injected(_))),
        "{}: {r:?}",
        b.name()
    );
    assert_eq!(
        svc.ran(),
        1,
        "{}: re-run after a non-retryable error",
        b.name()
    );
    assert_eq!(b.tags(&svc.audit).await, ["audit"], "{}", b.name());

    // The call's own transaction rolled back because of it: re-run.
    let r: Result<(), AppError> = b
        .template()
        .retry(3)
        .execute(|_| async {
            let run = {
                let mut runs = svc.runs.lock().unwrap();
                *runs += 1;
                *runs
            };
            b.insert(&svc.table, "retried").await?;
            if run == 1 {
                (svc.serialization_failure)().await?;
            }
            Ok(())
        })
        .await;
    r.unwrap();
    assert_eq!(svc.ran(), 2, "{}", b.name());
    assert_eq!(
        b.tags(&svc.table).await,
        ["kept", "retried"],
        "{}",
        b.name()
    );

    // A Nested step's serialization failure, rolled back to its savepoint and returned: the
    // call's own transaction rolled back because of it, so it is re-run.
    svc.returns_nested_failure().await.unwrap();
    assert_eq!(svc.ran(), 2, "{}: #[transactional] not re-run", b.name());
    let r: Result<(), AppError> = b
        .template()
        .retry(3)
        .error_type::<AppError>()
        .execute(|_| async {
            *svc.runs.lock().unwrap() += 1;
            svc.nested_step("nested-template").await
        })
        .await;
    r.unwrap();
    assert_eq!(svc.ran(), 2, "{}: template not re-run", b.name());
    assert_eq!(
        b.tags(&svc.table).await,
        ["kept", "retried", "nested-attr", "nested-template"],
        "{}",
        b.name()
    );
    b.drop_table(&svc.table).await;
    b.drop_table(&svc.audit).await;
}

// ---------------------------------------------------------------------------------------------
// Requests that would wait for the task itself, per backend (concrete sqlx types).

/// A table with two rows, for the cases below.
macro_rules! two_rows {
    ($b:expr, $prefix:literal) => {{
        let table = $b.create_table($prefix).await;
        for tag in ["one", "two"] {
            $b.insert(&table, tag).await.unwrap();
        }
        table
    }};
}

/// A statement on `&db` inside a `fetch` loop on `&db`.
macro_rules! statement_inside_fetch_loop {
    ($b:expr) => {{
        let b = $b;
        let db = b.db.clone();
        let table = two_rows!(b, "edge_stream");
        let select = format!("SELECT tag FROM {table}");
        let insert = format!("INSERT INTO {table} (tag) VALUES ('inner')");
        let inner =
            commit_within_hang(&b, "a statement inside a fetch loop must not hang", async {
                let mut rows = sqlx::query(AssertSqlSafe(select)).fetch(&db);
                let row = rows.try_next().await?.expect("a first row");
                let r = sqlx::query(AssertSqlSafe(insert)).execute(&db).await;
                drop((row, rows));
                Ok(r.map(|_| ()).map_err(AppError::from))
            })
            .await;
        assert_would_block(&inner, "fetch stream", b.name());
        assert_eq!(b.tags(&table).await, ["one", "two"], "{}", b.name());
        b.drop_table(&table).await;
    }};
}

/// A `TxConnection` guard held while a Nested scope begins.
macro_rules! nested_scope_beside_a_guard {
    ($b:expr) => {{
        let b = $b;
        let db = b.db.clone();
        let nested = commit_within_hang(
            &b,
            "a Nested scope beginning beside a guard must not hang",
            async {
                let conn = db.acquire().await?;
                let r: Result<(), AppError> = b
                    .template()
                    .propagation(Propagation::Nested)
                    .execute(|_| async { Ok(()) })
                    .await;
                drop(conn);
                Ok(r)
            },
        )
        .await;
        assert_would_block(&nested, "Beginning a Nested scope", b.name());
    }};
}

/// A `TxConnection` returned out of the body: the commit fails at once (not at the
/// deadline, not never), nothing commits, and the connection goes back to the pool.
macro_rules! guard_returned_out_of_the_body {
    ($b:expr) => {{
        let b = $b;
        let db = b.db.clone();
        let table = two_rows!(b, "edge_leak");
        let r = tokio::time::timeout(
            HANG,
            b.template()
                .timeout(Duration::from_secs(1))
                .execute(|_| async {
                    b.insert(&table, "leaked").await?;
                    Ok::<_, AppError>(db.acquire().await?)
                }),
        )
        .await
        .expect("a commit behind a leaked guard must not hang");
        let r = r.map(|_| ());
        assert_would_block(&r, "after its body returned", b.name());
        assert_eq!(b.tags(&table).await, ["one", "two"], "{}", b.name());
        assert_connections_back(&b).await;
        b.drop_table(&table).await;
    }};
}

// ---------------------------------------------------------------------------------------------
// A transactional future dropped outside any runtime.

fn dropped_outside_a_runtime<B, F>(connect: F)
where
    B: Backend,
    F: FnOnce() -> BoxFut<'static, Option<B>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(b) = rt.block_on(connect()) else {
        return;
    };
    let table = rt.block_on(b.create_table("edge_drop"));
    let template = b.template();
    // Its Drop runs on this thread, outside the runtime: it must not panic.
    drop_outside_runtime(&rt, |started| {
        template.execute(|_| async {
            b.insert(&table, "never committed").await?;
            started.park().await;
            Ok::<_, AppError>(())
        })
    });
    rt.block_on(async {
        assert_connections_back(&b).await;
        assert!(b.tags(&table).await.is_empty(), "{}", b.name());
        b.drop_table(&table).await;
    });
}

// ---------------------------------------------------------------------------------------------
// Each edge on each database

/// The edges every database runs, as one test each; `$connect` opens the backend (`None`:
/// the server is missing, the test is skipped).
macro_rules! edge_suite {
    ($connect:expr) => {
        edge_suite!(@generic $connect,
            join_of_two_nested_calls,
            participant_beside_failing_nested_call,
            marked_in_before_commit,
            deadline_before_commit,
        );
        edge_suite!(@macro $connect,
            statement_inside_fetch_loop,
            nested_scope_beside_a_guard,
            guard_returned_out_of_the_body,
        );

        #[test]
        fn dropped_outside_a_runtime() {
            super::dropped_outside_a_runtime(|| Box::pin($connect));
        }
    };
    (@generic $connect:expr, $($edge:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $edge() {
                let Some(b) = $connect.await else { return };
                super::$edge(&b).await;
            }
        )*
    };
    (@macro $connect:expr, $($edge:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $edge() {
                let Some(b) = $connect.await else { return };
                $edge!(b);
            }
        )*
    };
}

mod postgres {
    use super::*;

    edge_suite!(super::pg());

    #[tokio::test]
    async fn retry_only_after_a_retryable_rollback() {
        let Some(b) = super::pg().await else { return };
        let failing = failing!(
            b.db,
            "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END $$"
        );
        super::retry_only_after_a_retryable_rollback(&b, failing).await;
    }
}

mod mariadb {
    use super::*;

    edge_suite!(super::mariadb());

    #[tokio::test]
    async fn retry_only_after_a_retryable_rollback() {
        let Some(b) = super::mariadb().await else {
            return;
        };
        let failing = failing!(
            b.db,
            "SIGNAL SQLSTATE '40001' SET MESSAGE_TEXT = 'injected serialization failure'"
        );
        super::retry_only_after_a_retryable_rollback(&b, failing).await;
    }
}

mod sqlite {
    use super::*;

    edge_suite!(async { Some(super::sqlite().await) });
}

/// The result of a write tried beside a SQLite writer, reported from where it ran.
type Slot = Arc<Mutex<Option<Result<(), AppError>>>>;

/// SQLite's single writer: a writer transaction writes `writer`, then `beside` tries to write
/// row `tag` (with `insert`) outside it, and reports how that went in the slot. A write there
/// would wait for the lock this same task holds: it must fail fast with WouldBlock, leaving
/// the writer's row alone.
async fn sqlite_write_beside_a_writer<F, Fut>(prefix: &str, tag: &str, beside: F)
where
    F: FnOnce(SqliteTxPool, String, Slot) -> Fut,
    Fut: Future<Output = Result<(), AppError>>,
{
    let b = sqlite().await;
    let table = b.create_table(prefix).await;
    let insert = format!("INSERT INTO {table} (tag) VALUES ('{tag}')");
    let slot = Slot::default();
    let r: Result<(), AppError> = b
        .template()
        .execute(|_| async {
            b.insert(&table, "writer").await?;
            beside(b.db.clone(), insert, slot.clone()).await
        })
        .await;
    r.unwrap();
    let written = slot.lock().unwrap().take().expect("the write was tried");
    assert_would_block(&written, "write lock", b.name());
    assert_eq!(b.tags(&table).await, ["writer"]);
}

/// `&db` fails fast with WouldBlock outside the suspended writer; so does `acquire()` in a
/// NotSupported scope inside the writer.
#[tokio::test]
async fn sqlite_acquire_in_not_supported_scope_inside_a_writer_fails_fast() {
    sqlite_write_beside_a_writer("edge_acquire", "outside", |db, insert, slot| async move {
        let r: Result<(), AppError> = TransactionTemplate::new(db.clone())
            .propagation(Propagation::NotSupported)
            .execute(|_| async {
                let mut conn = db.acquire().await?;
                sqlx::query(AssertSqlSafe(insert))
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
            .await;
        *slot.lock().unwrap() = Some(r);
        Ok(())
    })
    .await;
}

/// An after-commit hook of a RequiresNew scope inside a writer runs while the writer is
/// still suspended: its write fails fast with WouldBlock, as `&db` does in a NotSupported
/// scope, instead of waiting out the busy timeout.
#[tokio::test]
async fn sqlite_write_in_after_commit_hook_of_requires_new_inside_a_writer_fails_fast() {
    sqlite_write_beside_a_writer("edge_hook", "hook", |db, insert, hook| async move {
        TransactionTemplate::new(db.clone())
            .propagation(Propagation::RequiresNew)
            .read_only(true)
            .execute(|_| async move {
                tx_sqlx::after_commit(async move {
                    let r = sqlx::query(AssertSqlSafe(insert)).execute(&db).await;
                    *hook.lock().unwrap() = Some(r.map(|_| ()).map_err(AppError::from));
                })?;
                Ok::<_, AppError>(())
            })
            .await
    })
    .await;
}
