//! Round trips, counted: what each peer of the place-order workload sends the database per
//! unit of work, on PostgreSQL, MariaDB and SQLite, asserted statement by statement.
//!
//! PostgreSQL and MariaDB are reached through [`CountingProxy`], which records every message
//! that reaches the server: statements (the application's and the driver's `BEGIN`, `COMMIT`,
//! `SAVEPOINT`), prepares and pings. SQLite has no server: its statement trace
//! (`sqlite3_trace_v2`) records every statement the library runs, including those sqlx runs
//! for a transaction.
//!
//! Prepares are left out of the figures: the driver prepares a statement once per connection,
//! so they depend on which pooled connection a unit gets, not on the unit.
//!
//! `TX_TEST_PG_URL` / `TX_TEST_MYSQL_URL` name the servers (as for the other test suites);
//! with `TX_TEST_REQUIRE_SERVERS=1` a missing server fails the test instead of skipping it.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
use sqlx::pool::PoolOptions;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tx_bench::wire::{CountingProxy, Protocol, Sent};
use tx_bench::workload::{BenchError, Dialect, Peer, Variant};
use tx_bench::{mysql, postgres, sqlite};

/// Units run (one at a time) per variant and peer; each must send the same.
const UNITS: usize = 3;

fn required() -> bool {
    std::env::var("TX_TEST_REQUIRE_SERVERS").is_ok_and(|v| v == "1" || v == "true")
}

/// A proxy in front of the server of `url`, or `None` (the test skips) when it is down.
async fn proxy(protocol: Protocol, host: &str, port: u16, what: &str) -> Option<CountingProxy> {
    match CountingProxy::start(protocol, &format!("{host}:{port}")).await {
        Ok(p) => Some(p),
        Err(e) if required() => {
            panic!("{what} is required (TX_TEST_REQUIRE_SERVERS=1) but unreachable: {e}")
        }
        Err(e) => {
            eprintln!(
                "\n!!!!! SKIPPED: {what} unreachable ({e}); set TX_TEST_REQUIRE_SERVERS=1 to make this a failure !!!!!\n"
            );
            None
        }
    }
}

/// Two connections: enough for an order and its audit at once; both are opened (and
/// configured) during the warm-up, so none is opened while counting.
fn pool_options<DB: sqlx::Database>() -> PoolOptions<DB> {
    PoolOptions::new().max_connections(2)
}

/// What one unit of work sent: its statements in order, and its pings.
///
/// sqlx pings a connection when the pool hands it out (`test_before_acquire`, on by default)
/// and again when it comes back (unconditionally, in a task of its own: the order of that
/// ping among the other connection's statements varies, so pings are counted, not placed).
#[derive(Debug, PartialEq, Eq)]
struct Unit {
    statements: Vec<String>,
    pings: usize,
}

/// What `unit` sends per call, prepares left out: runs two warm-up calls, then [`UNITS`]
/// calls one at a time, and checks that each sent the same.
async fn per_unit<F, Fut>(what: &str, unit: F, sent: impl Fn() -> Vec<Sent>) -> Unit
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), BenchError>>,
{
    // Lets the connections' release pings (sent from tasks of their own) arrive.
    let settled = || async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        sent()
    };
    for _ in 0..2 {
        unit().await.expect("warm-up unit");
    }
    settled().await;
    let mut units = Vec::new();
    for _ in 0..UNITS {
        unit().await.expect("unit");
        let log = settled().await;
        units.push(Unit {
            pings: log.iter().filter(|s| **s == Sent::Ping).count(),
            statements: log
                .into_iter()
                .filter_map(|s| match s {
                    Sent::Statement(text) => Some(text),
                    _ => None,
                })
                .collect(),
        });
    }
    let first = units.remove(0);
    for other in units {
        assert_eq!(other, first, "{what}: units differ");
    }
    first
}

/// How one backend's transactions look from the database.
struct Expect {
    dialect: Dialect,
    /// How hand-written sqlx and tx begin a read-write transaction.
    hand_begin: &'static str,
    tx_begin: &'static str,
    /// Pings per transaction: sqlx's, when the pool hands the connection out and when it
    /// comes back (SQLite's ping is a message to the connection's thread, not a statement).
    pings_per_transaction: usize,
    /// What tx sends for a read-only serializable transaction running one `SELECT`.
    read_only: &'static [&'static str],
}

/// The statements of one unit of `variant`, in order, for a peer that begins with `begin`
/// and names its savepoint `savepoint`; `tx`: the tx peer (whose `empty` sends nothing).
fn statements(e: &Expect, variant: Variant, tx: bool) -> Vec<String> {
    let (begin, savepoint) = if tx {
        (e.tx_begin, "tx_sp_1")
    } else {
        (e.hand_begin, "_sqlx_savepoint_1")
    };
    let sql = &e.dialect.statements;
    let mut s: Vec<String> = Vec::new();
    let mut push = |t: &str| s.push(t.to_owned());
    if variant == Variant::Empty {
        if !tx {
            push(begin);
            push("COMMIT");
        }
        return s;
    }
    push(begin);
    push(sql.deduct);
    push(sql.create);
    if variant == Variant::Nested {
        push(&format!("SAVEPOINT {savepoint}"));
        push(sql.charge);
        push(&format!("RELEASE SAVEPOINT {savepoint}"));
    } else {
        push(sql.charge);
    }
    let audit = [begin, sql.audit, "COMMIT"];
    if e.dialect.audit_inside() {
        audit.iter().for_each(|t| push(t));
        push("COMMIT");
    } else {
        push("COMMIT");
        audit.iter().for_each(|t| push(t));
    }
    s
}

/// Asserts, for every variant, what each peer sends per unit, and what tx sends for a
/// read-only serializable transaction.
async fn check<H, T, F, Fut>(
    e: Expect,
    hand: &H,
    shop: &T,
    read_only: F,
    sent: impl Fn() -> Vec<Sent> + Copy,
) where
    H: Peer,
    T: Peer,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), BenchError>>,
{
    let mut tx_units = Vec::new();
    for v in Variant::ALL {
        let h = per_unit(&format!("hand {v:?}"), || hand.unit(v), sent).await;
        let t = per_unit(&format!("tx {v:?}"), || shop.unit(v), sent).await;
        // Transactions begun: the order's and the audit's; hand-written `empty` begins one,
        // tx's none (its BEGIN waits for a first statement that never comes).
        let (hand_txs, tx_txs) = if v == Variant::Empty { (1, 0) } else { (2, 2) };
        assert_eq!(
            h,
            Unit {
                statements: statements(&e, v, false),
                pings: hand_txs * e.pings_per_transaction
            },
            "hand-written {v:?}"
        );
        assert_eq!(
            t,
            Unit {
                statements: statements(&e, v, true),
                pings: tx_txs * e.pings_per_transaction
            },
            "tx {v:?}"
        );
        // The figures: the unit's own statements, + 2 per transaction (BEGIN, COMMIT), + 2
        // for a savepoint (SAVEPOINT, RELEASE); the same count as hand-written sqlx.
        let own = if v == Variant::Empty { 0 } else { 4 };
        let savepoint = if v == Variant::Nested { 2 } else { 0 };
        assert_eq!(t.statements.len(), own + 2 * tx_txs + savepoint, "tx {v:?}");
        if v != Variant::Empty {
            assert_eq!(t.statements.len(), h.statements.len(), "{v:?}");
        }
        tx_units.push(t);
    }
    // Joining the order's transaction (three `Required` methods) sends nothing more.
    assert_eq!(tx_units[3], tx_units[0], "joined = place_order");
    assert_eq!(
        per_unit("tx read-only", read_only, sent).await,
        Unit {
            statements: e.read_only.iter().map(|s| s.to_string()).collect(),
            pings: e.pings_per_transaction
        },
        "read-only serializable"
    );
}

fn ok<T>(r: Result<T, BenchError>) -> Result<(), BenchError> {
    r.map(drop)
}

/// A test of a server backend, reached through a [`CountingProxy`]: `$backend` is the
/// workload's module, `$options` its connect options, `$env`/`$default` its URL, `$ssl`
/// TLS off (the proxy reads the messages), `$cleanup` the statements dropping the peers'
/// schemas (given their names).
macro_rules! server_round_trips {
    (
        $test:ident, $backend:ident, $options:ty, $protocol:expr, $ssl:expr,
        $env:literal, $default:literal, $what:literal, $expect:expr, $cleanup:expr
    ) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            let url = std::env::var($env).unwrap_or_else(|_| $default.to_owned());
            let options: $options = url.parse().expect($env);
            let (host, port) = (options.get_host().to_owned(), options.get_port());
            let Some(proxy) = proxy($protocol, &host, port, $what).await else {
                return;
            };
            let options = options.host("127.0.0.1").port(proxy.port()).ssl_mode($ssl);
            let pid = std::process::id();
            let (h, t) = (format!("rt_hand_{pid}"), format!("rt_tx_{pid}"));
            let hand =
                $backend::Hand::new($backend::pool(options.clone(), &h, pool_options()).await);
            let shop = $backend::Shop::new($backend::pool(options, &t, pool_options()).await);
            let read_only = || async { ok(shop.audited().await) };
            check($expect, &hand, &shop, read_only, || proxy.take()).await;
            let cleanup: fn(&str, &str) -> String = $cleanup;
            sqlx::raw_sql(sqlx::AssertSqlSafe(cleanup(&h, &t)))
                .execute(&hand.pool)
                .await
                .expect("drop the peers' schemas");
        }
    };
}

server_round_trips!(
    postgres_round_trips,
    postgres,
    PgConnectOptions,
    Protocol::Postgres,
    PgSslMode::Disable,
    "TX_TEST_PG_URL",
    "postgres://postgres@127.0.0.1:5432/test",
    "PostgreSQL",
    Expect {
        dialect: postgres::DIALECT,
        hand_begin: "BEGIN",
        // The access mode is always stated (a session default of read-only does not leak in).
        tx_begin: "BEGIN READ WRITE",
        pings_per_transaction: 2,
        // Isolation and access mode are part of the one BEGIN.
        read_only: &[
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
            "SELECT count(*) FROM audit",
            "COMMIT",
        ],
    },
    |h, t| format!("DROP SCHEMA {h} CASCADE; DROP SCHEMA {t} CASCADE")
);

server_round_trips!(
    mysql_round_trips,
    mysql,
    MySqlConnectOptions,
    Protocol::MySql,
    MySqlSslMode::Disabled,
    "TX_TEST_MYSQL_URL",
    "mysql://root@127.0.0.1:3306/test",
    "MariaDB/MySQL",
    Expect {
        dialect: mysql::DIALECT,
        hand_begin: "BEGIN",
        tx_begin: "START TRANSACTION READ WRITE",
        pings_per_transaction: 2,
        // The isolation level is set for the next transaction only, in the same round trip
        // as its START TRANSACTION.
        read_only: &[
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; START TRANSACTION READ ONLY",
            "SELECT count(*) FROM audit",
            "COMMIT",
        ],
    },
    |h, t| format!("DROP DATABASE {h}; DROP DATABASE {t}")
);

/// Statements SQLite ran, from every connection with the trace on.
static SQLITE_LOG: Mutex<Vec<Sent>> = Mutex::new(Vec::new());

/// `sqlite3_trace_v2`'s callback for `SQLITE_TRACE_STMT`: `x` is the statement's SQL text.
unsafe extern "C" fn on_statement(
    _: c_uint,
    _: *mut c_void,
    _: *mut c_void,
    x: *mut c_void,
) -> c_int {
    // SAFETY: for SQLITE_TRACE_STMT, SQLite passes the statement's text as a NUL-terminated
    // string valid for the duration of the call.
    let text = unsafe { CStr::from_ptr(x as *const c_char) };
    SQLITE_LOG
        .lock()
        .unwrap()
        .push(Sent::Statement(text.to_string_lossy().into_owned()));
    0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_round_trips() {
    let dir = std::env::temp_dir().join(format!("tx-bench-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let traced = || {
        pool_options::<sqlx::Sqlite>().after_connect(|conn, _| {
            Box::pin(async move {
                let mut handle = conn.lock_handle().await?;
                // SAFETY: the handle is this open connection's, locked for the call; the
                // callback touches only a static.
                unsafe {
                    libsqlite3_sys::sqlite3_trace_v2(
                        handle.as_raw_handle().as_ptr(),
                        libsqlite3_sys::SQLITE_TRACE_STMT as c_uint,
                        Some(on_statement),
                        std::ptr::null_mut(),
                    );
                }
                Ok(())
            })
        })
    };
    let hand = sqlite::Hand::new(sqlite::pool(&dir.join("hand.db"), traced()).await);
    let shop = sqlite::Shop::new(sqlite::pool(&dir.join("tx.db"), traced()).await);
    let expect = Expect {
        dialect: sqlite::DIALECT,
        hand_begin: "BEGIN IMMEDIATE",
        // Writers take the write lock up front.
        tx_begin: "BEGIN IMMEDIATE",
        pings_per_transaction: 0,
        // Always serializable; read-only is the connection's `query_only` setting, read first
        // (the pool may have set it), switched on with the BEGIN (one call, two statements)
        // and off after COMMIT.
        read_only: &[
            "PRAGMA query_only",
            "PRAGMA query_only = ON;",
            "BEGIN DEFERRED",
            "SELECT count(*) FROM audit",
            "COMMIT",
            "PRAGMA query_only = OFF",
        ],
    };
    let sent = || std::mem::take(&mut *SQLITE_LOG.lock().unwrap());
    check(
        expect,
        &hand,
        &shop,
        || async { ok(shop.audited().await) },
        sent,
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
