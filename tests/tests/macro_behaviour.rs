//! Service-layer cases written with `#[transactional]` (a user service calling a log service,
//! an audit in REQUIRES_NEW, a risk check, timeouts, retries, spawned futures), on PostgreSQL,
//! asserting the rows left behind and what each call returns.
//!
//! Every service takes its pool as a field (`manager = self.db`), so the tests of this binary,
//! which run in parallel, never depend on the process-wide default manager. Each test has its
//! own tables (`tx_tests::unique_table`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::AssertSqlSafe;
use tx_sqlx::PgTxPool;
use tx_sqlx::prelude::*;

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Tx(#[from] TxError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("risk check rejected the order: {reason}")]
    RiskRejected { reason: String },
    #[error("the risk service is down")]
    RiskServiceDown,
    #[error("business failure: {0}")]
    Business(&'static str),
}

/// Runs `sql` in autocommit, outside every transaction.
async fn exec(db: &PgTxPool, sql: String) {
    sqlx::query(AssertSqlSafe(sql))
        .execute(db.pool())
        .await
        .expect("setup statement");
}

/// Committed rows of `table` (read on a plain pool connection, outside every transaction).
async fn rows(db: &PgTxPool, table: &str) -> Vec<String> {
    sqlx::query_scalar::<_, String>(AssertSqlSafe(format!(
        "SELECT name FROM {table} ORDER BY id"
    )))
    .fetch_all(db.pool())
    .await
    .expect("read rows")
}

/// Inserts `name` into `table` through `&TxPool`: in the current task's transaction, if any.
async fn insert_name(
    db: &PgTxPool,
    table: &str,
    name: impl AsRef<str>,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (name) VALUES ($1)"
    )))
    .bind(name.as_ref())
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Runs `sql` through `&TxPool` (in the current task's transaction, if any), with `name` as
/// `$1` and `value` as `$2`.
async fn exec_with<V>(db: &PgTxPool, sql: String, name: &str, value: V) -> Result<(), sqlx::Error>
where
    V: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'static,
{
    sqlx::query(AssertSqlSafe(sql))
        .bind(name)
        .bind(value)
        .execute(db)
        .await?;
    Ok(())
}

/// Asserts the committed rows of `table` are `expected` (`why` says what left them).
async fn assert_rows(db: &PgTxPool, table: &str, expected: &[&str], why: &str) {
    assert_eq!(rows(db, table).await, expected, "{why}");
}

/// A table `(id serial, name text unique)`.
async fn name_table(db: &PgTxPool, prefix: &str) -> String {
    let t = tx_tests::unique_table(prefix);
    exec(
        db,
        format!("CREATE TABLE {t} (id serial PRIMARY KEY, name text NOT NULL UNIQUE)"),
    )
    .await;
    t
}

async fn drop_tables(db: &PgTxPool, tables: &[&str]) {
    for t in tables {
        let _ = sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
            .execute(db.pool())
            .await;
    }
}

// ---- UserService.add -> LogService.add, the log marks rollback-only ----------------

#[derive(Clone, Copy, Debug)]
enum LogMode {
    Required,
    RequiresNew,
    Nested,
}

struct LogService {
    db: PgTxPool,
    table: String,
}

impl LogService {
    async fn insert(&self, message: &str) -> Result<u64, AppError> {
        Ok(insert_name(&self.db, &self.table, message).await?)
    }

    /// `@Transactional(propagation = REQUIRED)` + `setRollbackOnly()`: rolls back without an
    /// exception (one would propagate to the caller).
    #[transactional(propagation = REQUIRED, manager = self.db)]
    async fn add_required(&self, message: &str) -> Result<u64, AppError> {
        let n = self.insert(message).await?;
        tx_sqlx::set_rollback_only()?;
        Ok(n)
    }

    #[transactional(propagation = REQUIRES_NEW, manager = self.db)]
    async fn add_requires_new(&self, message: &str) -> Result<u64, AppError> {
        let n = self.insert(message).await?;
        tx_sqlx::set_rollback_only()?;
        Ok(n)
    }

    #[transactional(propagation = NESTED, manager = self.db)]
    async fn add_nested(&self, message: &str) -> Result<u64, AppError> {
        let n = self.insert(message).await?;
        tx_sqlx::set_rollback_only()?;
        Ok(n)
    }
}

struct UserService {
    db: PgTxPool,
    table: String,
    log: LogService,
}

impl UserService {
    #[transactional(propagation = REQUIRED, manager = self.db)]
    async fn add(&self, username: &str, mode: LogMode) -> Result<u64, AppError> {
        let added = insert_name(&self.db, &self.table, username).await?;
        let message = format!("added {username}");
        let logged = match mode {
            LogMode::Required => self.log.add_required(&message).await?,
            LogMode::RequiresNew => self.log.add_requires_new(&message).await?,
            LogMode::Nested => self.log.add_nested(&message).await?,
        };
        Ok(added + logged)
    }

    /// "The exception was swallowed by your catch": the failure is caught, so only
    /// `set_rollback_only()` keeps the user from being committed.
    #[transactional(manager = self.db)]
    async fn add_swallowing(
        &self,
        username: &str,
        mark_rollback_only: bool,
    ) -> Result<(), AppError> {
        insert_name(&self.db, &self.table, username).await?;
        if let Err(e) = validate(username) {
            // catch (Exception e) { e.printStackTrace(); }
            eprintln!("swallowed: {e}");
            if mark_rollback_only {
                tx_sqlx::set_rollback_only()?;
            }
        }
        Ok(())
    }
}

fn validate(username: &str) -> Result<(), AppError> {
    if username.starts_with("bad") {
        return Err(AppError::Business("invalid user name"));
    }
    Ok(())
}

/// A pool of `max` connections, a fresh `(name)` table named after `prefix`, and the service
/// `make` builds on them; `None` when PostgreSQL is down (test skipped).
async fn service<S>(
    max: u32,
    prefix: &str,
    make: impl FnOnce(PgTxPool, String) -> S,
) -> Option<(PgTxPool, String, S)> {
    let db = tx_tests::pg_pool(max).await?;
    let table = name_table(&db, prefix).await;
    let svc = make(db.clone(), table.clone());
    Some((db, table, svc))
}

/// A pool and a user service on fresh tables; `None` when PostgreSQL is down (skipped).
async fn user_service_on_server() -> Option<(PgTxPool, UserService)> {
    let db = tx_tests::pg_pool(4).await?;
    let svc = user_service(&db).await;
    Some((db, svc))
}

/// Asserts that the log service's table is empty (`why` says which transaction rolled it back).
async fn assert_no_log(db: &PgTxPool, svc: &UserService, why: &str) {
    assert_rows(db, &svc.log.table, &[], why).await;
}

async fn user_service(db: &PgTxPool) -> UserService {
    let users = name_table(db, "user").await;
    let logs = name_table(db, "user_log").await;
    UserService {
        db: db.clone(),
        table: users,
        log: LogService {
            db: db.clone(),
            table: logs,
        },
    }
}

/// The log service marks its transaction rollback-only, with each propagation: `REQUIRED`
/// dooms the user's transaction too (its commit turns into `UnexpectedRollback`);
/// `REQUIRES_NEW` and `NESTED` roll back the log alone (its own transaction, its savepoint),
/// and the user is committed. Each case on fresh tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_log_the_log_marks_rollback_only() {
    let Some(db) = tx_tests::pg_pool(4).await else {
        return;
    };
    let cases: [(LogMode, &str, &[&str], &str); 3] = [
        (LogMode::Required, "alice", &[], "log rolled back"),
        (
            LogMode::RequiresNew,
            "bob",
            &["bob"],
            "log's own transaction rolled back",
        ),
        (
            LogMode::Nested,
            "carol",
            &["carol"],
            "log rolled back to its savepoint",
        ),
    ];
    for (mode, user, users, why_no_log) in cases {
        let svc = user_service(&db).await;
        let result = svc.add(user, mode).await;
        if let LogMode::Required = mode {
            assert!(
                matches!(result, Err(AppError::Tx(TxError::UnexpectedRollback))),
                "the owner's commit must turn into UnexpectedRollback, got {result:?}"
            );
            assert_rows(&db, &svc.table, users, "user rolled back").await;
        } else {
            assert_eq!(
                result.unwrap(),
                2,
                "both inserts reported one row ({mode:?})"
            );
            assert_rows(&db, &svc.table, users, "user committed").await;
        }
        assert_no_log(&db, &svc, why_no_log).await;
        drop_tables(&db, &[&svc.table, &svc.log.table]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_log_swallowed_error_with_set_rollback_only_rolls_back() {
    let Some((db, svc)) = user_service_on_server().await else {
        return;
    };

    // The trap: the error is swallowed and nothing marks the transaction, so it commits.
    svc.add_swallowing("bad-dave", false).await.unwrap();
    assert_rows(
        &db,
        &svc.table,
        &["bad-dave"],
        "swallowed error alone commits",
    )
    .await;

    // The fix: set_rollback_only() in the catch. The owner rolls back and returns its own Ok.
    let result = svc.add_swallowing("bad-erin", true).await;
    assert!(
        result.is_ok(),
        "the owner that marks itself gets its own result: {result:?}"
    );
    assert_rows(&db, &svc.table, &["bad-dave"], "bad-erin rolled back").await;
    drop_tables(&db, &[&svc.table, &svc.log.table]).await;
}

// ---- audit in REQUIRES_NEW survives the outer failure, called on `self` ------------

struct FacadeService {
    db: PgTxPool,
    accounts: String,
    audit: String,
}

impl FacadeService {
    #[transactional(manager = self.db)]
    async fn deposit(&self, owner: &str, amount: i64) -> Result<(), AppError> {
        exec_with(
            &self.db,
            format!(
                "INSERT INTO {} (name, balance) VALUES ($1, $2)",
                self.accounts
            ),
            owner,
            amount,
        )
        .await?;
        Ok(())
    }

    #[transactional(propagation = REQUIRES_NEW, manager = self.db)]
    async fn write_audit(&self, owner: &str, note: &str) -> Result<(), AppError> {
        insert_name(&self.db, &self.audit, format!("audit-{owner}-{note}")).await?;
        Ok(())
    }

    /// Outer REQUIRED; the audit is written through `self` in its own transaction, then the
    /// outer work fails. With a Spring proxy `this.writeAudit` would silently join the outer
    /// transaction (the self-invocation trap); here it does not.
    #[transactional(manager = self.db)]
    async fn business_with_audit(&self, owner: &str) -> Result<(), AppError> {
        self.deposit(owner, 100).await?;
        self.write_audit(owner, "deposit-start").await?;
        Err(AppError::Business("outer failure after the audit"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_in_requires_new_survives_outer_failure() {
    let Some(db) = tx_tests::pg_pool(4).await else {
        return;
    };
    let accounts = tx_tests::unique_table("account");
    exec(&db, format!("CREATE TABLE {accounts} (id serial PRIMARY KEY, name text NOT NULL, balance bigint NOT NULL)")).await;
    let audit = name_table(&db, "audit").await;
    let svc = FacadeService {
        db: db.clone(),
        accounts: accounts.clone(),
        audit: audit.clone(),
    };

    let result = svc.business_with_audit("owner").await;

    assert!(matches!(result, Err(AppError::Business(_))), "{result:?}");
    assert_rows(
        &db,
        &accounts,
        &[],
        "the deposit rolled back with the outer transaction",
    )
    .await;
    assert_rows(
        &db,
        &audit,
        &["audit-owner-deposit-start"],
        "the REQUIRES_NEW audit stayed committed",
    )
    .await;

    // and the happy path commits both
    svc.deposit("other", 5).await.unwrap();
    assert_rows(&db, &accounts, &["other"], "the happy path commits").await;
    drop_tables(&db, &[&accounts, &audit]).await;
}

// ---- the risk check: business failure keeps the order, system failure rolls back ----

struct RiskService {
    down: bool,
}

impl RiskService {
    async fn check(&self, amount: i64) -> Result<(), AppError> {
        tokio::task::yield_now().await;
        if self.down {
            return Err(AppError::RiskServiceDown);
        }
        if amount > 10_000 {
            return Err(AppError::RiskRejected {
                reason: "amount too high".into(),
            });
        }
        Ok(())
    }
}

struct OrderService {
    db: PgTxPool,
    orders: String,
    items: String,
    risk: RiskService,
}

impl OrderService {
    /// A rejected risk check is a business outcome: the order stays, waiting for an audit
    /// (`no_rollback_for`); a broken risk service is a system failure: everything rolls back.
    #[transactional(manager = self.db, no_rollback_for = AppError::RiskRejected { .. })]
    async fn create_order(&self, order_no: &str, amount: i64) -> Result<String, AppError> {
        exec_with(
            &self.db,
            format!(
                "INSERT INTO {} (name, amount, status) VALUES ($1, $2, 'CREATED')",
                self.orders
            ),
            order_no,
            amount,
        )
        .await?;
        insert_name(&self.db, &self.items, format!("{order_no}-item-1")).await?;
        match self.risk.check(amount).await {
            Ok(()) => Ok(order_no.to_owned()),
            Err(AppError::RiskRejected { reason }) => {
                exec_with(
                    &self.db,
                    format!(
                        "UPDATE {} SET status = 'WAIT_AUDIT', note = $2 WHERE name = $1",
                        self.orders
                    ),
                    order_no,
                    format!("risk check failed: {reason}"),
                )
                .await?;
                Err(AppError::RiskRejected { reason })
            }
            Err(other) => Err(other),
        }
    }
}

async fn order_service(db: &PgTxPool, down: bool) -> OrderService {
    let orders = tx_tests::unique_table("order");
    exec(db, format!(
        "CREATE TABLE {orders} (id serial PRIMARY KEY, name text NOT NULL UNIQUE, amount bigint NOT NULL, status text NOT NULL, note text)"
    ))
    .await;
    let items = name_table(db, "item").await;
    OrderService {
        db: db.clone(),
        orders,
        items,
        risk: RiskService { down },
    }
}

async fn order_statuses(db: &PgTxPool, orders: &str) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT name, status, note FROM {orders} ORDER BY id"
    )))
    .fetch_all(db.pool())
    .await
    .expect("read orders")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_rejected_keeps_the_order_and_risk_service_failure_rolls_back() {
    let Some(db) = tx_tests::pg_pool(4).await else {
        return;
    };
    let svc = order_service(&db, false).await;

    let ok = svc.create_order("NO-1", 100).await;
    assert_eq!(ok.unwrap(), "NO-1");
    let rejected = svc.create_order("NO-2", 50_000).await;
    assert!(
        matches!(&rejected, Err(AppError::RiskRejected { reason }) if reason == "amount too high"),
        "the caller still gets the business error: {rejected:?}"
    );

    assert_eq!(
        order_statuses(&db, &svc.orders).await,
        [
            ("NO-1".to_owned(), "CREATED".to_owned(), None),
            (
                "NO-2".to_owned(),
                "WAIT_AUDIT".to_owned(),
                Some("risk check failed: amount too high".to_owned())
            ),
        ],
        "the rejected order was committed, waiting for audit"
    );
    assert_rows(
        &db,
        &svc.items,
        &["NO-1-item-1", "NO-2-item-1"],
        "both items committed",
    )
    .await;
    drop_tables(&db, &[&svc.orders, &svc.items]).await;

    // A broken risk service is a system failure.
    let svc = order_service(&db, true).await;

    let result = svc.create_order("NO-3", 100).await;

    assert!(
        matches!(result, Err(AppError::RiskServiceDown)),
        "{result:?}"
    );
    assert!(
        order_statuses(&db, &svc.orders).await.is_empty(),
        "no order left behind"
    );
    assert_rows(&db, &svc.items, &[], "no item left behind").await;
    drop_tables(&db, &[&svc.orders, &svc.items]).await;
}

// ---- timeout: the deadline rolls the transaction back while the body is still awaiting -------

struct SlowService {
    db: PgTxPool,
    table: String,
}

impl SlowService {
    #[transactional(manager = self.db, timeout = "300ms")]
    async fn slow_write(&self, name: &str, work: Duration) -> Result<(), AppError> {
        insert_name(&self.db, &self.table, name).await?;
        tokio::time::sleep(work).await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_300ms_rolls_back_at_the_deadline() {
    let Some((db, table, svc)) =
        service(4, "macro_timeout", |db, table| SlowService { db, table }).await
    else {
        return;
    };

    let started = Instant::now();
    let result = svc.slow_write("late", Duration::from_secs(3)).await;
    let elapsed = started.elapsed();

    assert!(
        matches!(result, Err(AppError::Tx(TxError::Timeout))),
        "{result:?}"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "the call ended at the deadline, not after the body's 3 s: {elapsed:?}"
    );
    assert_rows(&db, &table, &[], "the write was rolled back").await;

    // within the deadline it commits
    svc.slow_write("quick", Duration::from_millis(10))
        .await
        .unwrap();
    assert_rows(&db, &table, &["quick"], "within the deadline it commits").await;
    drop_tables(&db, &[&table]).await;
}

// ---- retry: concurrent serializable increments of one row converge --------------------------

struct CounterService {
    db: PgTxPool,
    table: String,
    attempts: AtomicU32,
}

impl CounterService {
    /// Read-modify-write at SERIALIZABLE: concurrent calls fail with serialization errors
    /// (SQLSTATE 40001) and `retry` re-runs them. `key` is cloned for each attempt.
    #[transactional(manager = self.db, isolation = Serializable, retry = 5)]
    async fn increment(self: Arc<Self>, key: String) -> Result<i64, AppError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT n FROM {} WHERE name = $1",
            self.table
        )))
        .bind(&key)
        .fetch_one(&self.db)
        .await?;
        // let the other calls read the same value before anyone writes
        tokio::time::sleep(Duration::from_millis(100)).await;
        exec_with(
            &self.db,
            format!("UPDATE {} SET n = $2 WHERE name = $1", self.table),
            &key,
            n + 1,
        )
        .await?;
        Ok(n + 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_5_converges_under_serializable_conflicts() {
    const CALLS: u32 = 4;
    let Some(db) = tx_tests::pg_pool(CALLS + 2).await else {
        return;
    };
    let table = tx_tests::unique_table("macro_retry");
    exec(
        &db,
        format!("CREATE TABLE {table} (name text PRIMARY KEY, n bigint NOT NULL)"),
    )
    .await;
    exec(
        &db,
        format!("INSERT INTO {table} (name, n) VALUES ('hits', 0)"),
    )
    .await;
    let svc = Arc::new(CounterService {
        db: db.clone(),
        table: table.clone(),
        attempts: AtomicU32::new(0),
    });

    let calls: Vec<_> = (0..CALLS)
        .map(|_| tokio::spawn(svc.clone().increment("hits".to_owned())))
        .collect();
    let mut seen = Vec::new();
    for call in calls {
        seen.push(
            call.await
                .expect("task")
                .expect("every increment commits within 5 retries"),
        );
    }
    seen.sort_unstable();

    let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT n FROM {table} WHERE name = 'hits'"
    )))
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(n, i64::from(CALLS), "no lost update");
    assert_eq!(
        seen,
        (1..=i64::from(CALLS)).collect::<Vec<_>>(),
        "each call saw its own increment"
    );
    assert!(
        svc.attempts.load(Ordering::SeqCst) > CALLS,
        "the calls conflicted and were re-run ({} attempts)",
        svc.attempts.load(Ordering::SeqCst)
    );
    drop_tables(&db, &[&table]).await;
}

// ---- a transactional future moved into tokio::spawn ------------------------------------------

struct Registrations {
    db: PgTxPool,
    table: String,
}

impl Registrations {
    #[transactional(manager = self.db)]
    async fn register(self: Arc<Self>, name: String, fail: bool) -> Result<bool, AppError> {
        insert_name(&self.db, &self.table, &name).await?;
        // a task spawned from inside starts outside the transaction (like Spring's @Async)
        let inside = tx_sqlx::is_actual_transaction_active();
        let in_spawned = tokio::spawn(async { tx_sqlx::is_actual_transaction_active() })
            .await
            .expect("task");
        assert!(inside && !in_spawned);
        if fail {
            return Err(AppError::Business("registration refused"));
        }
        Ok(inside)
    }
}

fn assert_send<T: Send + 'static>(t: T) -> T {
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_future_moved_into_tokio_spawn() {
    let Some(db) = tx_tests::pg_pool(4).await else {
        return;
    };
    let table = name_table(&db, "macro_spawn").await;
    let svc = Arc::new(Registrations {
        db: db.clone(),
        table: table.clone(),
    });

    let ok = tokio::spawn(assert_send(svc.clone().register("kept".into(), false)));
    let failed = tokio::spawn(assert_send(svc.clone().register("refused".into(), true)));

    assert!(ok.await.expect("task").expect("committed"));
    assert!(matches!(
        failed.await.expect("task"),
        Err(AppError::Business(_))
    ));
    assert_rows(
        &db,
        &table,
        &["kept"],
        "the failed call rolled back in its task",
    )
    .await;
    drop_tables(&db, &[&table]).await;
}

// ---- a service whose error type is plain sqlx::Error -----------------------------------------

/// The engine's error inside a `sqlx::Error` (how `From<TxError> for sqlx::Error` wraps it).
fn tx_error_in(e: &sqlx::Error) -> Option<&TxError> {
    match e {
        sqlx::Error::Io(io) => io.get_ref()?.downcast_ref::<TxError>(),
        _ => None,
    }
}

struct SqlxErrorService {
    db: PgTxPool,
    table: String,
}

impl SqlxErrorService {
    async fn insert(&self, name: &str) -> Result<(), sqlx::Error> {
        insert_name(&self.db, &self.table, name).await?;
        Ok(())
    }

    #[transactional(manager = self.db, timeout = "300ms")]
    async fn slow_insert(&self, name: &str, work: Duration) -> Result<(), sqlx::Error> {
        self.insert(name).await?;
        tokio::time::sleep(work).await;
        Ok(())
    }

    /// The second insert violates the unique constraint: the first one must not survive.
    #[transactional(manager = self.db)]
    async fn insert_twice(&self, name: &str) -> Result<(), sqlx::Error> {
        self.insert(name).await?;
        self.insert(name).await
    }

    /// A participant marks the transaction rollback-only; the owner returns `Ok`.
    #[transactional(manager = self.db)]
    async fn with_vetoing_participant(&self, name: &str) -> Result<(), sqlx::Error> {
        self.insert(name).await?;
        self.veto().await
    }

    #[transactional(manager = self.db, propagation = Mandatory)]
    async fn veto(&self) -> Result<(), sqlx::Error> {
        tx_sqlx::set_rollback_only()?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_error_functions_roll_back_and_report_the_engine_error() {
    let Some((db, table, svc)) = service(4, "macro_sqlx_err", |db, table| SqlxErrorService {
        db,
        table,
    })
    .await
    else {
        return;
    };

    // within the deadline it commits
    svc.slow_insert("quick", Duration::from_millis(1))
        .await
        .unwrap();

    // past the deadline: rolled back, and the caller finds the timeout inside the sqlx::Error
    let err = svc
        .slow_insert("late", Duration::from_secs(3))
        .await
        .expect_err("the deadline passed");
    assert!(
        matches!(tx_error_in(&err), Some(TxError::Timeout)),
        "{err:?}"
    );
    assert!(
        matches!(&err, sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut),
        "{err:?}"
    );
    assert!(
        matches!(TxError::from(err), TxError::Timeout),
        "converting back gives the engine's error"
    );

    // a database error of the body: its own sqlx::Error, and nothing of the call committed
    let err = svc.insert_twice("dup").await.expect_err("unique violation");
    match &err {
        sqlx::Error::Database(db_err) => assert_eq!(db_err.code().as_deref(), Some("23505")),
        other => panic!("expected the unique violation, got {other:?}"),
    }
    assert!(tx_error_in(&err).is_none());

    // rollback-only from a participant: the owner's commit becomes UnexpectedRollback
    let err = svc
        .with_vetoing_participant("vetoed")
        .await
        .expect_err("rolled back");
    assert!(
        matches!(tx_error_in(&err), Some(TxError::UnexpectedRollback)),
        "{err:?}"
    );

    // outside every transaction, Mandatory is refused through the same error type
    let err = svc.veto().await.expect_err("no transaction");
    assert!(
        matches!(tx_error_in(&err), Some(TxError::NoTransaction)),
        "{err:?}"
    );

    assert_rows(&db, &table, &["quick"], "every other call rolled back").await;
    drop_tables(&db, &[&table]).await;
}
