//! Shared support of the saga tests: server URLs and the "server missing" policy, a tiny
//! dynamic query helper per backend, and the order saga across three services (stock,
//! orders, payment), each with its own pool and its own database (SQLite file) or schema
//! (PostgreSQL) or tables (MySQL).
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tx_saga::{Saga, SagaBackend, SagaEngine, SagaId, SagaStatus, StepContext, StepError};
use tx_sqlx::{MySqlTxPool, PgTxPool, SqliteTxPool, TransactionTemplate, TxError, TxPool};

pub fn pg_url() -> String {
    std::env::var("TX_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub fn mysql_url() -> String {
    std::env::var("TX_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// Under `TX_TEST_REQUIRE_SERVERS=1` a missing server fails the test; else it is skipped,
/// loudly.
pub fn server_missing(what: &str, err: &dyn std::fmt::Display) {
    if std::env::var("TX_TEST_REQUIRE_SERVERS").is_ok_and(|v| v == "1" || v == "true") {
        panic!("{what} is required (TX_TEST_REQUIRE_SERVERS=1) but unreachable: {err}");
    }
    eprintln!(
        "\n!!!!! SKIPPED: {what} unreachable ({err}); set TX_TEST_REQUIRE_SERVERS=1 to make this a failure !!!!!\n"
    );
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A value bound to a test statement.
pub enum Arg {
    I(i64),
    S(String),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::I(v)
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Arg {
        Arg::S(v.to_owned())
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Arg {
        Arg::S(v)
    }
}
impl From<SagaId> for Arg {
    fn from(v: SagaId) -> Arg {
        Arg::S(v.to_string())
    }
}

/// `?` as `$1, $2, ..` for PostgreSQL.
fn render(sql: &str, numbered: bool) -> String {
    if !numbered {
        return sql.to_owned();
    }
    let mut n = 0;
    let mut out = String::new();
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// The test's view of a backend: run a statement through `&db` (joining the task's
/// transaction on `db`, if any), fetch one integer or text column.
pub trait TestDb: SagaBackend {
    const KIND: Kind;
    fn exec<'a>(
        db: &'a TxPool<Self>,
        sql: &str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<u64, TxError>>;
    fn ints<'a>(
        db: &'a TxPool<Self>,
        sql: &str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<i64>, TxError>>;
    fn texts<'a>(
        db: &'a TxPool<Self>,
        sql: &str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<String>, TxError>>;
    fn template(db: &TxPool<Self>) -> TransactionTemplate;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Sqlite,
    Postgres,
    MySql,
}

macro_rules! test_db {
    ($db:ty, $kind:expr) => {
        impl TestDb for $db {
            const KIND: Kind = $kind;
            fn exec<'a>(
                db: &'a TxPool<Self>,
                sql: &str,
                args: Vec<Arg>,
            ) -> BoxFuture<'a, Result<u64, TxError>> {
                let sql = render(sql, $kind == Kind::Postgres);
                Box::pin(async move {
                    let mut q = sqlx::query::<$db>(sqlx::AssertSqlSafe(sql));
                    for a in args {
                        q = match a {
                            Arg::I(v) => q.bind(v),
                            Arg::S(v) => q.bind(v),
                        };
                    }
                    Ok(q.execute(db).await?.rows_affected())
                })
            }
            fn ints<'a>(
                db: &'a TxPool<Self>,
                sql: &str,
                args: Vec<Arg>,
            ) -> BoxFuture<'a, Result<Vec<i64>, TxError>> {
                let sql = render(sql, $kind == Kind::Postgres);
                Box::pin(async move {
                    let mut q = sqlx::query_scalar::<$db, i64>(sqlx::AssertSqlSafe(sql));
                    for a in args {
                        q = match a {
                            Arg::I(v) => q.bind(v),
                            Arg::S(v) => q.bind(v),
                        };
                    }
                    Ok(q.fetch_all(db).await?)
                })
            }
            fn texts<'a>(
                db: &'a TxPool<Self>,
                sql: &str,
                args: Vec<Arg>,
            ) -> BoxFuture<'a, Result<Vec<String>, TxError>> {
                let sql = render(sql, $kind == Kind::Postgres);
                Box::pin(async move {
                    let mut q = sqlx::query_scalar::<$db, String>(sqlx::AssertSqlSafe(sql));
                    for a in args {
                        q = match a {
                            Arg::I(v) => q.bind(v),
                            Arg::S(v) => q.bind(v),
                        };
                    }
                    Ok(q.fetch_all(db).await?)
                })
            }
            fn template(db: &TxPool<Self>) -> TransactionTemplate {
                TransactionTemplate::new(db.clone())
            }
        }
    };
}

test_db!(sqlx::Sqlite, Kind::Sqlite);
test_db!(sqlx::Postgres, Kind::Postgres);
test_db!(sqlx::MySql, Kind::MySql);

/// Where a test's three services live; serializable so that a child worker process can open
/// the same ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvSpec {
    pub kind: Kind,
    pub prefix: String,
    /// SQLite: the directory of the three database files.
    pub dir: Option<String>,
}

/// The three services of the order saga and the engine's database (the orders service's).
pub struct Env<DB: TestDb> {
    pub spec: EnvSpec,
    /// The orders service: the saga table, `orders` and `journal`.
    pub orders: TxPool<DB>,
    pub stock: TxPool<DB>,
    pub payment: TxPool<DB>,
    _dir: Option<Arc<tempfile::TempDir>>,
}

impl<DB: TestDb> Clone for Env<DB> {
    fn clone(&self) -> Self {
        Env {
            spec: self.spec.clone(),
            orders: self.orders.clone(),
            stock: self.stock.clone(),
            payment: self.payment.clone(),
            _dir: self._dir.clone(),
        }
    }
}

pub async fn sqlite_file(path: &std::path::Path, max: u32) -> SqliteTxPool {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(20));
    let pool = SqlitePoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(20))
        .connect_with(opts)
        .await
        .expect("open SQLite");
    SqliteTxPool::new(pool)
}

async fn pg(max: u32) -> Option<PgTxPool> {
    match PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(20))
        .connect(&pg_url())
        .await
    {
        Ok(p) => Some(PgTxPool::new(p)),
        Err(e) => {
            server_missing("PostgreSQL", &e);
            None
        }
    }
}

async fn mysql(max: u32) -> Option<MySqlTxPool> {
    match MySqlPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(20))
        .connect(&mysql_url())
        .await
    {
        Ok(p) => Some(MySqlTxPool::new(p)),
        Err(e) => {
            server_missing("MariaDB/MySQL", &e);
            None
        }
    }
}

impl Env<sqlx::Sqlite> {
    pub async fn sqlite() -> Env<sqlx::Sqlite> {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = EnvSpec {
            kind: Kind::Sqlite,
            prefix: unique("s"),
            dir: Some(dir.path().to_string_lossy().into_owned()),
        };
        let env = Env::<sqlx::Sqlite>::open_sqlite(spec, Some(Arc::new(dir))).await;
        env.create().await;
        env
    }

    pub async fn open_sqlite(
        spec: EnvSpec,
        dir: Option<Arc<tempfile::TempDir>>,
    ) -> Env<sqlx::Sqlite> {
        let path = std::path::PathBuf::from(spec.dir.clone().expect("SQLite dir"));
        Env {
            orders: sqlite_file(&path.join("orders.db"), 8).await,
            stock: sqlite_file(&path.join("stock.db"), 4).await,
            payment: sqlite_file(&path.join("payment.db"), 4).await,
            spec,
            _dir: dir,
        }
    }
}

impl Env<sqlx::Postgres> {
    pub async fn postgres() -> Option<Env<sqlx::Postgres>> {
        let spec = EnvSpec {
            kind: Kind::Postgres,
            prefix: unique("s"),
            dir: None,
        };
        let env = Env::<sqlx::Postgres>::open_pg(spec, 8).await?;
        for s in ["stock", "payment", "orders"] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {}_{s}",
                env.spec.prefix
            )))
            .execute(env.orders.pool())
            .await
            .unwrap();
        }
        env.create().await;
        Some(env)
    }

    pub async fn open_pg(spec: EnvSpec, max: u32) -> Option<Env<sqlx::Postgres>> {
        Some(Env {
            orders: pg(max).await?,
            stock: pg(4).await?,
            payment: pg(4).await?,
            spec,
            _dir: None,
        })
    }
}

impl Env<sqlx::MySql> {
    pub async fn mysql() -> Option<Env<sqlx::MySql>> {
        let spec = EnvSpec {
            kind: Kind::MySql,
            prefix: unique("s"),
            dir: None,
        };
        let env = Env::<sqlx::MySql>::open_mysql(spec, 8).await?;
        env.create().await;
        Some(env)
    }

    pub async fn open_mysql(spec: EnvSpec, max: u32) -> Option<Env<sqlx::MySql>> {
        Some(Env {
            orders: mysql(max).await?,
            stock: mysql(4).await?,
            payment: mysql(4).await?,
            spec,
            _dir: None,
        })
    }
}

/// The order saga's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub item: String,
    pub qty: i64,
    pub account: String,
    pub amount: i64,
    /// The test's fault injection point, `step:direction:mid|after`.
    pub crash_at: Option<String>,
}

/// Called at fault points of the order saga's steps: `mid` after the step's writes and calls,
/// before it returns; `after` registered to run right after the step's transaction commits.
pub type Hook = Arc<dyn Fn(SagaId, String, Order) -> BoxFuture<'static, ()> + Send + Sync>;

impl<DB: TestDb> Env<DB> {
    /// The qualified name of `table` of `service`.
    pub fn t(&self, service: &str, table: &str) -> String {
        let p = &self.spec.prefix;
        match self.spec.kind {
            Kind::Sqlite => format!("{service}_{table}"),
            Kind::Postgres => format!("{p}_{service}.{table}"),
            Kind::MySql => format!("{p}_{service}_{table}"),
        }
    }

    /// The engine's saga table.
    pub fn saga_table(&self) -> String {
        format!("{}_saga", self.spec.prefix)
    }

    pub async fn create(&self) {
        let ddl = [
            (
                &self.stock,
                format!(
                    "CREATE TABLE {} (item VARCHAR(50) PRIMARY KEY, stock BIGINT NOT NULL)",
                    self.t("stock", "items")
                ),
            ),
            (
                &self.stock,
                format!(
                    "CREATE TABLE {} (mkey VARCHAR(200) PRIMARY KEY, item VARCHAR(50) NOT NULL, delta BIGINT NOT NULL)",
                    self.t("stock", "moves")
                ),
            ),
            (
                &self.payment,
                format!(
                    "CREATE TABLE {} (account VARCHAR(50) PRIMARY KEY, balance BIGINT NOT NULL)",
                    self.t("payment", "accounts")
                ),
            ),
            (
                &self.payment,
                format!(
                    "CREATE TABLE {} (pkey VARCHAR(200) PRIMARY KEY, account VARCHAR(50) NOT NULL, delta BIGINT NOT NULL)",
                    self.t("payment", "payments")
                ),
            ),
            (
                &self.orders,
                format!(
                    "CREATE TABLE {} (id VARCHAR(36) PRIMARY KEY, item VARCHAR(50) NOT NULL, qty BIGINT NOT NULL, status VARCHAR(20) NOT NULL)",
                    self.t("orders", "orders")
                ),
            ),
            (
                &self.orders,
                format!(
                    "CREATE TABLE {} (saga_id VARCHAR(36) NOT NULL, seq BIGINT NOT NULL, event VARCHAR(100) NOT NULL, PRIMARY KEY (saga_id, seq))",
                    self.t("orders", "journal")
                ),
            ),
        ];
        for (db, sql) in ddl {
            DB::exec(db, &sql, vec![])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    pub async fn seed(&self, item: &str, stock: i64, accounts: &[(&str, i64)]) {
        DB::exec(
            &self.stock,
            &format!(
                "INSERT INTO {} (item, stock) VALUES (?, ?)",
                self.t("stock", "items")
            ),
            vec![item.into(), stock.into()],
        )
        .await
        .unwrap();
        for (a, b) in accounts {
            DB::exec(
                &self.payment,
                &format!(
                    "INSERT INTO {} (account, balance) VALUES (?, ?)",
                    self.t("payment", "accounts")
                ),
                vec![(*a).into(), (*b).into()],
            )
            .await
            .unwrap();
        }
    }

    pub async fn drop_all(&self) {
        match self.spec.kind {
            Kind::Sqlite => {}
            Kind::Postgres => {
                for s in ["stock", "payment", "orders"] {
                    let _ = DB::exec(
                        &self.orders,
                        &format!("DROP SCHEMA IF EXISTS {}_{s} CASCADE", self.spec.prefix),
                        vec![],
                    )
                    .await;
                }
                let _ = DB::exec(
                    &self.orders,
                    &format!("DROP TABLE IF EXISTS {}", self.saga_table()),
                    vec![],
                )
                .await;
            }
            Kind::MySql => {
                for (s, t) in [
                    ("stock", "items"),
                    ("stock", "moves"),
                    ("payment", "accounts"),
                    ("payment", "payments"),
                    ("orders", "orders"),
                    ("orders", "journal"),
                    // The many-workers test's table, if it made one.
                    ("orders", "effects"),
                ] {
                    let _ = DB::exec(
                        &self.orders,
                        &format!("DROP TABLE IF EXISTS {}", self.t(s, t)),
                        vec![],
                    )
                    .await;
                }
                let _ = DB::exec(
                    &self.orders,
                    &format!("DROP TABLE IF EXISTS {}", self.saga_table()),
                    vec![],
                )
                .await;
            }
        }
    }

    /// An engine on the orders database with short leases and quick polling, for tests.
    pub fn engine(&self) -> SagaEngine<DB> {
        SagaEngine::new(self.orders.clone())
            .table(self.saga_table())
            .lease(Duration::from_secs(3))
            .poll_interval(Duration::from_millis(20))
    }

    pub async fn stock_of(&self, item: &str) -> i64 {
        DB::ints(
            &self.stock,
            &format!(
                "SELECT stock FROM {} WHERE item = ?",
                self.t("stock", "items")
            ),
            vec![item.into()],
        )
        .await
        .unwrap()[0]
    }

    pub async fn balance_of(&self, account: &str) -> i64 {
        DB::ints(
            &self.payment,
            &format!(
                "SELECT balance FROM {} WHERE account = ?",
                self.t("payment", "accounts")
            ),
            vec![account.into()],
        )
        .await
        .unwrap()[0]
    }

    /// The stock moves recorded for saga `id`, as `key=delta`, sorted.
    pub async fn stock_moves(&self, id: SagaId) -> Vec<String> {
        let like = format!("{id}:%");
        DB::texts(
            &self.stock,
            &format!(
                "SELECT mkey FROM {} WHERE mkey LIKE ? ORDER BY mkey",
                self.t("stock", "moves")
            ),
            vec![like.into()],
        )
        .await
        .unwrap()
    }

    pub async fn payments(&self, id: SagaId) -> Vec<String> {
        let like = format!("{id}:%");
        DB::texts(
            &self.payment,
            &format!(
                "SELECT pkey FROM {} WHERE pkey LIKE ? ORDER BY pkey",
                self.t("payment", "payments")
            ),
            vec![like.into()],
        )
        .await
        .unwrap()
    }

    pub async fn order_statuses(&self, id: SagaId) -> Vec<String> {
        DB::texts(
            &self.orders,
            &format!(
                "SELECT status FROM {} WHERE id = ?",
                self.t("orders", "orders")
            ),
            vec![id.into()],
        )
        .await
        .unwrap()
    }

    /// The journal of saga `id` in order: one line per step or compensation that committed.
    pub async fn journal(&self, id: SagaId) -> Vec<String> {
        DB::texts(
            &self.orders,
            &format!(
                "SELECT event FROM {} WHERE saga_id = ? ORDER BY seq",
                self.t("orders", "journal")
            ),
            vec![id.into()],
        )
        .await
        .unwrap()
    }

    /// Appends to the saga's journal through `&orders`: inside a step, in the step's
    /// transaction.
    pub async fn log(&self, id: SagaId, event: &str) -> Result<(), StepError> {
        let j = self.t("orders", "journal");
        DB::exec(
            &self.orders,
            &format!("INSERT INTO {j} (saga_id, seq, event) SELECT ?, COALESCE(MAX(seq), 0) + 1, ? FROM {j} WHERE saga_id = ?"),
            vec![id.into(), event.into(), id.into()],
        )
        .await?;
        Ok(())
    }

    /// The stock service: moves `delta` of `item`, once per `key` (its own transaction on its
    /// own database).
    pub async fn move_stock(&self, key: &str, item: &str, delta: i64) -> Result<(), StepError> {
        let (items, moves) = (self.t("stock", "items"), self.t("stock", "moves"));
        let db = self.stock.clone();
        let (key, item) = (key.to_owned(), item.to_owned());
        DB::template(&self.stock)
            .execute(move |_| {
                let (db, key, item, items, moves) = (
                    db.clone(),
                    key.clone(),
                    item.clone(),
                    items.clone(),
                    moves.clone(),
                );
                async move {
                    let seen = DB::ints(
                        &db,
                        &format!("SELECT COUNT(*) FROM {moves} WHERE mkey = ?"),
                        vec![key.clone().into()],
                    )
                    .await?;
                    if seen[0] > 0 {
                        return Ok(());
                    }
                    let n = DB::exec(
                        &db,
                        &format!(
                            "UPDATE {items} SET stock = stock + ? WHERE item = ? AND stock + ? >= 0"
                        ),
                        vec![delta.into(), item.clone().into(), delta.into()],
                    )
                    .await?;
                    if n != 1 {
                        return Err(StepError::Fail(format!("out of stock: {item}").into()));
                    }
                    DB::exec(
                        &db,
                        &format!("INSERT INTO {moves} (mkey, item, delta) VALUES (?, ?, ?)"),
                        vec![key.into(), item.into(), delta.into()],
                    )
                    .await?;
                    Ok(())
                }
            })
            .await
    }

    /// The payment service: moves `delta` on `account`, once per `key`; declines an overdraft.
    pub async fn pay(&self, key: &str, account: &str, delta: i64) -> Result<(), StepError> {
        let (accounts, payments) = (self.t("payment", "accounts"), self.t("payment", "payments"));
        let db = self.payment.clone();
        let (key, account) = (key.to_owned(), account.to_owned());
        DB::template(&self.payment)
            .execute(move |_| {
                let (db, key, account, accounts, payments) = (db.clone(), key.clone(), account.clone(), accounts.clone(), payments.clone());
                async move {
                    let seen = DB::ints(&db, &format!("SELECT COUNT(*) FROM {payments} WHERE pkey = ?"), vec![key.clone().into()]).await?;
                    if seen[0] > 0 {
                        return Ok(());
                    }
                    let n = DB::exec(&db, &format!("UPDATE {accounts} SET balance = balance + ? WHERE account = ? AND balance + ? >= 0"), vec![delta.into(), account.clone().into(), delta.into()]).await?;
                    if n != 1 {
                        return Err(StepError::Fail(format!("payment declined: insufficient balance on {account}").into()));
                    }
                    DB::exec(&db, &format!("INSERT INTO {payments} (pkey, account, delta) VALUES (?, ?, ?)"), vec![key.into(), account.into(), delta.into()]).await?;
                    Ok(())
                }
            })
            .await
    }

    /// The seed's order: reserve stock (stock service, keyed), create the order (local: the
    /// orders database is the engine's), charge the account (payment service, keyed). Every
    /// step and compensation also appends to the journal, locally.
    pub fn order_saga(&self, hook: Option<Hook>) -> Saga<Order> {
        self.order_saga_with(hook, tx_saga::StepOptions::default())
    }

    /// [`order_saga`](Self::order_saga) with `options` for every step.
    pub fn order_saga_with(
        &self,
        hook: Option<Hook>,
        options: tx_saga::StepOptions,
    ) -> Saga<Order> {
        let point = |hook: &Option<Hook>, id: SagaId, name: &'static str, order: &Order| {
            let f = hook.as_ref().map(|h| h(id, name.to_owned(), order.clone()));
            async move {
                if let Some(f) = f {
                    f.await;
                }
            }
        };
        let (e1, e2, e3, e4, e5, e6) = (
            self.clone(),
            self.clone(),
            self.clone(),
            self.clone(),
            self.clone(),
            self.clone(),
        );
        let (h1, h2, h3, h4, h5, h6) = (
            hook.clone(),
            hook.clone(),
            hook.clone(),
            hook.clone(),
            hook.clone(),
            hook,
        );
        Saga::<Order>::named("place_order")
            .step_with(
                "reserve_stock",
                options.clone(),
                move |ctx: StepContext<Order>| async move {
                    e1.log(ctx.saga_id(), "reserve_stock:forward").await?;
                    let o = ctx.state();
                    e1.move_stock(ctx.idempotency_key(), &o.item, -o.qty)
                        .await?;
                    point(&h1, ctx.saga_id(), "reserve_stock:forward", o).await;
                    Ok(ctx.into_state())
                },
                move |ctx: StepContext<Order>| async move {
                    e2.log(ctx.saga_id(), "reserve_stock:compensate").await?;
                    let o = ctx.state();
                    e2.move_stock(ctx.idempotency_key(), &o.item, o.qty).await?;
                    point(&h2, ctx.saga_id(), "reserve_stock:compensate", o).await;
                    Ok(ctx.into_state())
                },
            )
            .step_with(
                "create_order",
                options.clone(),
                move |ctx: StepContext<Order>| async move {
                    e3.log(ctx.saga_id(), "create_order:forward").await?;
                    let o = ctx.state();
                    DB::exec(
                        &e3.orders,
                        &format!(
                            "INSERT INTO {} (id, item, qty, status) VALUES (?, ?, ?, 'created')",
                            e3.t("orders", "orders")
                        ),
                        vec![ctx.saga_id().into(), o.item.clone().into(), o.qty.into()],
                    )
                    .await?;
                    point(&h3, ctx.saga_id(), "create_order:forward", o).await;
                    Ok(ctx.into_state())
                },
                move |ctx: StepContext<Order>| async move {
                    e4.log(ctx.saga_id(), "create_order:compensate").await?;
                    // The order stays, cancelled, as a trace.
                    DB::exec(
                        &e4.orders,
                        &format!(
                            "UPDATE {} SET status = 'cancelled' WHERE id = ?",
                            e4.t("orders", "orders")
                        ),
                        vec![ctx.saga_id().into()],
                    )
                    .await?;
                    point(&h4, ctx.saga_id(), "create_order:compensate", ctx.state()).await;
                    Ok(ctx.into_state())
                },
            )
            .step_with(
                "charge_payment",
                options.clone(),
                move |ctx: StepContext<Order>| async move {
                    e5.log(ctx.saga_id(), "charge_payment:forward").await?;
                    let o = ctx.state();
                    e5.pay(ctx.idempotency_key(), &o.account, -o.amount).await?;
                    point(&h5, ctx.saga_id(), "charge_payment:forward", o).await;
                    Ok(ctx.into_state())
                },
                move |ctx: StepContext<Order>| async move {
                    e6.log(ctx.saga_id(), "charge_payment:compensate").await?;
                    let o = ctx.state();
                    e6.pay(ctx.idempotency_key(), &o.account, o.amount).await?;
                    point(&h6, ctx.saga_id(), "charge_payment:compensate", o).await;
                    Ok(ctx.into_state())
                },
            )
    }
}

/// A worker running on its own task until [`Running::stop`].
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<Result<(), TxError>>,
}

pub fn spawn_worker<DB: SagaBackend>(engine: &SagaEngine<DB>) -> Running {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let engine = engine.clone();
    let join = tokio::spawn(async move {
        engine
            .run(async move {
                let _ = rx.await;
            })
            .await
    });
    Running {
        stop: Some(tx),
        join,
    }
}

impl Running {
    pub async fn stop(mut self) {
        let _ = self.stop.take().expect("stopped once").send(());
        self.join
            .await
            .expect("worker task")
            .expect("worker result");
    }

    /// Kills the worker as a crash would: its task is dropped mid-step.
    pub fn kill(self) {
        self.join.abort();
    }
}

/// Waits until every saga in `ids` is final or stuck; panics with their statuses after
/// `limit`.
pub async fn settle<DB: SagaBackend>(
    engine: &SagaEngine<DB>,
    ids: &[SagaId],
    limit: Duration,
) -> Vec<SagaStatus> {
    let deadline = Instant::now() + limit;
    loop {
        let mut all = Vec::with_capacity(ids.len());
        for id in ids {
            all.push(engine.status(*id).await.expect("status"));
        }
        if all
            .iter()
            .all(|s| s.is_final() || matches!(s, SagaStatus::Stuck(_)))
        {
            return all;
        }
        if Instant::now() > deadline {
            let pending: Vec<_> = ids
                .iter()
                .zip(&all)
                .filter(|(_, s)| !s.is_final())
                .take(5)
                .collect();
            panic!("sagas did not settle within {limit:?}; e.g. {pending:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The order for `n` units of `item`, paid from `account`.
pub fn order(item: &str, qty: i64, account: &str, amount: i64) -> Order {
    Order {
        item: item.to_owned(),
        qty,
        account: account.to_owned(),
        amount,
        crash_at: None,
    }
}

pub mod scenarios;

/// Parses a saga id the tests know to be well formed.
pub trait FromStrChecked {
    fn from_str_checked(s: &str) -> SagaId;
}
impl FromStrChecked for SagaId {
    fn from_str_checked(s: &str) -> SagaId {
        s.parse().expect("a well-formed saga id")
    }
}
