//! PostgreSQL as a `Server`.

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};
use tx_sqlx::PgTxPool;

use super::backend::{
    Backend, BoxFut, Server, backend_methods, every_connection_clean, fresh_connection_bank_reads,
};

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

    /// A brand-new connection outside the pool, for [`backend_methods!`].
    async fn fresh_conn(&self) -> PgConnection {
        Self::fresh().await
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

    backend_methods!(
        "PostgreSQL",
        "DROP TABLE IF EXISTS {table}; \
         CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, tag TEXT NOT NULL)",
        "$1"
    );
}

impl Server for PgBackend {
    fresh_connection_bank_reads!();

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
            every_connection_clean(
                self.db.pool(),
                &expected,
                "(fresh tx, no xid, statement_timeout, isolation, read_only)",
                |conn| Box::pin(pg_clean_state(conn)),
            )
            .await
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
}
