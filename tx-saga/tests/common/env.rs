//! Where a test's three services live (stock, orders, payment): one pool each, on its own
//! database (SQLite file), schema (PostgreSQL) or table prefix (MySQL), and the reads the
//! tests assert on.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tx_saga::{Saga, SagaEngine, SagaId};
use tx_sqlx::{SqliteTxPool, TxPool};

use super::db::{Kind, TestDb};

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

/// A SQLite pool of `max` connections on the file at `path` (WAL), waiting up to 20 s for a
/// lock or a connection: several workers' pools may share one file.
pub async fn sqlite_file(path: &Path, max: u32) -> SqliteTxPool {
    let wait = Duration::from_secs(20);
    let options = tx_tests::sqlite_options(path).busy_timeout(wait);
    tx_tests::sqlite_pool_with(options, max, wait).await
}

/// SQLite's pool for `service` of `spec`: the service's own file in the environment's
/// directory.
pub async fn sqlite_service(spec: &EnvSpec, service: &str, max: u32) -> Option<SqliteTxPool> {
    let dir = Path::new(spec.dir.as_deref().expect("SQLite dir"));
    Some(sqlite_file(&dir.join(format!("{service}.db")), max).await)
}

impl<DB: TestDb> Env<DB> {
    /// A fresh environment on `DB`: new names, the services' own files (SQLite) or schemas
    /// (PostgreSQL), and their tables; `None` (the test is skipped) when the server is down.
    pub async fn new() -> Option<Env<DB>> {
        let dir =
            (DB::KIND == Kind::Sqlite).then(|| Arc::new(tempfile::tempdir().expect("temp dir")));
        let spec = EnvSpec {
            kind: DB::KIND,
            prefix: tx_tests::unique_table("s"),
            dir: dir
                .as_ref()
                .map(|d| d.path().to_string_lossy().into_owned()),
        };
        let mut env = Env::<DB>::open(spec, 8).await?;
        env._dir = dir;
        if DB::KIND == Kind::Postgres {
            for s in ["stock", "payment", "orders"] {
                let sql = format!("CREATE SCHEMA IF NOT EXISTS {}_{s}", env.spec.prefix);
                DB::exec(&env.orders, &sql, vec![]).await.unwrap();
            }
        }
        env.create().await;
        Some(env)
    }

    /// The services of `spec` as they are (as a child worker process opens them): the orders
    /// pool of `max` connections, the others of 4.
    pub async fn open(spec: EnvSpec, max: u32) -> Option<Env<DB>> {
        Some(Env {
            orders: DB::open(&spec, "orders", max).await?,
            stock: DB::open(&spec, "stock", 4).await?,
            payment: DB::open(&spec, "payment", 4).await?,
            spec,
            _dir: None,
        })
    }

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

    /// [`engine`](Self::engine) with `saga` registered and its table installed.
    pub async fn installed<S>(&self, saga: Saga<S>) -> SagaEngine<DB>
    where
        S: Serialize + DeserializeOwned + Send + 'static,
    {
        let engine = self.engine().register(saga);
        engine.install().await.unwrap();
        engine
    }

    /// The stock of `item`.
    pub async fn stock_of(&self, item: &str) -> i64 {
        let sql = self.on("stock", "items", "SELECT stock FROM {t} WHERE item = ?");
        DB::ints(&self.stock, &sql, vec![item.into()])
            .await
            .unwrap()[0]
    }

    /// The balance of `account`.
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

    /// The stock moves recorded for saga `id`: their keys, sorted.
    pub async fn stock_moves(&self, id: SagaId) -> Vec<String> {
        self.keys_of(&self.stock, "stock", "moves", "mkey", id)
            .await
    }

    /// The payments recorded for saga `id`: their keys, sorted.
    pub async fn payments(&self, id: SagaId) -> Vec<String> {
        self.keys_of(&self.payment, "payment", "payments", "pkey", id)
            .await
    }

    /// The keys in `column` of `table` (of `service`, on `db`) that saga `id` recorded, sorted.
    async fn keys_of(
        &self,
        db: &TxPool<DB>,
        service: &str,
        table: &str,
        column: &str,
        id: SagaId,
    ) -> Vec<String> {
        let sql = format!(
            "SELECT {column} FROM {} WHERE {column} LIKE ? ORDER BY {column}",
            self.t(service, table)
        );
        DB::texts(db, &sql, vec![format!("{id}:%").into()])
            .await
            .unwrap()
    }

    /// The statuses of the order of saga `id` (one, or none).
    pub async fn order_statuses(&self, id: SagaId) -> Vec<String> {
        self.of_saga("orders", "SELECT status FROM {t} WHERE id = ?", id)
            .await
    }

    /// The journal of saga `id` in order: one line per step or compensation that committed.
    pub async fn journal(&self, id: SagaId) -> Vec<String> {
        let sql = "SELECT event FROM {t} WHERE saga_id = ? ORDER BY seq";
        self.of_saga("journal", sql, id).await
    }

    /// The texts `sql` reads from `table` of the orders service for saga `id`.
    async fn of_saga(&self, table: &str, sql: &str, id: SagaId) -> Vec<String> {
        let sql = self.on("orders", table, sql);
        DB::texts(&self.orders, &sql, vec![id.into()])
            .await
            .unwrap()
    }
}
