//! `RequiresNew` takes a second connection while its task holds the first (in the suspended
//! transaction). Many such callers on a small pool: without a reservation, when every
//! connection is held by a caller waiting for another one, the begin fails at once with
//! `TxError::PoolStarvation` (never a wait for the acquire timeout); with
//! `reserve_for_nested`, every caller completes. PostgreSQL, MariaDB, and SQLite with
//! read-only transactions (its single writer rules out nested writers).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::Database;
use tokio::sync::Barrier;
use tx_sqlx::prelude::*;
use tx_sqlx::{MySqlTxPool, PgTxPool, SqliteTxPool, TransactionManager};

use crate::{mysql, postgres};

const POOL: u32 = 4;
const CALLERS: usize = 32;

/// What each caller does: its outer statement (id) and, in a `RequiresNew` scope, its inner
/// statement (id + 1000).
trait Work<DB: Database>: Clone + Send + Sync + 'static {
    fn statement(
        &self,
        db: &TxPool<DB>,
        id: i64,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// `work`'s statement `id` in a `RequiresNew` scope (`read_only` or not) of its own.
async fn in_requires_new<DB, W>(
    db: &TxPool<DB>,
    work: &W,
    id: i64,
    read_only: bool,
) -> Result<(), TxError>
where
    DB: Database,
    TxPool<DB>: TransactionManager,
    W: Work<DB>,
{
    TransactionTemplate::new(db.clone())
        .propagation(Propagation::RequiresNew)
        .read_only(read_only)
        .execute(|_| {
            let (db, work) = (db.clone(), work.clone());
            async move {
                work.statement(&db, id).await?;
                Ok::<_, TxError>(())
            }
        })
        .await
}

/// How the callers ended.
#[derive(Debug, Default)]
struct Outcome {
    ok: Vec<i64>,
    starved: Vec<i64>,
    /// The most outer transactions holding a connection at once.
    max_outer: usize,
}

/// Runs `CALLERS` concurrent callers; the first `together` to hold their outer connection
/// wait for each other before their `RequiresNew` scope begins. Panics on any error other
/// than `PoolStarvation`, and if the whole run does not end within a generous bound (a hang).
async fn run_callers<DB, W>(db: TxPool<DB>, work: W, together: usize, read_only: bool) -> Outcome
where
    DB: Database,
    TxPool<DB>: TransactionManager,
    W: Work<DB>,
{
    let barrier = Arc::new(Barrier::new(together));
    let ticket = Arc::new(AtomicUsize::new(0));
    let (outer_now, outer_max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = Vec::new();
    for id in 0..CALLERS as i64 {
        let (db, work) = (db.clone(), work.clone());
        let (barrier, ticket) = (barrier.clone(), ticket.clone());
        let (outer_now, outer_max) = (outer_now.clone(), outer_max.clone());
        tasks.push(tokio::spawn(async move {
            let r = TransactionTemplate::new(db.clone())
                .read_only(read_only)
                .execute(|_| {
                    let (db, work, barrier, ticket) =
                        (db.clone(), work.clone(), barrier.clone(), ticket.clone());
                    let (outer_now, outer_max) = (outer_now.clone(), outer_max.clone());
                    async move {
                        work.statement(&db, id).await?;
                        let now = outer_now.fetch_add(1, Ordering::SeqCst) + 1;
                        outer_max.fetch_max(now, Ordering::SeqCst);
                        if ticket.fetch_add(1, Ordering::SeqCst) < together {
                            barrier.wait().await;
                        }
                        let inner = in_requires_new(&db, &work, id + 1000, read_only).await;
                        outer_now.fetch_sub(1, Ordering::SeqCst);
                        inner
                    }
                })
                .await;
            (id, r)
        }));
    }
    let all = futures_util::future::join_all(tasks);
    let results = tokio::time::timeout(Duration::from_secs(40), all)
        .await
        .expect("the callers hung");
    let mut outcome = Outcome {
        max_outer: outer_max.load(Ordering::SeqCst),
        ..Outcome::default()
    };
    let mut other = Vec::new();
    for r in results {
        match r.expect("caller panicked") {
            (id, Ok(())) => outcome.ok.push(id),
            (
                id,
                Err(TxError::PoolStarvation {
                    max_connections, ..
                }),
            ) => {
                assert_eq!(max_connections, POOL);
                outcome.starved.push(id);
            }
            (id, Err(e)) => other.push(format!("caller {id}: {e}")),
        }
    }
    assert!(
        other.is_empty(),
        "failures other than starvation: {other:#?}; {outcome:?}"
    );
    outcome.ok.sort_unstable();
    outcome.starved.sort_unstable();
    outcome
}

/// The rows a set of successful callers leaves: each one's outer and inner row.
fn rows_of(ok: &[i64]) -> Vec<i64> {
    let mut rows: Vec<i64> = ok.iter().flat_map(|&id| [id, id + 1000]).collect();
    rows.sort_unstable();
    rows
}

fn assert_starvation_reported(outcome: &Outcome) {
    assert!(
        !outcome.starved.is_empty(),
        "no caller was told about the starvation: {outcome:?}"
    );
    assert!(
        !outcome.ok.is_empty(),
        "the callers that kept waiting must complete: {outcome:?}"
    );
}

fn assert_reservation_served_everyone(outcome: &Outcome, reserved: u32) {
    assert_eq!(outcome.ok.len(), CALLERS, "{outcome:?}");
    assert!(
        outcome.max_outer <= (POOL - reserved) as usize,
        "more outer transactions at once than the reservation allows: {outcome:?}"
    );
}

/// A table of ids on a server database, written by the callers.
trait Rows<DB: Database>: Work<DB> {
    /// A pool of `POOL` connections and a fresh table; `None` when the server is down.
    fn setup() -> impl Future<Output = Option<(TxPool<DB>, Self)>> + Send;

    /// The ids in the table, read outside every transaction.
    fn rows(&self, db: &TxPool<DB>) -> impl Future<Output = Vec<i64>> + Send;
}

/// `CALLERS` callers on a server pool with `reserved` connections kept for nested scopes:
/// with none, the first `POOL` callers end up holding every connection while each waits for
/// another, and starvation is reported at once; with one, every caller completes. Either way
/// only the completed callers' rows remain (a starved caller's transaction rolled back).
async fn callers_on_a_server<DB, W>(reserved: u32)
where
    DB: Database,
    TxPool<DB>: TransactionManager,
    W: Rows<DB>,
{
    let Some((db, work)) = W::setup().await else {
        return;
    };
    let db = if reserved > 0 {
        db.reserve_for_nested(reserved)
    } else {
        db
    };
    let outcome = run_callers(db.clone(), work.clone(), (POOL - reserved) as usize, false).await;
    if reserved == 0 {
        assert_starvation_reported(&outcome);
    } else {
        assert_reservation_served_everyone(&outcome, reserved);
    }
    assert_eq!(work.rows(&db).await, rows_of(&outcome.ok));
}

/// `$name`: the callers' work on a server database, inserting into the backend contract's
/// table through the database module `$db` (`setup`, `insert`, `ids`).
macro_rules! insert_work {
    ($name:ident, $database:ty, $pool:ty, $db:ident) => {
        #[derive(Clone)]
        struct $name(String);

        impl Work<$database> for $name {
            async fn statement(&self, db: &$pool, id: i64) -> Result<(), sqlx::Error> {
                $db::insert(db, &self.0, id).await
            }
        }

        impl Rows<$database> for $name {
            async fn setup() -> Option<($pool, Self)> {
                let (db, table) = $db::setup(POOL, "starve").await?;
                Some((db, $name(table)))
            }

            async fn rows(&self, db: &$pool) -> Vec<i64> {
                $db::ids(db, &self.0).await
            }
        }
    };
}

insert_work!(PgInsert, sqlx::Postgres, PgTxPool, postgres);
insert_work!(MyInsert, sqlx::MySql, MySqlTxPool, mysql);

/// Without a reservation starvation is reported at once; with one every caller completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_starvation_fails_fast_and_a_reservation_lets_every_caller_through() {
    for reserved in [0, 1] {
        callers_on_a_server::<_, PgInsert>(reserved).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_concurrent_scopes_of_one_task_are_not_mistaken_for_starvation() {
    // Pool of 2: this task's outer transaction holds one connection and two joined
    // RequiresNew scopes wait while another task holds the other. Both scopes see the same
    // suspended connection: it is one connection, so nothing is starved.
    let Some((db, table)) = postgres::setup(2, "join").await else {
        return;
    };
    let work = PgInsert(table);
    let holding = Arc::new(Barrier::new(2));
    let other = {
        let (db, work, holding) = (db.clone(), work.clone(), holding.clone());
        tokio::spawn(async move {
            TransactionTemplate::new(db.clone())
                .execute(|_| {
                    let (db, work, holding) = (db.clone(), work.clone(), holding.clone());
                    async move {
                        work.statement(&db, 1).await?;
                        holding.wait().await;
                        // Give the other task time to start waiting for this connection.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, TxError>(())
                    }
                })
                .await
        })
    };
    let r = TransactionTemplate::new(db.clone())
        .execute(|_| {
            let (db, work, holding) = (db.clone(), work.clone(), holding.clone());
            async move {
                work.statement(&db, 2).await?;
                holding.wait().await;
                let (a, b) = tokio::join!(
                    in_requires_new(&db, &work, 3, false),
                    in_requires_new(&db, &work, 4, false)
                );
                a?;
                b?;
                Ok::<_, TxError>(())
            }
        })
        .await;
    r.unwrap();
    other.await.unwrap().unwrap();
    assert_eq!(postgres::ids(&db, &work.0).await, vec![1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_starvation_fails_fast_and_a_reservation_lets_every_caller_through() {
    for reserved in [0, 1] {
        callers_on_a_server::<_, MyInsert>(reserved).await;
    }
}

/// SQLite allows one writer, so its callers only read (read-only outer and inner
/// transactions still take a connection each).
#[derive(Clone)]
struct SqliteRead;

impl Work<sqlx::Sqlite> for SqliteRead {
    async fn statement(&self, db: &SqliteTxPool, id: i64) -> Result<(), sqlx::Error> {
        let got: i64 = sqlx::query_scalar("SELECT ?")
            .bind(id)
            .fetch_one(db)
            .await?;
        assert_eq!(got, id);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_readers_starvation_fails_fast_and_reservation_serves_them() {
    let (db, _dir) = tx_tests::sqlite_pool(POOL).await;
    let outcome = run_callers(db.clone(), SqliteRead, POOL as usize, true).await;
    assert_starvation_reported(&outcome);

    let db = db.reserve_for_nested(1);
    let outcome = run_callers(db, SqliteRead, (POOL - 1) as usize, true).await;
    assert_reservation_served_everyone(&outcome, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starvation_error_names_cause_and_remedies() {
    let (db, _dir) = tx_tests::sqlite_pool(1).await;
    let r = TransactionTemplate::new(db.clone())
        .read_only(true)
        .execute(|_| {
            let db = db.clone();
            async move {
                SqliteRead.statement(&db, 1).await?;
                TransactionTemplate::new(db.clone())
                    .propagation(Propagation::RequiresNew)
                    .read_only(true)
                    .name("audit")
                    .execute(|_| {
                        let db = db.clone();
                        async move {
                            SqliteRead.statement(&db, 2).await?;
                            Ok::<_, TxError>(())
                        }
                    })
                    .await
            }
        })
        .await;
    let Err(e) = r else {
        panic!("a pool of one cannot serve RequiresNew: {r:?}")
    };
    assert!(matches!(e, TxError::PoolStarvation { .. }), "{e:?}");
    let msg = e.to_string();
    for needle in [
        "all 1 connections",
        "RequiresNew",
        "[audit]",
        "own pool",
        "bigger",
        "reserve_for_nested",
        "after_completion",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    assert!(!e.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "must leave at least one connection")]
async fn reserving_the_whole_pool_is_refused() {
    let (db, _dir) = tx_tests::sqlite_pool(2).await;
    let _ = db.reserve_for_nested(2);
}

/// The figures of the README's pool sizing section: `TX_SIZING=1 cargo test --release -p
/// tx-tests --test backends pool_starvation::pool_sizing_figures -- --nocapture` (PostgreSQL; 50
/// concurrent callers, each a transaction with one insert, 5 ms of other work, and a
/// RequiresNew scope with one insert).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_sizing_figures() {
    if std::env::var("TX_SIZING").is_err() {
        return;
    }
    const N: i64 = 50;
    println!(
        "| pool | reserved | callers | committed | PoolStarvation | slowest starvation error | wall time |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (pool, reserve) in [
        (10, 0),
        (10, 1),
        (10, 2),
        (10, 5),
        (20, 0),
        (20, 2),
        (50, 0),
        (51, 0),
    ] {
        let Some((db, table)) = postgres::setup(pool, "sizing").await else {
            return;
        };
        let work = PgInsert(table);
        let db = db.reserve_for_nested(reserve);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for id in 0..N {
            let (db, work) = (db.clone(), work.clone());
            tasks.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let r = TransactionTemplate::new(db.clone())
                    .execute(|_| {
                        let (db, work) = (db.clone(), work.clone());
                        async move {
                            work.statement(&db, id).await?;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            in_requires_new(&db, &work, id + 1000, false).await
                        }
                    })
                    .await;
                (r, t0.elapsed())
            }));
        }
        let (mut ok, mut starved, mut slowest) = (0, 0, Duration::ZERO);
        for t in futures_util::future::join_all(tasks).await {
            match t.unwrap() {
                (Ok(()), _) => ok += 1,
                (Err(TxError::PoolStarvation { .. }), took) => {
                    starved += 1;
                    slowest = slowest.max(took);
                }
                (Err(e), _) => panic!("{e}"),
            }
        }
        let wall = started.elapsed();
        let slowest = if starved > 0 {
            format!("{} ms", slowest.as_millis())
        } else {
            "-".to_owned()
        };
        println!(
            "| {pool} | {reserve} | {N} | {ok} | {starved} | {slowest} | {} ms |",
            wall.as_millis()
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {}", work.0)))
            .execute(db.pool())
            .await
            .unwrap();
        db.pool().close().await;
    }
}
