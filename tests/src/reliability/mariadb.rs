//! MariaDB/MySQL as a `Server`.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlSslMode};
use sqlx::{AssertSqlSafe, Connection, MySqlConnection, Row};
use tx_sqlx::MySqlTxPool;

use super::backend::{
    Backend, BoxFut, Server, backend_methods, every_connection_clean, fresh_connection_bank_reads,
};

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

    /// A brand-new connection outside the pool, for [`backend_methods!`].
    async fn fresh_conn(&self) -> MySqlConnection {
        Self::fresh().await
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

    backend_methods!(
        "MariaDB",
        "DROP TABLE IF EXISTS {table}; \
         CREATE TABLE {table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
           tag VARCHAR(100) NOT NULL) ENGINE=InnoDB",
        "?"
    );
}

impl Server for MySqlBackend {
    fresh_connection_bank_reads!();

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
            every_connection_clean(
                self.db.pool(),
                &expected,
                "(in_transaction, max_statement_time, isolation, read_only, autocommit)",
                |conn| Box::pin(mysql_clean_state(conn)),
            )
            .await
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
}
