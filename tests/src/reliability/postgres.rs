//! PostgreSQL as a `Server`.

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, PgConnection};
use tx_sqlx::PgTxPool;

use super::backend::{
    Backend, Books, BoxFut, Entry, Server, backend_methods, every_connection_clean, script,
    server_methods,
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
        crate::probe_and_close(crate::pg_pool(1)).await?;
        let app = format!(
            "txrel_{tag}_{}_{}",
            std::process::id(),
            APP_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let url = crate::via_port(crate::pg_url(), port, "sslmode=disable");
        let options = PgConnectOptions::from_str(&url)
            .expect("PostgreSQL URL")
            .application_name(&app)
            .options([("deadlock_timeout", "50ms")]);
        let db = crate::open_pool(crate::pool_options(max, acquire_timeout), options).await;
        Some(PgBackend { db, app })
    }

    /// A brand-new connection outside every pool.
    pub async fn fresh() -> PgConnection {
        crate::fresh_connection(&crate::pg_url()).await
    }
}

impl Backend for PgBackend {
    type Pool = PgTxPool;

    backend_methods!(
        |_| Self::fresh(),
        "PostgreSQL",
        "CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, tag TEXT NOT NULL)",
        "$1"
    );
}

impl Server for PgBackend {
    server_methods! {
        // Not inside a transaction block (`now()` is this statement's start), no transaction
        // id, default settings. Simple protocol: one statement, one implicit transaction.
        clean: "SELECT (now() = statement_timestamp())::text || ',' || \
                (pg_current_xact_id_if_assigned() IS NULL)::text || ',' || \
                current_setting('statement_timeout') || ',' || \
                current_setting('transaction_isolation') || ',' || \
                current_setting('transaction_read_only')"
            ("(fresh tx, no xid, statement_timeout, isolation, read_only)"),
        session: "SELECT pg_backend_pid()" as i32,
        alive: "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
        sleep: "SELECT pg_sleep($1)",
        tables: "CREATE TABLE {accounts} (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL); \
                 CREATE TABLE {ledger} (id BIGSERIAL PRIMARY KEY, transfer_id BIGINT NOT NULL, \
                   account BIGINT NOT NULL, delta BIGINT NOT NULL)",
        add: "UPDATE {accounts} SET balance = balance + $1 WHERE id = $2 RETURNING balance",
        line: "INSERT INTO {ledger} (transfer_id, account, delta) VALUES ($1, $2, $3)",
    }

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
}
