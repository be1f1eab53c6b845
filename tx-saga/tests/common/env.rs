//! Where a test's three services live (stock, orders, payment): one pool each, on its own
//! database (SQLite file), schema (PostgreSQL) or table prefix (MySQL), and the reads the
//! tests assert on.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tx_saga::{SagaEngine, SagaId};
use tx_sqlx::{MySqlTxPool, PgTxPool, SqliteTxPool, TxPool};

use super::db::{Kind, TestDb};
use super::{mysql_url, pg_url, server_missing, unique};

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
                "stock",
                "items",
                "item VARCHAR(50) PRIMARY KEY, stock BIGINT NOT NULL",
            ),
            (
                &self.stock,
                "stock",
                "moves",
                "mkey VARCHAR(200) PRIMARY KEY, item VARCHAR(50) NOT NULL, delta BIGINT NOT NULL",
            ),
            (
                &self.payment,
                "payment",
                "accounts",
                "account VARCHAR(50) PRIMARY KEY, balance BIGINT NOT NULL",
            ),
            (
                &self.payment,
                "payment",
                "payments",
                "pkey VARCHAR(200) PRIMARY KEY, account VARCHAR(50) NOT NULL, delta BIGINT NOT NULL",
            ),
            (
                &self.orders,
                "orders",
                "orders",
                "id VARCHAR(36) PRIMARY KEY, item VARCHAR(50) NOT NULL, qty BIGINT NOT NULL, status VARCHAR(20) NOT NULL",
            ),
            (
                &self.orders,
                "orders",
                "journal",
                "saga_id VARCHAR(36) NOT NULL, seq BIGINT NOT NULL, event VARCHAR(100) NOT NULL, PRIMARY KEY (saga_id, seq)",
            ),
        ];
        for (db, service, table, columns) in ddl {
            let sql = format!("CREATE TABLE {} ({columns})", self.t(service, table));
            DB::exec(db, &sql, vec![])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    pub async fn seed(&self, item: &str, stock: i64, accounts: &[(&str, i64)]) {
        let items = self.on(
            "stock",
            "items",
            "INSERT INTO {t} (item, stock) VALUES (?, ?)",
        );
        DB::exec(&self.stock, &items, vec![item.into(), stock.into()])
            .await
            .unwrap();
        let insert = self.on(
            "payment",
            "accounts",
            "INSERT INTO {t} (account, balance) VALUES (?, ?)",
        );
        for (a, b) in accounts {
            DB::exec(&self.payment, &insert, vec![(*a).into(), (*b).into()])
                .await
                .unwrap();
        }
    }

    /// `sql` with `{t}` standing for `table` of `service`.
    pub fn on(&self, service: &str, table: &str, sql: &str) -> String {
        sql.replace("{t}", &self.t(service, table))
    }

    /// Runs `sql` on the orders database, ignoring a failure (cleanup of what may be absent).
    async fn drop_quietly(&self, sql: String) {
        let _ = DB::exec(&self.orders, &sql, vec![]).await;
    }

    pub async fn drop_all(&self) {
        match self.spec.kind {
            Kind::Sqlite => return,
            Kind::Postgres => {
                for s in ["stock", "payment", "orders"] {
                    self.drop_quietly(format!(
                        "DROP SCHEMA IF EXISTS {}_{s} CASCADE",
                        self.spec.prefix
                    ))
                    .await;
                }
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
                    self.drop_quietly(format!("DROP TABLE IF EXISTS {}", self.t(s, t)))
                        .await;
                }
            }
        }
        self.drop_quietly(format!("DROP TABLE IF EXISTS {}", self.saga_table()))
            .await;
    }

    /// An engine on the orders database with short leases and quick polling, for tests.
    pub fn engine(&self) -> SagaEngine<DB> {
        SagaEngine::new(self.orders.clone())
            .table(self.saga_table())
            .lease(Duration::from_secs(3))
            .poll_interval(Duration::from_millis(20))
    }

    pub async fn stock_of(&self, item: &str) -> i64 {
        let sql = self.on("stock", "items", "SELECT stock FROM {t} WHERE item = ?");
        DB::ints(&self.stock, &sql, vec![item.into()])
            .await
            .unwrap()[0]
    }

    pub async fn balance_of(&self, account: &str) -> i64 {
        let sql = self.on(
            "payment",
            "accounts",
            "SELECT balance FROM {t} WHERE account = ?",
        );
        DB::ints(&self.payment, &sql, vec![account.into()])
            .await
            .unwrap()[0]
    }

    /// The stock moves recorded for saga `id`, as `key=delta`, sorted.
    pub async fn stock_moves(&self, id: SagaId) -> Vec<String> {
        let sql = self.on(
            "stock",
            "moves",
            "SELECT mkey FROM {t} WHERE mkey LIKE ? ORDER BY mkey",
        );
        DB::texts(&self.stock, &sql, vec![format!("{id}:%").into()])
            .await
            .unwrap()
    }

    pub async fn payments(&self, id: SagaId) -> Vec<String> {
        let sql = self.on(
            "payment",
            "payments",
            "SELECT pkey FROM {t} WHERE pkey LIKE ? ORDER BY pkey",
        );
        DB::texts(&self.payment, &sql, vec![format!("{id}:%").into()])
            .await
            .unwrap()
    }

    pub async fn order_statuses(&self, id: SagaId) -> Vec<String> {
        let sql = self.on("orders", "orders", "SELECT status FROM {t} WHERE id = ?");
        DB::texts(&self.orders, &sql, vec![id.into()])
            .await
            .unwrap()
    }

    /// The journal of saga `id` in order: one line per step or compensation that committed.
    pub async fn journal(&self, id: SagaId) -> Vec<String> {
        let sql = self.on(
            "orders",
            "journal",
            "SELECT event FROM {t} WHERE saga_id = ? ORDER BY seq",
        );
        DB::texts(&self.orders, &sql, vec![id.into()])
            .await
            .unwrap()
    }
}
