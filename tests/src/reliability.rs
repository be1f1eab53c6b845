//! Support for the reliability tests (issue 7): backends seen through one small trait so that
//! every fault scenario is written once and run on PostgreSQL and MariaDB, a poll driver that
//! cuts a future after exactly `k` polls, probes of server-side session state, and the
//! scenarios themselves (cancellation sweep, panics, server faults, commit outcome unknown,
//! pool exhaustion, the bank).
//!
//! Every check reads the database from a fresh connection outside the pool under test.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AssertSqlSafe, Connection, MySqlConnection, PgConnection, Row, SqliteConnection};
use tokio::sync::{Barrier, Notify};
use tx_sqlx::manager::TransactionManager;
use tx_sqlx::{
    BoxError, Completion, MySqlTxPool, PgTxPool, Propagation, SqliteTxPool,
    TransactionSynchronization, TransactionTemplate, TxError,
};

/// A boxed `Send` future.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// ---------------------------------------------------------------------------------------------
// Errors of the code under test
// ---------------------------------------------------------------------------------------------

/// The error type of the transactional bodies under test.
#[derive(Debug)]
pub enum AppError {
    /// A failure the test injected on purpose.
    Injected(&'static str),
    /// The bank's business rule: a balance may not go below zero.
    Insufficient,
    /// Everything from the engine and the driver.
    Tx(TxError),
}

impl From<TxError> for AppError {
    fn from(e: TxError) -> Self {
        AppError::Tx(e)
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Tx(e.into())
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Injected(what) => write!(f, "injected failure: {what}"),
            AppError::Insufficient => f.write_str("insufficient funds"),
            AppError::Tx(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AppError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AppError::Tx(e) => e.source(),
            _ => None,
        }
    }
}

/// `e` and its sources, joined (for messages and "names the cause" checks).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(" <- ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Whether a `sqlx::Error` matching `pred` is somewhere in `e`'s source chain.
pub fn has_sqlx_source(
    e: &(dyn std::error::Error + 'static),
    pred: impl Fn(&sqlx::Error) -> bool,
) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<sqlx::Error>().is_some_and(&pred) {
            return true;
        }
        source = s.source();
    }
    false
}

/// Marker in the message of every panic a test injects on purpose.
pub const INJECTED_PANIC: &str = "[injected panic]";

/// Keeps the default panic output for every panic except the injected ones (which would
/// otherwise flood the test output). Process-wide; installed once.
pub fn quiet_injected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if !msg.contains(INJECTED_PANIC) {
                default(info);
            }
        }));
    });
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// What a scenario needs from a database: its transaction manager, a `(id, tag)` table, and
/// reads from a fresh connection.
pub trait Backend: Clone + Send + Sync + 'static {
    /// The `TxPool` type.
    type Pool: TransactionManager + Clone + Send + Sync + 'static;

    /// "PostgreSQL", "MariaDB", "SQLite".
    fn name(&self) -> &'static str;

    /// The transaction manager (the `TxPool`).
    fn manager(&self) -> &Self::Pool;

    /// A template on this backend's manager.
    fn template(&self) -> TransactionTemplate {
        TransactionTemplate::new(self.manager().clone())
    }

    /// `(size, idle)` of the sqlx pool.
    fn pool_counts(&self) -> (u32, usize);

    /// Closes the sqlx pool.
    fn close(&self) -> BoxFut<'_, ()>;

    /// Creates a fresh `(id auto-increment, tag text)` table, from a fresh connection.
    fn create_table<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, String>;

    /// Drops a table, from a fresh connection.
    fn drop_table<'a>(&'a self, table: &'a str) -> BoxFut<'a, ()>;

    /// Deletes every row, from a fresh connection.
    fn clear<'a>(&'a self, table: &'a str) -> BoxFut<'a, ()>;

    /// `INSERT INTO table (tag) VALUES (tag)` through the transaction-aware `&TxPool`.
    fn insert<'a>(&'a self, table: &'a str, tag: &'a str) -> BoxFut<'a, Result<(), sqlx::Error>>;

    /// The table's tags in id order, read from a fresh connection.
    fn tags<'a>(&'a self, table: &'a str) -> BoxFut<'a, Vec<String>>;
}

/// A server database: session probes, faults, and the bank's statements.
pub trait Server: Backend {
    /// Sessions of this pool inside a transaction, as the server sees them.
    fn open_transactions(&self) -> BoxFut<'_, i64>;

    /// Takes every connection of the pool at once and checks each is outside any transaction
    /// with the session settings of a brand-new connection; `Err` says what is wrong.
    fn check_clean(&self) -> BoxFut<'_, Result<(), String>>;

    /// The server session id of the connection the current transaction runs on.
    fn session_id(&self) -> BoxFut<'_, Result<i64, sqlx::Error>>;

    /// Whether session `id` still exists on the server.
    fn session_alive(&self, id: i64) -> BoxFut<'_, bool>;

    /// Kills session `id` from a fresh connection (`pg_terminate_backend` / `KILL`).
    fn kill(&self, id: i64) -> BoxFut<'_, ()>;

    /// A statement sleeping `secs` on the server, through `&TxPool`.
    fn sleep(&self, secs: f64) -> BoxFut<'_, Result<(), sqlx::Error>>;

    /// Creates `accounts(id, balance)` with `n` accounts of `initial` each and
    /// `ledger(id, transfer_id, account, delta)` holding their deposits (transfer 0).
    fn create_bank(&self, n: i64, initial: i64) -> BoxFut<'_, (String, String)>;

    /// `balance += delta` for account `id`, through `&TxPool`; returns the new balance.
    fn add<'a>(
        &'a self,
        accounts: &'a str,
        id: i64,
        delta: i64,
    ) -> BoxFut<'a, Result<i64, sqlx::Error>>;

    /// Appends a ledger line, through `&TxPool`.
    fn ledger<'a>(
        &'a self,
        ledger: &'a str,
        transfer: i64,
        account: i64,
        delta: i64,
    ) -> BoxFut<'a, Result<(), sqlx::Error>>;

    /// Every `(id, balance)`, from a fresh connection.
    fn balances<'a>(&'a self, accounts: &'a str) -> BoxFut<'a, Vec<(i64, i64)>>;

    /// Every `(transfer_id, account, delta)`, from a fresh connection.
    fn ledger_rows<'a>(&'a self, ledger: &'a str) -> BoxFut<'a, Vec<(i64, i64, i64)>>;
}

/// Waits until `cond` holds, up to `limit`; returns whether it did.
pub async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits (up to 5 s) until every connection of the pool is back and idle; `(size, idle)`.
pub async fn settle<B: Backend>(b: &B) -> (u32, usize) {
    eventually(Duration::from_secs(5), || async {
        let (size, idle) = b.pool_counts();
        size as usize == idle
    })
    .await;
    b.pool_counts()
}

/// Waits (up to 5 s) until the server shows no open transaction of this pool; the count left.
pub async fn no_open_transactions<B: Server>(b: &B) -> i64 {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let left = b.open_transactions().await;
        if left == 0 || Instant::now() > until {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ----- PostgreSQL ----------------------------------------------------------------------------

/// PostgreSQL with a pool whose sessions carry a unique `application_name` (so
/// `pg_stat_activity` can be filtered to them) and `deadlock_timeout = 50ms`.
#[derive(Clone)]
pub struct PgBackend {
    /// The pool under test.
    pub db: PgTxPool,
    /// The sessions' `application_name`.
    pub app: String,
}

static APP_SEQ: AtomicU32 = AtomicU32::new(0);

impl PgBackend {
    /// A pool of `max` connections; `None` (test skipped) when PostgreSQL is down.
    pub async fn connect(max: u32, acquire_timeout: Duration, tag: &str) -> Option<PgBackend> {
        Self::connect_port(max, acquire_timeout, tag, None).await
    }

    /// Like [`connect`](Self::connect), through `127.0.0.1:port` (a proxy) without TLS.
    pub async fn connect_port(
        max: u32,
        acquire_timeout: Duration,
        tag: &str,
        port: Option<u16>,
    ) -> Option<PgBackend> {
        // The shared "server missing" policy (skip loudly, or fail when servers are required).
        let probe = crate::pg_pool(1).await?;
        probe.pool().close().await;
        let app = format!(
            "txrel_{tag}_{}_{}",
            std::process::id(),
            APP_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut options = PgConnectOptions::from_str(&crate::pg_url())
            .expect("PostgreSQL URL")
            .application_name(&app)
            .options([("deadlock_timeout", "50ms")]);
        if let Some(port) = port {
            options = options
                .host("127.0.0.1")
                .port(port)
                .ssl_mode(PgSslMode::Disable);
        }
        let pool = PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await
            .expect("connect to PostgreSQL");
        Some(PgBackend {
            db: PgTxPool::new(pool),
            app,
        })
    }

    /// A brand-new connection outside every pool.
    pub async fn fresh() -> PgConnection {
        PgConnection::connect(&crate::pg_url())
            .await
            .expect("fresh PostgreSQL connection")
    }
}

/// The session state a clean PostgreSQL connection shows: not inside a transaction block
/// (`now()` is this statement's start), no transaction id, default settings.
const PG_CLEAN_SQL: &str = "SELECT (now() = statement_timestamp())::text || ',' || \
     (pg_current_xact_id_if_assigned() IS NULL)::text || ',' || \
     current_setting('statement_timeout') || ',' || \
     current_setting('transaction_isolation') || ',' || \
     current_setting('transaction_read_only')";

async fn pg_clean_state(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    // Simple protocol: one statement, one implicit transaction.
    let row = sqlx::raw_sql(PG_CLEAN_SQL).fetch_one(conn).await?;
    row.try_get::<String, _>(0)
}

impl Backend for PgBackend {
    type Pool = PgTxPool;

    fn name(&self) -> &'static str {
        "PostgreSQL"
    }

    fn manager(&self) -> &PgTxPool {
        &self.db
    }

    fn pool_counts(&self) -> (u32, usize) {
        (self.db.pool().size(), self.db.pool().num_idle())
    }

    fn close(&self) -> BoxFut<'_, ()> {
        Box::pin(self.db.pool().close())
    }

    fn create_table<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, String> {
        Box::pin(async move {
            let table = crate::unique_table(prefix);
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS {table}; \
                 CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, tag TEXT NOT NULL)"
            )))
            .execute(&mut Self::fresh().await)
            .await
            .expect("create table");
            table
        })
    }

    fn drop_table<'a>(&'a self, table: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
                .execute(&mut Self::fresh().await)
                .await;
        })
    }

    fn clear<'a>(&'a self, table: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            sqlx::raw_sql(AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&mut Self::fresh().await)
                .await
                .expect("clear table");
        })
    }

    fn insert<'a>(&'a self, table: &'a str, tag: &'a str) -> BoxFut<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {table} (tag) VALUES ($1)"
            )))
            .bind(tag)
            .execute(&self.db)
            .await
            .map(|_| ())
        })
    }

    fn tags<'a>(&'a self, table: &'a str) -> BoxFut<'a, Vec<String>> {
        Box::pin(async move {
            sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT tag FROM {table} ORDER BY id"
            )))
            .fetch_all(&mut Self::fresh().await)
            .await
            .expect("read table")
        })
    }
}

impl Server for PgBackend {
    fn open_transactions(&self) -> BoxFut<'_, i64> {
        Box::pin(async move {
            sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = $1 AND xact_start IS NOT NULL",
            )
            .bind(&self.app)
            .fetch_one(&mut Self::fresh().await)
            .await
            .expect("query pg_stat_activity")
        })
    }

    fn check_clean(&self) -> BoxFut<'_, Result<(), String>> {
        Box::pin(async move {
            let expected = pg_clean_state(&mut Self::fresh().await)
                .await
                .expect("clean state of a fresh connection");
            let size = self.db.pool().size();
            let mut conns = Vec::new();
            for _ in 0..size {
                match tokio::time::timeout(Duration::from_secs(5), self.db.pool().acquire()).await {
                    Ok(Ok(c)) => conns.push(c),
                    Ok(Err(e)) => return Err(format!("acquiring a pooled connection failed: {e}")),
                    Err(_) => return Err("a pooled connection could not be acquired in 5 s".into()),
                }
            }
            for (i, conn) in conns.iter_mut().enumerate() {
                let state = pg_clean_state(conn)
                    .await
                    .map_err(|e| format!("pooled connection {i}: probe failed: {e}"))?;
                if state != expected {
                    return Err(format!(
                        "pooled connection {i} is not clean: (fresh tx, no xid, statement_timeout, \
                         isolation, read_only) = {state}, expected {expected}"
                    ));
                }
            }
            Ok(())
        })
    }

    fn session_id(&self) -> BoxFut<'_, Result<i64, sqlx::Error>> {
        Box::pin(async move {
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&self.db)
                .await?;
            Ok(i64::from(pid))
        })
    }

    fn session_alive(&self, id: i64) -> BoxFut<'_, bool> {
        Box::pin(async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
                .bind(id as i32)
                .fetch_one(&mut Self::fresh().await)
                .await
                .expect("query pg_stat_activity");
            n > 0
        })
    }

    fn kill(&self, id: i64) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(id as i32)
                .fetch_one(&mut Self::fresh().await)
                .await
                .expect("pg_terminate_backend");
            assert!(killed, "pg_terminate_backend({id}) found no such session");
        })
    }

    fn sleep(&self, secs: f64) -> BoxFut<'_, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::query("SELECT pg_sleep($1)")
                .bind(secs)
                .execute(&self.db)
                .await
                .map(|_| ())
        })
    }

    fn create_bank(&self, n: i64, initial: i64) -> BoxFut<'_, (String, String)> {
        Box::pin(async move {
            let accounts = crate::unique_table("acct");
            let ledger = crate::unique_table("ledger");
            sqlx::raw_sql(AssertSqlSafe(format!(
                "CREATE TABLE {accounts} (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL); \
                 CREATE TABLE {ledger} (id BIGSERIAL PRIMARY KEY, transfer_id BIGINT NOT NULL, \
                   account BIGINT NOT NULL, delta BIGINT NOT NULL); \
                 INSERT INTO {accounts} SELECT g, {initial} FROM generate_series(1, {n}) g; \
                 INSERT INTO {ledger} (transfer_id, account, delta) \
                   SELECT 0, g, {initial} FROM generate_series(1, {n}) g"
            )))
            .execute(&mut Self::fresh().await)
            .await
            .expect("create bank");
            (accounts, ledger)
        })
    }

    fn add<'a>(
        &'a self,
        accounts: &'a str,
        id: i64,
        delta: i64,
    ) -> BoxFut<'a, Result<i64, sqlx::Error>> {
        Box::pin(async move {
            sqlx::query_scalar(AssertSqlSafe(format!(
                "UPDATE {accounts} SET balance = balance + $1 WHERE id = $2 RETURNING balance"
            )))
            .bind(delta)
            .bind(id)
            .fetch_one(&self.db)
            .await
        })
    }

    fn ledger<'a>(
        &'a self,
        ledger: &'a str,
        transfer: i64,
        account: i64,
        delta: i64,
    ) -> BoxFut<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {ledger} (transfer_id, account, delta) VALUES ($1, $2, $3)"
            )))
            .bind(transfer)
            .bind(account)
            .bind(delta)
            .execute(&self.db)
            .await
            .map(|_| ())
        })
    }

    fn balances<'a>(&'a self, accounts: &'a str) -> BoxFut<'a, Vec<(i64, i64)>> {
        Box::pin(async move {
            sqlx::query_as(AssertSqlSafe(format!(
                "SELECT id, balance FROM {accounts} ORDER BY id"
            )))
            .fetch_all(&mut Self::fresh().await)
            .await
            .expect("read balances")
        })
    }

    fn ledger_rows<'a>(&'a self, ledger: &'a str) -> BoxFut<'a, Vec<(i64, i64, i64)>> {
        Box::pin(async move {
            sqlx::query_as(AssertSqlSafe(format!(
                "SELECT transfer_id, account, delta FROM {ledger} ORDER BY id"
            )))
            .fetch_all(&mut Self::fresh().await)
            .await
            .expect("read ledger")
        })
    }
}

// ----- MariaDB / MySQL -----------------------------------------------------------------------

/// MariaDB with a pool that records the connection id of each of its sessions (MariaDB has no
/// `application_name`), so `information_schema.innodb_trx` can be filtered to them.
#[derive(Clone)]
pub struct MySqlBackend {
    /// The pool under test.
    pub db: MySqlTxPool,
    ids: Arc<Mutex<HashSet<u64>>>,
}

impl MySqlBackend {
    /// A pool of `max` connections; `None` (test skipped) when MariaDB is down.
    pub async fn connect(max: u32, acquire_timeout: Duration) -> Option<MySqlBackend> {
        Self::connect_port(max, acquire_timeout, None).await
    }

    /// Like [`connect`](Self::connect), through `127.0.0.1:port` (a proxy) without TLS.
    pub async fn connect_port(
        max: u32,
        acquire_timeout: Duration,
        port: Option<u16>,
    ) -> Option<MySqlBackend> {
        let probe = crate::mysql_pool(1).await?;
        probe.pool().close().await;
        let mut options = MySqlConnectOptions::from_str(&crate::mysql_url()).expect("MySQL URL");
        if let Some(port) = port {
            options = options
                .host("127.0.0.1")
                .port(port)
                .ssl_mode(MySqlSslMode::Disabled);
        }
        let ids: Arc<Mutex<HashSet<u64>>> = Arc::default();
        let ids2 = ids.clone();
        let pool = MySqlPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(acquire_timeout)
            .after_connect(move |conn, _| {
                let ids = ids2.clone();
                Box::pin(async move {
                    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
                        .fetch_one(&mut *conn)
                        .await?;
                    // A lost lock wait must not stall a test for the default 50 s.
                    sqlx::raw_sql("SET SESSION innodb_lock_wait_timeout = 10")
                        .execute(&mut *conn)
                        .await?;
                    ids.lock().unwrap().insert(id);
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .expect("connect to MariaDB");
        Some(MySqlBackend {
            db: MySqlTxPool::new(pool),
            ids,
        })
    }

    /// A brand-new connection outside every pool.
    pub async fn fresh() -> MySqlConnection {
        MySqlConnection::connect(&crate::mysql_url())
            .await
            .expect("fresh MariaDB connection")
    }

    fn id_list(&self) -> Option<String> {
        let ids = self.ids.lock().unwrap();
        if ids.is_empty() {
            return None;
        }
        Some(ids.iter().map(u64::to_string).collect::<Vec<_>>().join(","))
    }
}

/// The session state a clean MariaDB connection shows: no open transaction, no statement
/// bound left from a deadline, default isolation and access mode.
const MYSQL_CLEAN_SQL: &str = "SELECT CONCAT(@@in_transaction, ',', @@max_statement_time, ',', \
     @@tx_isolation, ',', @@tx_read_only, ',', @@autocommit)";

async fn mysql_clean_state(conn: &mut MySqlConnection) -> Result<String, sqlx::Error> {
    let row = sqlx::raw_sql(MYSQL_CLEAN_SQL).fetch_one(conn).await?;
    row.try_get::<String, _>(0)
}

impl Backend for MySqlBackend {
    type Pool = MySqlTxPool;

    fn name(&self) -> &'static str {
        "MariaDB"
    }

    fn manager(&self) -> &MySqlTxPool {
        &self.db
    }

    fn pool_counts(&self) -> (u32, usize) {
        (self.db.pool().size(), self.db.pool().num_idle())
    }

    fn close(&self) -> BoxFut<'_, ()> {
        Box::pin(self.db.pool().close())
    }

    fn create_table<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, String> {
        Box::pin(async move {
            let table = crate::unique_table(prefix);
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS {table}; \
                 CREATE TABLE {table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
                   tag VARCHAR(100) NOT NULL) ENGINE=InnoDB"
            )))
            .execute(&mut Self::fresh().await)
            .await
            .expect("create table");
            table
        })
    }

    fn drop_table<'a>(&'a self, table: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
                .execute(&mut Self::fresh().await)
                .await;
        })
    }

    fn clear<'a>(&'a self, table: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            sqlx::raw_sql(AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&mut Self::fresh().await)
                .await
                .expect("clear table");
        })
    }

    fn insert<'a>(&'a self, table: &'a str, tag: &'a str) -> BoxFut<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {table} (tag) VALUES (?)"
            )))
            .bind(tag)
            .execute(&self.db)
            .await
            .map(|_| ())
        })
    }

    fn tags<'a>(&'a self, table: &'a str) -> BoxFut<'a, Vec<String>> {
        Box::pin(async move {
            sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT tag FROM {table} ORDER BY id"
            )))
            .fetch_all(&mut Self::fresh().await)
            .await
            .expect("read table")
        })
    }
}

impl Server for MySqlBackend {
    fn open_transactions(&self) -> BoxFut<'_, i64> {
        Box::pin(async move {
            let Some(ids) = self.id_list() else {
                return 0;
            };
            // information_schema.innodb_trx is a cache refreshed at most every 100 ms.
            tokio::time::sleep(Duration::from_millis(120)).await;
            sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM information_schema.innodb_trx \
                 WHERE trx_mysql_thread_id IN ({ids})"
            )))
            .fetch_one(&mut Self::fresh().await)
            .await
            .expect("query innodb_trx")
        })
    }

    fn check_clean(&self) -> BoxFut<'_, Result<(), String>> {
        Box::pin(async move {
            let expected = mysql_clean_state(&mut Self::fresh().await)
                .await
                .expect("clean state of a fresh connection");
            let size = self.db.pool().size();
            let mut conns = Vec::new();
            for _ in 0..size {
                match tokio::time::timeout(Duration::from_secs(5), self.db.pool().acquire()).await {
                    Ok(Ok(c)) => conns.push(c),
                    Ok(Err(e)) => return Err(format!("acquiring a pooled connection failed: {e}")),
                    Err(_) => return Err("a pooled connection could not be acquired in 5 s".into()),
                }
            }
            for (i, conn) in conns.iter_mut().enumerate() {
                let state = mysql_clean_state(conn)
                    .await
                    .map_err(|e| format!("pooled connection {i}: probe failed: {e}"))?;
                if state != expected {
                    return Err(format!(
                        "pooled connection {i} is not clean: (in_transaction, max_statement_time, \
                         isolation, read_only, autocommit) = {state}, expected {expected}"
                    ));
                }
            }
            Ok(())
        })
    }

    fn session_id(&self) -> BoxFut<'_, Result<i64, sqlx::Error>> {
        Box::pin(async move {
            let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
                .fetch_one(&self.db)
                .await?;
            Ok(id as i64)
        })
    }

    fn session_alive(&self, id: i64) -> BoxFut<'_, bool> {
        Box::pin(async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.processlist WHERE id = ?",
            )
            .bind(id)
            .fetch_one(&mut Self::fresh().await)
            .await
            .expect("query processlist");
            n > 0
        })
    }

    fn kill(&self, id: i64) -> BoxFut<'_, ()> {
        Box::pin(async move {
            sqlx::raw_sql(AssertSqlSafe(format!("KILL CONNECTION {id}")))
                .execute(&mut Self::fresh().await)
                .await
                .expect("KILL CONNECTION");
        })
    }

    fn sleep(&self, secs: f64) -> BoxFut<'_, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::query("SELECT SLEEP(?)")
                .bind(secs)
                .execute(&self.db)
                .await
                .map(|_| ())
        })
    }

    fn create_bank(&self, n: i64, initial: i64) -> BoxFut<'_, (String, String)> {
        Box::pin(async move {
            let accounts = crate::unique_table("acct");
            let ledger = crate::unique_table("ledger");
            let values = |f: &dyn Fn(i64) -> String| (1..=n).map(f).collect::<Vec<_>>().join(",");
            sqlx::raw_sql(AssertSqlSafe(format!(
                "CREATE TABLE {accounts} (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB; \
                 CREATE TABLE {ledger} (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
                   transfer_id BIGINT NOT NULL, account BIGINT NOT NULL, delta BIGINT NOT NULL) \
                   ENGINE=InnoDB; \
                 INSERT INTO {accounts} (id, balance) VALUES {}; \
                 INSERT INTO {ledger} (transfer_id, account, delta) VALUES {}",
                values(&|i| format!("({i}, {initial})")),
                values(&|i| format!("(0, {i}, {initial})")),
            )))
            .execute(&mut Self::fresh().await)
            .await
            .expect("create bank");
            (accounts, ledger)
        })
    }

    fn add<'a>(
        &'a self,
        accounts: &'a str,
        id: i64,
        delta: i64,
    ) -> BoxFut<'a, Result<i64, sqlx::Error>> {
        Box::pin(async move {
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE {accounts} SET balance = balance + ? WHERE id = ?"
            )))
            .bind(delta)
            .bind(id)
            .execute(&self.db)
            .await?;
            sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT balance FROM {accounts} WHERE id = ?"
            )))
            .bind(id)
            .fetch_one(&self.db)
            .await
        })
    }

    fn ledger<'a>(
        &'a self,
        ledger: &'a str,
        transfer: i64,
        account: i64,
        delta: i64,
    ) -> BoxFut<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {ledger} (transfer_id, account, delta) VALUES (?, ?, ?)"
            )))
            .bind(transfer)
            .bind(account)
            .bind(delta)
            .execute(&self.db)
            .await
            .map(|_| ())
        })
    }

    fn balances<'a>(&'a self, accounts: &'a str) -> BoxFut<'a, Vec<(i64, i64)>> {
        Box::pin(async move {
            sqlx::query_as(AssertSqlSafe(format!(
                "SELECT id, balance FROM {accounts} ORDER BY id"
            )))
            .fetch_all(&mut Self::fresh().await)
            .await
            .expect("read balances")
        })
    }

    fn ledger_rows<'a>(&'a self, ledger: &'a str) -> BoxFut<'a, Vec<(i64, i64, i64)>> {
        Box::pin(async move {
            sqlx::query_as(AssertSqlSafe(format!(
                "SELECT transfer_id, account, delta FROM {ledger} ORDER BY id"
            )))
            .fetch_all(&mut Self::fresh().await)
            .await
            .expect("read ledger")
        })
    }
}

// ----- SQLite --------------------------------------------------------------------------------

/// SQLite on a temporary file database (WAL), from [`crate::sqlite_pool`].
#[derive(Clone)]
pub struct SqliteBackend {
    /// The pool under test.
    pub db: SqliteTxPool,
    path: PathBuf,
    _dir: Arc<tempfile::TempDir>,
}

impl SqliteBackend {
    /// A pool of `max` connections on a new database file.
    pub async fn connect(max: u32) -> SqliteBackend {
        let (db, dir) = crate::sqlite_pool(max).await;
        SqliteBackend {
            db,
            path: dir.path().join("test.db"),
            _dir: Arc::new(dir),
        }
    }

    /// A brand-new connection on the same file, outside the pool.
    pub async fn fresh(&self) -> SqliteConnection {
        SqliteConnection::connect_with(
            &SqliteConnectOptions::new()
                .filename(&self.path)
                .busy_timeout(Duration::from_secs(5)),
        )
        .await
        .expect("fresh SQLite connection")
    }
}

impl Backend for SqliteBackend {
    type Pool = SqliteTxPool;

    fn name(&self) -> &'static str {
        "SQLite"
    }

    fn manager(&self) -> &SqliteTxPool {
        &self.db
    }

    fn pool_counts(&self) -> (u32, usize) {
        (self.db.pool().size(), self.db.pool().num_idle())
    }

    fn close(&self) -> BoxFut<'_, ()> {
        Box::pin(self.db.pool().close())
    }

    fn create_table<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, String> {
        Box::pin(async move {
            let table = crate::unique_table(prefix);
            sqlx::raw_sql(AssertSqlSafe(format!(
                "CREATE TABLE {table} (id INTEGER PRIMARY KEY AUTOINCREMENT, tag TEXT NOT NULL)"
            )))
            .execute(&mut self.fresh().await)
            .await
            .expect("create table");
            table
        })
    }

    fn drop_table<'a>(&'a self, table: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
                .execute(&mut self.fresh().await)
                .await;
        })
    }

    fn clear<'a>(&'a self, table: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            sqlx::raw_sql(AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&mut self.fresh().await)
                .await
                .expect("clear table");
        })
    }

    fn insert<'a>(&'a self, table: &'a str, tag: &'a str) -> BoxFut<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {table} (tag) VALUES (?)"
            )))
            .bind(tag)
            .execute(&self.db)
            .await
            .map(|_| ())
        })
    }

    fn tags<'a>(&'a self, table: &'a str) -> BoxFut<'a, Vec<String>> {
        Box::pin(async move {
            sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT tag FROM {table} ORDER BY id"
            )))
            .fetch_all(&mut self.fresh().await)
            .await
            .expect("read table")
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Driving a future poll by poll
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct FlagWaker {
    woken: AtomicBool,
    notify: Notify,
}

impl Wake for FlagWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }
}

/// Polls `fut` at most `polls` times, each time after it asked to be woken (so every poll can
/// make progress), with a waker of our own. `Some(output)` if it completed within them; `None`
/// if it is still pending after exactly `polls` polls (the caller then drops it: the cut).
///
/// Panics if the future does not wake up within 30 s after a poll (a hang).
pub async fn poll_at_most<F: Future>(mut fut: Pin<&mut F>, polls: usize) -> Option<F::Output> {
    let state = Arc::new(FlagWaker::default());
    let waker = Waker::from(state.clone());
    let mut cx = Context::from_waker(&waker);
    for i in 0..polls {
        if i > 0 {
            while !state.woken.swap(false, Ordering::SeqCst) {
                if tokio::time::timeout(Duration::from_secs(30), state.notify.notified())
                    .await
                    .is_err()
                {
                    panic!("the future was not woken within 30 s after poll {i}: it hangs");
                }
            }
        }
        state.woken.store(false, Ordering::SeqCst);
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return Some(out);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Hooks used by the scenarios
// ---------------------------------------------------------------------------------------------

/// Shared record of the completions a hook saw.
pub type Completions = Arc<Mutex<Vec<Completion>>>;

fn completions_of(c: &Completions) -> Vec<Completion> {
    c.lock().unwrap().clone()
}

/// Registers an `after_completion` hook that records its outcome into `into`.
pub fn record_completion(into: &Completions) -> Result<(), TxError> {
    let into = into.clone();
    tx_sqlx::after_completion(move |c: Completion| async move {
        into.lock().unwrap().push(c);
    })
}

/// A `before_commit` hook that writes a row into the transaction it completes.
struct InsertBeforeCommit<B: Backend> {
    b: B,
    table: String,
    tag: &'static str,
}

impl<B: Backend> TransactionSynchronization for InsertBeforeCommit<B> {
    async fn before_commit(&self, _read_only: bool) -> Result<(), BoxError> {
        self.b.insert(&self.table, self.tag).await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Cancellation sweep
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct SweepProbe {
    outer: Completions,
    audit: Completions,
    nested: Completions,
    outer_registered: AtomicBool,
    audit_registered: AtomicBool,
    nested_registered: AtomicBool,
    failing_nested_ok: AtomicBool,
    marks: Mutex<Vec<&'static str>>,
}

impl SweepProbe {
    fn mark(&self, m: &'static str) {
        self.marks.lock().unwrap().push(m);
    }
    fn last_mark(&self) -> &'static str {
        self.marks
            .lock()
            .unwrap()
            .last()
            .copied()
            .unwrap_or("(nothing yet)")
    }
}

/// The committed contents of the work table after a complete run.
const SWEEP_WORK: [&str; 4] = ["o1", "n1", "o2", "bc"];

/// One transaction: hooks, an outer row, a RequiresNew audit row, a Nested step that is
/// released, a Nested step that fails and is rolled back to its savepoint, another outer row,
/// and a before_commit hook writing one more.
async fn sweep_call<B: Backend>(
    b: &B,
    work: &str,
    audit: &str,
    p: &Arc<SweepProbe>,
) -> Result<(), AppError> {
    b.template()
        .name("sweep.outer")
        .execute(|_| async {
            record_completion(&p.outer)?;
            p.outer_registered.store(true, Ordering::SeqCst);
            tx_sqlx::register_synchronization(InsertBeforeCommit {
                b: b.clone(),
                table: work.to_owned(),
                tag: "bc",
            })?;
            b.insert(work, "o1").await?;
            p.mark("o1 inserted");
            b.template()
                .name("sweep.audit")
                .propagation(Propagation::RequiresNew)
                .execute(|_| async {
                    record_completion(&p.audit)?;
                    p.audit_registered.store(true, Ordering::SeqCst);
                    b.insert(audit, "a1").await?;
                    p.mark("a1 inserted");
                    Ok::<_, AppError>(())
                })
                .await?;
            p.mark("audit committed");
            b.template()
                .name("sweep.nested")
                .propagation(Propagation::Nested)
                .execute(|_| async {
                    record_completion(&p.nested)?;
                    p.nested_registered.store(true, Ordering::SeqCst);
                    b.insert(work, "n1").await?;
                    p.mark("n1 inserted");
                    Ok::<_, AppError>(())
                })
                .await?;
            p.mark("nested released");
            let failing = b
                .template()
                .name("sweep.nested_failing")
                .propagation(Propagation::Nested)
                .execute(|_| async {
                    b.insert(work, "n2").await?;
                    Err::<(), _>(AppError::Injected("nested step fails"))
                })
                .await;
            p.failing_nested_ok.store(
                matches!(failing, Err(AppError::Injected(_))),
                Ordering::SeqCst,
            );
            p.mark("failing nested rolled back");
            b.insert(work, "o2").await?;
            p.mark("o2 inserted");
            Ok(())
        })
        .await
}

/// Whether `seen` is what an `after_completion` hook may report for a transaction whose work
/// is (`committed`) or is not in the database.
fn completion_consistent(seen: Completion, committed: bool) -> bool {
    match seen {
        Completion::Committed => committed,
        Completion::RolledBack => !committed,
        Completion::Unknown => true,
    }
}

/// What a sweep found.
#[derive(Debug, Default)]
pub struct SweepReport {
    /// Cut points tried (the polls the complete run needed, minus one).
    pub cuts: usize,
    /// Cuts after which the outer work turned out committed (COMMIT was in flight).
    pub committed_cuts: usize,
    /// Every invariant broken, one line each.
    pub violations: Vec<String>,
}

/// The cancellation sweep: the transaction of `sweep_call` is cut after 1, 2, 3, ... polls
/// until it completes. After every cut: the outer work is all or nothing, the audit committed
/// before the outer work, the failed Nested step never visible, no session of the pool inside
/// a transaction, every connection back in the pool and clean, every registered
/// `after_completion` hook run exactly once with an outcome matching the database. The last,
/// complete run must commit everything.
pub async fn cancellation_sweep<B: Server>(b: &B) -> SweepReport {
    let work = b.create_table("sweep_work").await;
    let audit = b.create_table("sweep_audit").await;
    let full: Vec<String> = SWEEP_WORK.iter().map(|s| s.to_string()).collect();
    let mut report = SweepReport::default();
    let mut k = 1;
    loop {
        assert!(k < 1000, "the transaction never completed");
        b.clear(&work).await;
        b.clear(&audit).await;
        let p = Arc::new(SweepProbe::default());
        let mut fut = Box::pin(sweep_call(b, &work, &audit, &p));
        let outcome = poll_at_most(fut.as_mut(), k).await;
        drop(fut);
        let at = format!(
            "{}: cut after {k} poll(s), last step reached: {}",
            b.name(),
            p.last_mark()
        );

        if let Some(result) = outcome {
            // The complete run.
            if let Err(e) = &result {
                report
                    .violations
                    .push(format!("{at}: the complete run failed: {e:?}"));
            }
            if !p.failing_nested_ok.load(Ordering::SeqCst) {
                report.violations.push(format!(
                    "{at}: the failing Nested step did not return its error"
                ));
            }
            let (w, a) = (b.tags(&work).await, b.tags(&audit).await);
            if w != full || a != ["a1"] {
                report
                    .violations
                    .push(format!("{at}: complete run left work={w:?} audit={a:?}"));
            }
            for (name, c) in [
                ("outer", &p.outer),
                ("audit", &p.audit),
                ("nested", &p.nested),
            ] {
                let seen = completions_of(c);
                if seen != [Completion::Committed] {
                    report.violations.push(format!(
                        "{at}: complete run: {name} after_completion saw {seen:?}"
                    ));
                }
            }
            break;
        }
        report.cuts += 1;
        if std::env::var_os("TX_SWEEP_VERBOSE").is_some() {
            eprintln!("{at}");
        }

        let open = no_open_transactions(b).await;
        if open != 0 {
            report
                .violations
                .push(format!("{at}: {open} session(s) left inside a transaction"));
        }
        let (size, idle) = settle(b).await;
        if size as usize != idle {
            report.violations.push(format!(
                "{at}: pool connections not all back: size {size}, idle {idle}"
            ));
        }
        let w = b.tags(&work).await;
        let a = b.tags(&audit).await;
        let outer_committed = w == full;
        if outer_committed {
            report.committed_cuts += 1;
        }
        if !w.is_empty() && !outer_committed {
            report
                .violations
                .push(format!("{at}: outer work half-written: {w:?}"));
        }
        if !a.is_empty() && a != ["a1"] {
            report
                .violations
                .push(format!("{at}: audit table holds {a:?}"));
        }
        if outer_committed && a.is_empty() {
            report.violations.push(format!(
                "{at}: outer work committed without its RequiresNew audit"
            ));
        }
        // Hooks run in a spawned task after a cut: give them time.
        let hooks = [
            ("outer", &p.outer, &p.outer_registered, outer_committed),
            ("audit", &p.audit, &p.audit_registered, a == ["a1"]),
            ("nested", &p.nested, &p.nested_registered, outer_committed),
        ];
        eventually(Duration::from_secs(2), || async {
            hooks
                .iter()
                .all(|(_, c, reg, _)| !reg.load(Ordering::SeqCst) || !c.lock().unwrap().is_empty())
        })
        .await;
        for (name, c, registered, committed) in hooks {
            let seen = completions_of(c);
            let registered = registered.load(Ordering::SeqCst);
            if !registered {
                if !seen.is_empty() {
                    report
                        .violations
                        .push(format!("{at}: unregistered {name} hook ran: {seen:?}"));
                }
                continue;
            }
            match seen.as_slice() {
                [one] if completion_consistent(*one, committed) => {}
                [one] => report.violations.push(format!(
                    "{at}: {name} after_completion saw {one:?} but its work is {}",
                    if committed {
                        "committed"
                    } else {
                        "not committed"
                    }
                )),
                [] => report.violations.push(format!(
                    "{at}: {name} after_completion never ran (its work is {})",
                    if committed {
                        "committed"
                    } else {
                        "not committed"
                    }
                )),
                many => report.violations.push(format!(
                    "{at}: {name} after_completion ran {} times: {many:?}",
                    many.len()
                )),
            }
        }
        if let Err(e) = b.check_clean().await {
            report.violations.push(format!("{at}: {e}"));
        }
        k += 1;
    }

    // The next transaction on the same pool starts clean and commits.
    b.clear(&work).await;
    b.clear(&audit).await;
    let p = Arc::new(SweepProbe::default());
    if let Err(e) = sweep_call(b, &work, &audit, &p).await {
        report
            .violations
            .push(format!("{}: a run after the sweep failed: {e:?}", b.name()));
    }
    if b.tags(&work).await != full {
        report.violations.push(format!(
            "{}: a run after the sweep did not commit",
            b.name()
        ));
    }
    if let Err(e) = b.check_clean().await {
        report
            .violations
            .push(format!("{}: after the sweep: {e}", b.name()));
    }
    b.drop_table(&work).await;
    b.drop_table(&audit).await;
    report
}

// ---------------------------------------------------------------------------------------------
// Panics
// ---------------------------------------------------------------------------------------------

/// Where a panic is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicAt {
    /// In the transactional body.
    Body,
    /// In a `before_commit` hook.
    BeforeCommit,
    /// In an `after_commit` hook.
    AfterCommit,
}

/// At which scope the panic is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The outer transaction (a new Required).
    Outer,
    /// A RequiresNew transaction inside it.
    RequiresNew,
    /// A Nested savepoint inside it.
    Nested,
    /// A Required participant joined to it.
    Participant,
}

struct PanicHook {
    at: PanicAt,
    completions: Completions,
}

impl TransactionSynchronization for PanicHook {
    async fn before_commit(&self, _read_only: bool) -> Result<(), BoxError> {
        if self.at == PanicAt::BeforeCommit {
            panic!("{INJECTED_PANIC} in before_commit");
        }
        Ok(())
    }

    async fn after_commit(&self) {
        if self.at == PanicAt::AfterCommit {
            panic!("{INJECTED_PANIC} in after_commit");
        }
    }

    async fn after_completion(&self, completion: Completion) {
        self.completions.lock().unwrap().push(completion);
    }
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// `Ok`.
    Ok,
    /// `Err(TxError::BeforeCommit)`.
    BeforeCommitErr,
    /// `Err(TxError::UnexpectedRollback)`.
    UnexpectedRollback,
    /// The panic came out of the call.
    Panicked,
    /// Any other error (its debug form).
    Other(String),
}

fn ended(r: std::thread::Result<Result<(), AppError>>) -> Ended {
    match r {
        Err(_) => Ended::Panicked,
        Ok(Ok(())) => Ended::Ok,
        Ok(Err(AppError::Tx(TxError::BeforeCommit(e))))
            if e.to_string().contains(INJECTED_PANIC) =>
        {
            Ended::BeforeCommitErr
        }
        Ok(Err(AppError::Tx(TxError::UnexpectedRollback))) => Ended::UnexpectedRollback,
        Ok(Err(e)) => Ended::Other(format!("{e:?}")),
    }
}

/// What one panic case produced.
#[derive(Debug)]
pub struct PanicOutcome {
    /// How the outer call ended.
    pub outer: Ended,
    /// How the inner call ended, as the outer body saw it (`None` for `Level::Outer`).
    pub inner: Option<Ended>,
    /// The rows committed.
    pub rows: Vec<String>,
    /// What the outer transaction's after_completion hook saw.
    pub outer_completion: Vec<Completion>,
    /// What the panicking hook's after_completion saw (empty for body panics).
    pub hook_completion: Vec<Completion>,
}

/// Runs one panic case: the outer transaction writes `outer`; at `level` a scope writes
/// `inner` (for `Level::Outer` the outer scope itself is the one that panics) and the panic is
/// injected `at`. When `catch` is true the outer body catches an inner panic and goes on.
pub async fn panic_case<B: Server>(
    b: &B,
    table: &str,
    level: Level,
    at: PanicAt,
    catch: bool,
) -> PanicOutcome {
    quiet_injected_panics();
    b.clear(table).await;
    let outer_completion: Completions = Arc::default();
    let hook_completion: Completions = Arc::default();
    let inner_end: Arc<Mutex<Option<Ended>>> = Arc::default();
    let template = b.template().name("panic.outer");
    let call = template.execute(|_| async {
        record_completion(&outer_completion)?;
        b.insert(table, "outer").await?;
        let inject = move |hc: &Completions| -> Result<(), AppError> {
            match at {
                PanicAt::Body => panic!("{INJECTED_PANIC} in the body"),
                _ => tx_sqlx::register_synchronization(PanicHook {
                    at,
                    completions: hc.clone(),
                })?,
            }
            Ok(())
        };
        if level == Level::Outer {
            inject(&hook_completion)?;
            return Ok(());
        }
        let propagation = match level {
            Level::RequiresNew => Propagation::RequiresNew,
            Level::Nested => Propagation::Nested,
            _ => Propagation::Required,
        };
        let template = b.template().name("panic.inner").propagation(propagation);
        let inner = template.execute(|_| async {
            b.insert(table, "inner").await?;
            inject(&hook_completion)?;
            Ok::<_, AppError>(())
        });
        if catch {
            let r = AssertUnwindSafe(inner).catch_unwind().await;
            *inner_end.lock().unwrap() = Some(ended(r));
        } else {
            let r = inner.await;
            *inner_end.lock().unwrap() = Some(ended(Ok(r)));
        }
        Ok::<_, AppError>(())
    });
    let outer = ended(
        tokio::time::timeout(
            Duration::from_secs(20),
            AssertUnwindSafe(call).catch_unwind(),
        )
        .await
        .expect("a panic case hung"),
    );
    let rows = b.tags(table).await;
    eventually(Duration::from_secs(1), || async {
        !outer_completion.lock().unwrap().is_empty()
    })
    .await;
    let inner = inner_end.lock().unwrap().clone();
    PanicOutcome {
        outer,
        inner,
        rows,
        outer_completion: completions_of(&outer_completion),
        hook_completion: completions_of(&hook_completion),
    }
}

/// What Spring's semantics (and the SPEC) require of [`panic_case`]: `(outer, inner, rows)`.
pub fn panic_expectation(
    level: Level,
    at: PanicAt,
    catch: bool,
) -> (Ended, Option<Ended>, Vec<&'static str>) {
    use Ended::*;
    match (level, at) {
        (Level::Outer, PanicAt::Body) => (Panicked, None, vec![]),
        (Level::Outer, PanicAt::BeforeCommit) => (BeforeCommitErr, None, vec![]),
        (Level::Outer, PanicAt::AfterCommit) => (Ok, None, vec!["outer"]),
        // An inner panic that escapes the outer body rolls everything back.
        (_, PanicAt::Body) if !catch => (Panicked, None, vec![]),
        (Level::RequiresNew, PanicAt::Body) => (Ok, Some(Panicked), vec!["outer"]),
        (Level::RequiresNew, PanicAt::BeforeCommit) => (Ok, Some(BeforeCommitErr), vec!["outer"]),
        (Level::RequiresNew, PanicAt::AfterCommit) => (Ok, Some(Ok), vec!["outer", "inner"]),
        (Level::Nested, PanicAt::Body) => (Ok, Some(Panicked), vec!["outer"]),
        // Hooks of a released savepoint belong to the outer transaction.
        (Level::Nested, PanicAt::BeforeCommit) => (BeforeCommitErr, Some(Ok), vec![]),
        (Level::Nested, PanicAt::AfterCommit) => (Ok, Some(Ok), vec!["outer", "inner"]),
        // A participant's panic marks the whole transaction rollback-only.
        (Level::Participant, PanicAt::Body) => (UnexpectedRollback, Some(Panicked), vec![]),
        (Level::Participant, PanicAt::BeforeCommit) => (BeforeCommitErr, Some(Ok), vec![]),
        (Level::Participant, PanicAt::AfterCommit) => (Ok, Some(Ok), vec!["outer", "inner"]),
    }
}

/// Runs the whole panic matrix; returns every mismatch.
pub async fn panic_matrix<B: Server>(b: &B) -> Vec<String> {
    let table = b.create_table("panics").await;
    let mut violations = Vec::new();
    let mut cases = Vec::new();
    for level in [
        Level::Outer,
        Level::RequiresNew,
        Level::Nested,
        Level::Participant,
    ] {
        for at in [PanicAt::Body, PanicAt::BeforeCommit, PanicAt::AfterCommit] {
            cases.push((level, at, true));
            if at == PanicAt::Body && level != Level::Outer {
                cases.push((level, at, false));
            }
        }
    }
    for (level, at, catch) in cases {
        let case = format!(
            "{}: panic in {at:?} at {level:?} (caught by outer: {catch})",
            b.name()
        );
        let got = panic_case(b, &table, level, at, catch).await;
        let (outer, inner, rows) = panic_expectation(level, at, catch);
        if got.outer != outer {
            violations.push(format!(
                "{case}: outer call ended {:?}, expected {outer:?}",
                got.outer
            ));
        }
        if inner.is_some() && got.inner != inner {
            violations.push(format!(
                "{case}: inner call ended {:?}, expected {inner:?}",
                got.inner
            ));
        }
        if got.rows != rows {
            violations.push(format!("{case}: rows {:?}, expected {rows:?}", got.rows));
        }
        let outer_committed = rows.contains(&"outer");
        let expected_outer_completion = if outer_committed {
            Completion::Committed
        } else {
            Completion::RolledBack
        };
        if got.outer_completion != [expected_outer_completion] {
            violations.push(format!(
                "{case}: outer after_completion saw {:?}, expected [{expected_outer_completion:?}]",
                got.outer_completion
            ));
        }
        if at != PanicAt::Body {
            // The panicking hook still completes, with its transaction's real outcome.
            let hook_committed = match level {
                Level::RequiresNew => rows.contains(&"inner"),
                _ => outer_committed,
            };
            let expected = if hook_committed {
                Completion::Committed
            } else {
                Completion::RolledBack
            };
            if got.hook_completion != [expected] {
                violations.push(format!(
                    "{case}: the panicking hook's after_completion saw {:?}, expected [{expected:?}]",
                    got.hook_completion
                ));
            }
        }
        let open = no_open_transactions(b).await;
        let (size, idle) = settle(b).await;
        if open != 0 || size as usize != idle {
            violations.push(format!(
                "{case}: left {open} open transaction(s), pool size {size} idle {idle}"
            ));
        }
    }
    if let Err(e) = b.check_clean().await {
        violations.push(format!("{}: after the panic matrix: {e}", b.name()));
    }
    b.drop_table(&table).await;
    violations
}

// ---------------------------------------------------------------------------------------------
// Server faults
// ---------------------------------------------------------------------------------------------

/// How the killed transaction learns of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillWhen {
    /// Killed between statements; the next statement fails.
    BetweenStatements,
    /// Killed while a statement runs on the server.
    DuringStatement,
    /// Killed after the last statement; the COMMIT fails.
    BeforeCommit,
}

/// The server kills the transaction's session: the call must fail promptly (within `prompt`
/// of the kill), nothing of it be committed, after_completion agree, and the pool recover:
/// every connection back, nothing open, a later transaction commits. Returns every violation.
pub async fn kill_mid_transaction<B: Server>(b: &B, when: KillWhen) -> Vec<String> {
    let prompt = Duration::from_secs(3);
    let table = b.create_table("kill").await;
    let case = format!("{}: session killed {when:?}", b.name());
    let mut violations = Vec::new();
    let completions: Completions = Arc::default();
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let victim: Arc<Mutex<Option<i64>>> = Arc::default();

    let template = b.template().name("kill.victim");
    let call = template.execute(|_| async {
        record_completion(&completions)?;
        b.insert(&table, "doomed").await?;
        let id = b.session_id().await?;
        *victim.lock().unwrap() = Some(id);
        match when {
            KillWhen::DuringStatement => {
                let killer = b.clone();
                let killed_at = killed_at.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    *killed_at.lock().unwrap() = Some(Instant::now());
                    killer.kill(id).await;
                });
                b.sleep(30.0).await?;
                b.insert(&table, "after-sleep").await?;
            }
            KillWhen::BetweenStatements | KillWhen::BeforeCommit => {
                b.kill(id).await;
                *killed_at.lock().unwrap() = Some(Instant::now());
                // Let the server finish tearing the session down.
                let gone = eventually(Duration::from_secs(5), || async {
                    !b.session_alive(id).await
                })
                .await;
                assert!(gone, "session {id} survived the kill");
                if when == KillWhen::BetweenStatements {
                    b.insert(&table, "after-kill").await?;
                }
            }
        }
        Ok::<_, AppError>(())
    });
    let r = tokio::time::timeout(Duration::from_secs(40), call)
        .await
        .unwrap_or_else(|_| panic!("{case}: the call hangs"));
    let returned = Instant::now();
    let elapsed = killed_at
        .lock()
        .unwrap()
        .map(|k| returned.saturating_duration_since(k));
    match elapsed {
        Some(e) if e <= prompt => {}
        other => violations.push(format!(
            "{case}: returned {other:?} after the kill (limit {prompt:?})"
        )),
    }
    let unknown = matches!(&r, Err(AppError::Tx(TxError::CommitOutcomeUnknown(_))));
    match &r {
        Ok(()) => violations.push(format!(
            "{case}: the call returned Ok although its session was killed"
        )),
        Err(e) => eprintln!("{case}: the call failed with: {}", error_chain(e)),
    }
    let rows = b.tags(&table).await;
    if !rows.is_empty() {
        violations.push(format!(
            "{case}: rows of the killed transaction committed: {rows:?}"
        ));
    }
    eventually(Duration::from_secs(2), || async {
        !completions.lock().unwrap().is_empty()
    })
    .await;
    let seen = completions_of(&completions);
    let expected = if unknown {
        Completion::Unknown
    } else {
        Completion::RolledBack
    };
    if seen != [expected] {
        violations.push(format!(
            "{case}: after_completion saw {seen:?}, expected [{expected:?}]"
        ));
    }
    let open = no_open_transactions(b).await;
    let (size, idle) = settle(b).await;
    if open != 0 || size as usize != idle {
        violations.push(format!(
            "{case}: left {open} open transaction(s), pool size {size} idle {idle}"
        ));
    }
    // The pool recovers: later transactions succeed.
    for i in 0..3 {
        let r = b
            .template()
            .execute(|_| async {
                b.insert(&table, "later").await?;
                Ok::<_, AppError>(())
            })
            .await;
        if let Err(e) = r {
            violations.push(format!(
                "{case}: transaction {i} after the kill failed: {e:?}"
            ));
        }
    }
    let rows = b.tags(&table).await;
    if rows != ["later", "later", "later"] {
        violations.push(format!("{case}: after recovery the table holds {rows:?}"));
    }
    let victim = *victim.lock().unwrap();
    if let Some(id) = victim
        && b.session_alive(id).await
    {
        violations.push(format!("{case}: the killed session {id} is still there"));
    }
    if let Err(e) = b.check_clean().await {
        violations.push(format!("{case}: {e}"));
    }
    b.drop_table(&table).await;
    violations
}

// ---------------------------------------------------------------------------------------------
// Commit outcome unknown
// ---------------------------------------------------------------------------------------------

/// The connection dies while COMMIT is in flight (the proxy cuts it in `mode`): the call must
/// return `TxError::CommitOutcomeUnknown` and after_completion see `Completion::Unknown`,
/// whatever the server did; the pool recovers. `expect_committed` is what the server really
/// did (DropReply: committed; DropCommit: rolled back). Returns every violation.
pub async fn commit_outcome_unknown<B: Server>(
    b: &B,
    proxy: &crate::proxy::CommitCutProxy,
    mode: crate::proxy::CutMode,
) -> Vec<String> {
    let expect_committed = mode == crate::proxy::CutMode::DropReply;
    let case = format!("{}: connection cut at COMMIT ({mode:?})", b.name());
    let mut violations = Vec::new();
    let table = b.create_table("unknown").await;
    let completions: Completions = Arc::default();
    let cuts_before = proxy.cuts();
    proxy.arm(mode);
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        b.template().name("unknown.victim").execute(|_| async {
            record_completion(&completions)?;
            b.insert(&table, "in-doubt").await?;
            Ok::<_, AppError>(())
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("{case}: the call hangs"));
    proxy.disarm();
    if proxy.cuts() != cuts_before + 1 {
        violations.push(format!(
            "{case}: the proxy did not see the COMMIT (test harness problem)"
        ));
    }
    match &r {
        Err(AppError::Tx(TxError::CommitOutcomeUnknown(source))) => {
            eprintln!("{case}: CommitOutcomeUnknown, source: {source}");
        }
        Ok(()) => violations.push(format!(
            "{case}: the call returned Ok, but the client never heard the COMMIT's answer"
        )),
        Err(e) => violations.push(format!(
            "{case}: expected TxError::CommitOutcomeUnknown, got a plain failure: {e:?} ({})",
            error_chain(e)
        )),
    }
    eventually(Duration::from_secs(2), || async {
        !completions.lock().unwrap().is_empty()
    })
    .await;
    let seen = completions_of(&completions);
    if seen != [Completion::Unknown] {
        violations.push(format!(
            "{case}: after_completion saw {seen:?}, expected [Unknown]"
        ));
    }
    // What the server really did.
    let expected: Vec<String> = if expect_committed {
        vec!["in-doubt".into()]
    } else {
        vec![]
    };
    let settled = eventually(Duration::from_secs(5), || async {
        b.tags(&table).await == expected && b.open_transactions().await == 0
    })
    .await;
    if !settled {
        violations.push(format!(
            "{case}: the server shows {:?} (expected {expected:?}), {} open transaction(s)",
            b.tags(&table).await,
            b.open_transactions().await
        ));
    }
    let (size, idle) = settle(b).await;
    if size as usize != idle {
        violations.push(format!("{case}: pool size {size}, idle {idle}"));
    }
    // The pool (through the disarmed proxy) recovers.
    b.clear(&table).await;
    let r = b
        .template()
        .execute(|_| async {
            b.insert(&table, "later").await?;
            Ok::<_, AppError>(())
        })
        .await;
    if let Err(e) = r {
        violations.push(format!("{case}: a later transaction failed: {e:?}"));
    }
    if b.tags(&table).await != ["later"] {
        violations.push(format!("{case}: the later transaction did not commit"));
    }
    if let Err(e) = b.check_clean().await {
        violations.push(format!("{case}: {e}"));
    }
    b.drop_table(&table).await;
    violations
}

// ---------------------------------------------------------------------------------------------
// Pool exhaustion
// ---------------------------------------------------------------------------------------------

/// With a pool of one connection held by the outer transaction, a RequiresNew scope cannot get
/// a connection: it must fail at once (within the pool's acquire timeout at the latest) with an
/// error naming the cause (pool starvation), never hang; the pool recovers. `catch`: the outer
/// body swallows the inner error and commits its own work.
pub async fn requires_new_pool_exhausted<B: Server>(
    b: &B,
    acquire_timeout: Duration,
    catch: bool,
) -> Vec<String> {
    let case = format!(
        "{}: RequiresNew with the only connection taken (catch: {catch})",
        b.name()
    );
    let mut violations = Vec::new();
    assert_eq!(b.pool_counts().0.max(1), 1, "needs a pool of one");
    let table = b.create_table("exhaust").await;
    let inner_result: Arc<Mutex<Option<(Duration, String, bool)>>> = Arc::default();
    let started = Instant::now();
    let r = tokio::time::timeout(
        acquire_timeout * 4 + Duration::from_secs(10),
        b.template().name("exhaust.outer").execute(|_| async {
            b.insert(&table, "outer").await?;
            let t0 = Instant::now();
            let inner = b
                .template()
                .name("exhaust.inner")
                .propagation(Propagation::RequiresNew)
                .execute(|_| async {
                    b.insert(&table, "inner").await?;
                    Ok::<_, AppError>(())
                })
                .await;
            let took = t0.elapsed();
            let starved = matches!(&inner, Err(AppError::Tx(TxError::PoolStarvation { .. })));
            let text = match &inner {
                Ok(()) => "Ok".to_owned(),
                Err(e) => error_chain(e),
            };
            *inner_result.lock().unwrap() = Some((took, text, starved));
            match inner {
                Err(e) if !catch => Err(e),
                _ => Ok(()),
            }
        }),
    )
    .await;
    let Ok(r) = r else {
        violations.push(format!(
            "{case}: no answer within {:?}: deadlock",
            started.elapsed()
        ));
        return violations;
    };
    match inner_result.lock().unwrap().clone() {
        None => violations.push(format!("{case}: the inner call never returned")),
        Some((took, text, starved)) => {
            eprintln!("{case}: inner call failed after {took:?} with: {text}");
            if took > acquire_timeout + Duration::from_secs(2) {
                violations.push(format!(
                    "{case}: the inner call took {took:?}, acquire timeout {acquire_timeout:?}"
                ));
            }
            if !starved || !text.contains("connection pool starved") {
                violations.push(format!(
                    "{case}: the error does not name the cause (pool starvation): {text}"
                ));
            }
        }
    }
    let expected_rows: Vec<String> = if catch { vec!["outer".into()] } else { vec![] };
    match (&r, catch) {
        (Ok(()), true) | (Err(_), false) => {}
        _ => violations.push(format!("{case}: outer call ended {r:?}")),
    }
    let rows = b.tags(&table).await;
    if rows != expected_rows {
        violations.push(format!("{case}: rows {rows:?}, expected {expected_rows:?}"));
    }
    let open = no_open_transactions(b).await;
    let (size, idle) = settle(b).await;
    if open != 0 || size as usize != idle {
        violations.push(format!(
            "{case}: left {open} open transaction(s), pool size {size} idle {idle}"
        ));
    }
    // The pool works again: a RequiresNew when the outer holds no connection yet works too.
    b.clear(&table).await;
    let r = b
        .template()
        .execute(|_| async {
            b.template()
                .propagation(Propagation::RequiresNew)
                .execute(|_| async {
                    b.insert(&table, "inner").await?;
                    Ok::<_, AppError>(())
                })
                .await?;
            b.insert(&table, "outer").await?;
            Ok::<_, AppError>(())
        })
        .await;
    if let Err(e) = r {
        violations.push(format!("{case}: a later transaction failed: {e:?}"));
    }
    if b.tags(&table).await != ["inner", "outer"] {
        violations.push(format!("{case}: the later transaction did not commit"));
    }
    b.drop_table(&table).await;
    violations
}

// ---------------------------------------------------------------------------------------------
// The bank
// ---------------------------------------------------------------------------------------------

/// A fault injected into a transfer's body.
#[derive(Debug, Clone)]
pub enum Fault {
    /// None.
    None,
    /// Fails after the debit.
    ErrorAfterDebit,
    /// A participant marks the transaction rollback-only.
    RollbackOnly,
    /// Panics after the debit (the transfer runs in a spawned task).
    Panic,
    /// Sleeps between debit and credit, holding the debit's row lock (provokes deadlocks).
    Slow,
    /// Waits (first attempt only) at the barrier with the opposite transfer after both
    /// debited: a certain deadlock.
    Deadlock(Arc<Barrier>),
}

/// One transfer.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// Its id in the ledger (> 0).
    pub id: i64,
    /// Debited account.
    pub from: i64,
    /// Credited account.
    pub to: i64,
    /// Amount moved.
    pub amount: i64,
    /// The fault injected.
    pub fault: Fault,
}

/// A transfer service written the way a Spring user would: a struct holding its transaction
/// manager, with `#[transactional]` methods.
#[derive(Clone)]
pub struct Bank<B: Server> {
    db: B::Pool,
    b: B,
    accounts: String,
    ledger: String,
}

impl<B: Server> Bank<B> {
    /// The bank on `b`'s pool and tables.
    pub fn new(b: &B, accounts: &str, ledger: &str) -> Self {
        Bank {
            db: b.manager().clone(),
            b: b.clone(),
            accounts: accounts.to_owned(),
            ledger: ledger.to_owned(),
        }
    }

    /// A transfer at the default isolation, retried on deadlocks.
    #[tx_sqlx::transactional(manager = self.db, retry = 5)]
    pub async fn transfer(&self, t: Transfer, attempts: &AtomicU32) -> Result<(), AppError> {
        self.move_money(&t, attempts).await
    }

    /// A transfer at SERIALIZABLE, retried on serialization failures and deadlocks.
    #[tx_sqlx::transactional(manager = self.db, isolation = Serializable, retry = 5)]
    pub async fn transfer_serializable(
        &self,
        t: Transfer,
        attempts: &AtomicU32,
    ) -> Result<(), AppError> {
        self.move_money(&t, attempts).await
    }

    /// A participant (joins the transfer) whose verdict marks the whole transaction
    /// rollback-only.
    #[tx_sqlx::transactional(manager = self.db)]
    async fn risk_check(&self, veto: bool) -> Result<(), AppError> {
        if veto {
            tx_sqlx::set_rollback_only()?;
        }
        Ok(())
    }

    async fn move_money(&self, t: &Transfer, attempts: &AtomicU32) -> Result<(), AppError> {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        // Locks are deliberately not ordered: opposite transfers deadlock.
        let balance = self.b.add(&self.accounts, t.from, -t.amount).await?;
        self.b.ledger(&self.ledger, t.id, t.from, -t.amount).await?;
        match &t.fault {
            Fault::ErrorAfterDebit => return Err(AppError::Injected("error after the debit")),
            Fault::Panic => panic!("{INJECTED_PANIC} transfer {} after the debit", t.id),
            Fault::Slow => tokio::time::sleep(Duration::from_millis(2)).await,
            Fault::Deadlock(barrier) if attempt == 1 => {
                let _ = tokio::time::timeout(Duration::from_secs(5), barrier.wait()).await;
            }
            _ => {}
        }
        if balance < 0 {
            return Err(AppError::Insufficient);
        }
        self.b.add(&self.accounts, t.to, t.amount).await?;
        self.b.ledger(&self.ledger, t.id, t.to, t.amount).await?;
        self.risk_check(matches!(t.fault, Fault::RollbackOnly))
            .await?;
        Ok(())
    }
}

/// How a transfer ended, as its caller knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferEnd {
    /// `Ok`: must be in the ledger.
    Committed,
    /// A definite failure (any error but commit-outcome-unknown, or a panic): must not be.
    Failed(String),
    /// Cancelled, or commit outcome unknown: either way, but whole.
    Unknown,
}

/// Every transfer run: its plan, how it ended, how many attempts it took.
type Plans = Arc<Mutex<BTreeMap<i64, (Transfer, TransferEnd, u32)>>>;

/// Counts of a bank run.
#[derive(Debug, Default, Clone)]
pub struct BankReport {
    /// Transfers attempted.
    pub transfers: usize,
    /// Ended `Ok`.
    pub committed: usize,
    /// Failed because of an injected fault (error, rollback-only, panic).
    pub injected_failures: usize,
    /// Refused by the business rule.
    pub insufficient: usize,
    /// Cancelled (or outcome unknown).
    pub unknown: usize,
    /// Of those, the ones that turned out committed (cancelled while COMMIT was in flight).
    pub unknown_committed: usize,
    /// Other failures (e.g. retries exhausted).
    pub other_failures: usize,
    /// A few of those failures, for the log.
    pub other_failure_samples: Vec<String>,
    /// Transfers marked rollback-only by a participant that ended in UnexpectedRollback.
    pub unexpected_rollbacks: usize,
    /// Fault-free transfers (no injected fault, no cancellation, not refused).
    pub clean: usize,
    /// Fault-free transfers that succeeded.
    pub clean_committed: usize,
    /// Transfers that needed more than one attempt.
    pub retried: usize,
    /// Forced deadlock rounds (two opposite transfers each).
    pub deadlock_rounds: usize,
    /// Forced deadlock rounds where both transfers committed.
    pub deadlock_rounds_ok: usize,
    /// Forced deadlock rounds in which a retry happened (the deadlock was real).
    pub deadlock_rounds_retried: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Invariants broken.
    pub violations: Vec<String>,
}

/// SplitMix64: a deterministic plan from the transfer id.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The bank's parameters.
#[derive(Debug, Clone, Copy)]
pub struct BankConfig {
    /// Accounts (ids 1..=n).
    pub accounts: i64,
    /// Each account's opening balance.
    pub initial: i64,
    /// Random transfers in the main phase.
    pub transfers: usize,
    /// Concurrent tasks.
    pub tasks: usize,
    /// Inject faults (errors, rollback-only, panics, cancellations, slow transfers).
    pub faults: bool,
    /// Forced-deadlock rounds per pair of tasks (after the main phase).
    pub deadlock_rounds: usize,
    /// Use the SERIALIZABLE method.
    pub serializable: bool,
}

/// Plans transfer `id`: accounts, amount, fault, and an optional cancellation delay.
fn plan(cfg: &BankConfig, id: i64) -> (Transfer, Option<Duration>) {
    let r = mix(id as u64 ^ if cfg.serializable { 0xABCD } else { 0 });
    // One transfer in eight moves money among ten hot accounts: contention, and deadlocks
    // between opposite transfers.
    let n = if (r >> 56).is_multiple_of(8) {
        10
    } else {
        cfg.accounts as u64
    };
    let from = (r % n) as i64 + 1;
    let to = ((from as u64 - 1 + 1 + (r >> 8) % (n - 1)) % n) as i64 + 1;
    let amount = ((r >> 20) % 100) as i64 + 1;
    let roll = (r >> 32) % 100;
    let (fault, cancel) = if !cfg.faults {
        (Fault::None, None)
    } else {
        match roll {
            0..=5 => (Fault::ErrorAfterDebit, None),
            6..=11 => (Fault::RollbackOnly, None),
            12..=15 => (Fault::Panic, None),
            16..=21 => (
                Fault::None,
                Some(Duration::from_micros(100 + (r >> 40) % 3000)),
            ),
            22..=31 => (Fault::Slow, None),
            _ => (Fault::None, None),
        }
    };
    (
        Transfer {
            id,
            from,
            to,
            amount,
            fault,
        },
        cancel,
    )
}

fn classify(r: Result<(), AppError>) -> TransferEnd {
    match r {
        Ok(()) => TransferEnd::Committed,
        Err(AppError::Tx(TxError::CommitOutcomeUnknown(_))) => TransferEnd::Unknown,
        Err(e) => TransferEnd::Failed(format!("{e}")),
    }
}

async fn run_transfer<B: Server>(
    bank: &Bank<B>,
    cfg: &BankConfig,
    t: Transfer,
    cancel: Option<Duration>,
) -> (TransferEnd, u32) {
    let attempts = Arc::new(AtomicU32::new(0));
    let end = if matches!(t.fault, Fault::Panic) {
        // A panic inside a spawned task: the task dies, its transaction rolls back.
        let (bank, a, ser) = (bank.clone(), attempts.clone(), cfg.serializable);
        let h = tokio::spawn(async move {
            if ser {
                bank.transfer_serializable(t, &a).await
            } else {
                bank.transfer(t, &a).await
            }
        });
        match h.await {
            Ok(r) => classify(r),
            Err(j) if j.is_panic() => TransferEnd::Failed("panicked".into()),
            Err(j) => panic!("transfer task failed: {j}"),
        }
    } else {
        let call = async {
            if cfg.serializable {
                bank.transfer_serializable(t, &attempts).await
            } else {
                bank.transfer(t, &attempts).await
            }
        };
        match cancel {
            Some(d) => match tokio::time::timeout(d, call).await {
                Ok(r) => classify(r),
                Err(_) => TransferEnd::Unknown,
            },
            None => classify(call.await),
        }
    };
    (end, attempts.load(Ordering::SeqCst))
}

/// The bank: `cfg.transfers` random transfers from `cfg.tasks` tasks with faults and retry,
/// then forced deadlocks between opposite transfers; then the books are audited from a fresh
/// connection. Returns the counts and every broken invariant.
pub async fn bank<B: Server>(b: &B, cfg: BankConfig) -> BankReport {
    quiet_injected_panics();
    let started = Instant::now();
    let (accounts, ledger) = b.create_bank(cfg.accounts, cfg.initial).await;
    let bank = Bank::new(b, &accounts, &ledger);
    let plans: Plans = Arc::default();
    let next = Arc::new(AtomicUsize::new(1));

    // Main phase.
    let mut workers = Vec::new();
    for _ in 0..cfg.tasks {
        let (bank, plans, next) = (bank.clone(), plans.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let id = next.fetch_add(1, Ordering::SeqCst);
                if id > cfg.transfers {
                    return;
                }
                let (t, cancel) = plan(&cfg, id as i64);
                let (end, attempts) = run_transfer(&bank, &cfg, t.clone(), cancel).await;
                plans.lock().unwrap().insert(t.id, (t, end, attempts));
            }
        }));
    }
    for w in workers {
        w.await.expect("a bank worker died");
    }

    // Forced deadlocks: pairs of tasks move money in opposite directions between the same two
    // accounts, meeting at a barrier after both debited.
    let mut report = BankReport::default();
    let pairs = cfg.tasks / 2;
    let mut next_id = cfg.transfers as i64 + 1;
    for round in 0..cfg.deadlock_rounds {
        let mut handles = Vec::new();
        for pair in 0..pairs {
            let x = ((pair * 2 + round * 7) as i64 % cfg.accounts) + 1;
            let y = (x % cfg.accounts) + 1;
            let barrier = Arc::new(Barrier::new(2));
            for (id, from, to) in [(next_id, x, y), (next_id + 1, y, x)] {
                let t = Transfer {
                    id,
                    from,
                    to,
                    amount: 1,
                    fault: Fault::Deadlock(barrier.clone()),
                };
                let (bank, plans) = (bank.clone(), plans.clone());
                handles.push(tokio::spawn(async move {
                    let (end, attempts) = run_transfer(&bank, &cfg, t.clone(), None).await;
                    plans
                        .lock()
                        .unwrap()
                        .insert(t.id, (t, end.clone(), attempts));
                    (end, attempts)
                }));
            }
            next_id += 2;
        }
        let mut results = Vec::new();
        for h in handles {
            results.push(h.await.expect("a deadlock task died"));
        }
        for pair in results.chunks(2) {
            report.deadlock_rounds += 1;
            if pair.iter().all(|(e, _)| *e == TransferEnd::Committed) {
                report.deadlock_rounds_ok += 1;
            }
            if pair.iter().any(|(_, a)| *a > 1) {
                report.deadlock_rounds_retried += 1;
            }
        }
    }

    // Nothing left open, every connection back.
    let open = no_open_transactions(b).await;
    let (size, idle) = settle(b).await;
    if open != 0 {
        report
            .violations
            .push(format!("{open} session(s) left inside a transaction"));
    }
    if size as usize != idle {
        report
            .violations
            .push(format!("pool size {size}, idle {idle}"));
    }

    // The books.
    let balances = b.balances(&accounts).await;
    let rows = b.ledger_rows(&ledger).await;
    let total: i64 = balances.iter().map(|(_, bal)| bal).sum();
    if total != cfg.accounts * cfg.initial {
        report.violations.push(format!(
            "total balance {total}, expected {} (money created or destroyed)",
            cfg.accounts * cfg.initial
        ));
    }
    let mut per_account: BTreeMap<i64, i64> = BTreeMap::new();
    let mut per_transfer: BTreeMap<i64, Vec<(i64, i64)>> = BTreeMap::new();
    for (transfer, account, delta) in &rows {
        *per_account.entry(*account).or_default() += delta;
        per_transfer
            .entry(*transfer)
            .or_default()
            .push((*account, *delta));
    }
    for (id, bal) in &balances {
        let l = per_account.get(id).copied().unwrap_or(0);
        if l != *bal {
            report.violations.push(format!(
                "account {id}: balance {bal} but its ledger sums to {l}"
            ));
        }
        if *bal < 0 {
            report
                .violations
                .push(format!("account {id}: negative balance {bal}"));
        }
    }
    let deposits = per_transfer.remove(&0).unwrap_or_default();
    if deposits.len() as i64 != cfg.accounts {
        report
            .violations
            .push(format!("{} deposit lines", deposits.len()));
    }
    let plans = std::mem::take(&mut *plans.lock().unwrap());
    for (id, lines) in &per_transfer {
        match plans.get(id) {
            None => report
                .violations
                .push(format!("ledger has lines of unknown transfer {id}")),
            Some((t, _, _)) => {
                let expected = vec![(t.from, -t.amount), (t.to, t.amount)];
                if *lines != expected {
                    report.violations.push(format!(
                        "transfer {id}: ledger lines {lines:?}, expected {expected:?} (half-written or doubled)"
                    ));
                }
            }
        }
    }
    for (id, (t, end, attempts)) in plans.iter() {
        report.transfers += 1;
        if *attempts > 1 {
            report.retried += 1;
        }
        let in_ledger = per_transfer.contains_key(id);
        match end {
            TransferEnd::Committed => {
                report.committed += 1;
                if !in_ledger {
                    report.violations.push(format!(
                        "transfer {id} returned Ok but is not in the ledger"
                    ));
                }
            }
            TransferEnd::Failed(why) => {
                if in_ledger {
                    report.violations.push(format!(
                        "transfer {id} failed ({why}) but is in the ledger (committed work reported as failed)"
                    ));
                }
                match &t.fault {
                    Fault::ErrorAfterDebit | Fault::RollbackOnly | Fault::Panic => {
                        report.injected_failures += 1
                    }
                    _ if why == "insufficient funds" => report.insufficient += 1,
                    _ => {
                        report.other_failures += 1;
                        if report.other_failure_samples.len() < 5 {
                            report
                                .other_failure_samples
                                .push(format!("transfer {id} ({} attempts): {why}", attempts));
                        }
                    }
                }
            }
            TransferEnd::Unknown => {
                report.unknown += 1;
                if in_ledger {
                    report.unknown_committed += 1;
                }
            }
        }
        // Fault-free: no injected fault, not cancelled (Unknown), not refused by the rule.
        let faulty = matches!(
            t.fault,
            Fault::ErrorAfterDebit | Fault::RollbackOnly | Fault::Panic
        );
        let refused = matches!(end, TransferEnd::Failed(w) if w == "insufficient funds");
        if !faulty && !refused && *end != TransferEnd::Unknown {
            report.clean += 1;
            if *end == TransferEnd::Committed {
                report.clean_committed += 1;
            }
        }
        // The injected faults must have their effect.
        match (&t.fault, end) {
            (
                Fault::ErrorAfterDebit | Fault::RollbackOnly | Fault::Panic,
                TransferEnd::Committed,
            ) => report.violations.push(format!(
                "transfer {id} with fault {:?} returned Ok",
                t.fault
            )),
            (Fault::RollbackOnly, TransferEnd::Failed(why)) if why.contains("rollback-only") => {
                report.unexpected_rollbacks += 1
            }
            _ => {}
        }
    }
    if let Err(e) = b.check_clean().await {
        report.violations.push(e);
    }
    b.drop_table(&accounts).await;
    b.drop_table(&ledger).await;
    report.elapsed = started.elapsed();
    report
}
