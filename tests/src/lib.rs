//! Shared support for the integration tests: server URLs, "server missing" policy, unique
//! table names so parallel tests never share tables.

#![forbid(unsafe_code)]

pub mod proxy;
pub mod reliability;
pub mod server_control;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::pool::PoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tx_sqlx::{MySqlTxPool, PgTxPool, SqliteTxPool, TxPool};

/// PostgreSQL URL for tests (`TX_TEST_PG_URL`).
pub fn pg_url() -> String {
    std::env::var("TX_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// MySQL/MariaDB URL for tests (`TX_TEST_MYSQL_URL`).
pub fn mysql_url() -> String {
    std::env::var("TX_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// `url` (`scheme://user@host:port/db`), or with `port` the same server reached through
/// `127.0.0.1:port` (a local proxy) with TLS off: `no_tls` is the URL parameter that says so.
pub fn via_port(url: String, port: Option<u16>, no_tls: &str) -> String {
    let Some(port) = port else {
        return url;
    };
    let (scheme, rest) = url.split_once("://").unwrap_or(("", &url));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let user = authority
        .rsplit_once('@')
        .map_or(String::new(), |(u, _)| format!("{u}@"));
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{scheme}://{user}127.0.0.1:{port}/{path}{sep}{no_tls}")
}

/// Whether the servers the tests need are required (`TX_TEST_REQUIRE_SERVERS=1`): a test that
/// cannot reach one then fails instead of skipping.
pub fn servers_required() -> bool {
    std::env::var("TX_TEST_REQUIRE_SERVERS").is_ok_and(|v| v == "1" || v == "true")
}

/// What to do when a server cannot be reached: fail under `TX_TEST_REQUIRE_SERVERS=1`, else
/// say so loudly and let the caller skip.
fn server_missing(what: &str, err: &dyn std::fmt::Display) -> Option<std::convert::Infallible> {
    if servers_required() {
        panic!("{what} is required (TX_TEST_REQUIRE_SERVERS=1) but unreachable: {err}");
    }
    eprintln!(
        "\n!!!!! SKIPPED: {what} unreachable ({err}); set TX_TEST_REQUIRE_SERVERS=1 to make this a failure !!!!!\n"
    );
    None
}

/// Options of a pool of `max` connections that waits at most `acquire` for one.
pub fn pool_options<DB: sqlx::Database>(max: u32, acquire: Duration) -> PoolOptions<DB> {
    PoolOptions::<DB>::new()
        .max_connections(max)
        .acquire_timeout(acquire)
}

/// A pool of `max` connections on the server at `url`, or `None` (test skipped) when it is
/// down.
async fn server_pool<DB: sqlx::Database>(what: &str, url: &str, max: u32) -> Option<TxPool<DB>> {
    match pool_options(max, Duration::from_secs(10))
        .connect(url)
        .await
    {
        Ok(pool) => Some(TxPool::new(pool)),
        Err(e) => {
            server_missing(what, &e);
            None
        }
    }
}

/// A pool on the test PostgreSQL server, or `None` (test skipped) when it is down.
pub async fn pg_pool(max: u32) -> Option<PgTxPool> {
    server_pool("PostgreSQL", &pg_url(), max).await
}

/// A pool on the test MariaDB/MySQL server, or `None` (test skipped) when it is down.
pub async fn mysql_pool(max: u32) -> Option<MySqlTxPool> {
    server_pool("MariaDB/MySQL", &mysql_url(), max).await
}

/// Awaits the probe pool `pool` (one of [`pg_pool`], [`mysql_pool`]: the "server missing"
/// policy applies) and closes it: `None` when the test must be skipped.
pub async fn probe_and_close<DB: sqlx::Database>(
    pool: impl std::future::Future<Output = Option<TxPool<DB>>>,
) -> Option<()> {
    pool.await?.pool().close().await;
    Some(())
}

/// How the tests open a SQLite file database: created if missing, WAL, a 5 s busy timeout.
pub fn sqlite_options(file: &std::path::Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(file)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5))
}

/// A pool on a fresh SQLite file database (WAL) in a temp dir; keep the returned dir alive.
pub async fn sqlite_pool(max: u32) -> (SqliteTxPool, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = sqlite_options(&dir.path().join("test.db"));
    let pool = sqlite_pool_with(opts, max, Duration::from_secs(10)).await;
    (pool, dir)
}

/// A pool of `max` connections opened with `opts`, waiting at most `acquire` for one.
pub async fn sqlite_pool_with(
    opts: SqliteConnectOptions,
    max: u32,
    acquire: Duration,
) -> SqliteTxPool {
    open_pool(pool_options(max, acquire), opts).await
}

/// A pool opened with `options` on a server or file known to be there (it panics otherwise).
pub async fn open_pool<DB: sqlx::Database>(
    options: PoolOptions<DB>,
    connect: <DB::Connection as sqlx::Connection>::Options,
) -> TxPool<DB> {
    match options.connect_with(connect).await {
        Ok(pool) => TxPool::new(pool),
        Err(e) => panic!("open a {} pool: {e}", DB::NAME),
    }
}

/// A brand-new connection to the server at `url`, outside every pool (it panics when there is
/// none).
pub async fn fresh_connection<C: sqlx::Connection>(url: &str) -> C {
    match C::connect(url).await {
        Ok(conn) => conn,
        Err(e) => panic!("a fresh connection to {url}: {e}"),
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A table name unique to this process and call (`t_<prefix>_<pid>_<n>`).
pub fn unique_table(prefix: &str) -> String {
    format!(
        "t_{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// One `#[tokio::test]` (multi-threaded runtime, two workers) per name, each awaiting
/// `$module::$name::<$ty>()`: a suite of generic async checks instantiated for one database,
/// so that each shows up under its own name (`postgres::bank`, `mariadb::bank`).
///
/// ```ignore
/// mod postgres {
///     tx_tests::generic_tests!(crate::reliability for PgBackend: bank, panics_at_every_level);
/// }
/// ```
#[macro_export]
macro_rules! generic_tests {
    ($($module:tt)::+ for $ty:ty: $($name:ident),* $(,)?) => {
        $crate::generic_tests!(@each [$($module)::+] $ty; $($name),*);
    };
    (@each [$($module:tt)*] $ty:ty; $name:ident $(, $rest:ident)*) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $($module)*::$name::<$ty>().await;
        }
        $crate::generic_tests!(@each [$($module)*] $ty; $($rest),*);
    };
    (@each [$($module:tt)*] $ty:ty;) => {};
}
