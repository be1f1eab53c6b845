//! MariaDB/MySQL as a `Server`.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlRow};
use sqlx::{AssertSqlSafe, MySqlConnection, Row};
use tx_sqlx::MySqlTxPool;

use super::backend::{
    Backend, Books, BoxFut, Entry, Server, backend_methods, every_connection_clean, script,
    server_methods,
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
        crate::probe_and_close(crate::mysql_pool(1)).await?;
        let url = crate::via_port(crate::mysql_url(), port, "ssl-mode=disabled");
        let options = MySqlConnectOptions::from_str(&url).expect("MySQL URL");
        let ids: Arc<Mutex<HashSet<u64>>> = Arc::default();
        let ids2 = ids.clone();
        let pool = crate::pool_options(max, acquire_timeout).after_connect(move |conn, _| {
            let ids = ids2.clone();
            Box::pin(async move {
                // A lost lock wait must not stall a test for the default 50 s.
                let row: MySqlRow = sqlx::raw_sql(
                    "SET SESSION innodb_lock_wait_timeout = 10; SELECT CONNECTION_ID()",
                )
                .fetch_one(&mut *conn)
                .await?;
                ids.lock().unwrap().insert(row.try_get(0)?);
                Ok(())
            })
        });
        let db = crate::open_pool(pool, options).await;
        Some(MySqlBackend { db, ids })
    }

    /// A brand-new connection outside every pool.
    pub async fn fresh() -> MySqlConnection {
        crate::fresh_connection(&crate::mysql_url()).await
    }

    fn id_list(&self) -> Option<String> {
        let ids = self.ids.lock().unwrap();
        if ids.is_empty() {
            return None;
        }
        Some(ids.iter().map(u64::to_string).collect::<Vec<_>>().join(","))
    }
}

impl Backend for MySqlBackend {
    type Pool = MySqlTxPool;

    backend_methods!(
        |_| Self::fresh(),
        "MariaDB",
        "CREATE TABLE {table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
           tag VARCHAR(100) NOT NULL) ENGINE=InnoDB",
        "?"
    );
}

impl Server for MySqlBackend {
    server_methods! {
        // No open transaction, no statement bound left from a deadline, default isolation and
        // access mode.
        clean: "SELECT CONCAT(@@in_transaction, ',', @@max_statement_time, ',', \
                @@tx_isolation, ',', @@tx_read_only, ',', @@autocommit)"
            ("(in_transaction, max_statement_time, isolation, read_only, autocommit)"),
        session: "SELECT CONNECTION_ID()" as u64,
        alive: "SELECT COUNT(*) FROM information_schema.processlist WHERE id = ?",
        sleep: "SELECT SLEEP(?)",
        tables: "CREATE TABLE {accounts} (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL) \
                   ENGINE=InnoDB; \
                 CREATE TABLE {ledger} (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
                   transfer_id BIGINT NOT NULL, account BIGINT NOT NULL, delta BIGINT NOT NULL) \
                   ENGINE=InnoDB",
        add: "UPDATE {accounts} SET balance = balance + ? WHERE id = ?"
            then "SELECT balance FROM {accounts} WHERE id = ?",
        line: "INSERT INTO {ledger} (transfer_id, account, delta) VALUES (?, ?, ?)",
    }

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

    fn kill(&self, id: i64) -> BoxFut<'_, ()> {
        let sql = format!("KILL CONNECTION {id}");
        Box::pin(async move {
            script(Self::fresh().await, sql)
                .await
                .expect("KILL CONNECTION")
        })
    }
}
