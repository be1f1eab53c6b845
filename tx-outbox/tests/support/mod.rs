//! Shared support for the outbox tests: server URLs and the "server missing" policy, pools,
//! unique names, a recording sink, and a loopback proxy that can cut connections.
#![allow(dead_code)]

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "nats")]
pub mod database_fault;
#[cfg(feature = "nats")]
pub mod jetstream;

// Pools on the test servers as the tests crate opens them; not every test binary uses each.
#[allow(unused_imports)]
pub use tx_tests::{mysql_pool, pg_pool, pg_url};

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tx_outbox::{Envelope, Inbox, Outbox, OutboxDatabase, Sink, SinkError};
use tx_sqlx::{PgTxPool, SqliteTxPool, TxPool};

pub fn nats_url() -> String {
    std::env::var("TX_TEST_NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".into())
}

pub fn amqp_url() -> String {
    std::env::var("TX_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Whether a missing server fails the test (`TX_TEST_REQUIRE_SERVERS=1`).
pub fn servers_required() -> bool {
    std::env::var("TX_TEST_REQUIRE_SERVERS").is_ok_and(|v| v == "1" || v == "true")
}

/// Fails under `TX_TEST_REQUIRE_SERVERS=1`, else says so loudly (the caller skips).
pub fn server_missing(what: &str, err: &dyn std::fmt::Display) {
    if servers_required() {
        panic!("{what} is required (TX_TEST_REQUIRE_SERVERS=1) but unreachable: {err}");
    }
    eprintln!(
        "\n!!!!! SKIPPED: {what} unreachable ({err}); set TX_TEST_REQUIRE_SERVERS=1 to make this a failure !!!!!\n"
    );
}

/// A PostgreSQL pool whose commits do not wait for the WAL flush (`synchronous_commit=off`):
/// for load tests whose server is not crashed, where fsync per commit is all the time.
pub async fn pg_pool_async_commit(max: u32) -> Option<PgTxPool> {
    let opts: sqlx::postgres::PgConnectOptions = pg_url()
        .parse()
        .map_err(|e| server_missing("PostgreSQL", &e))
        .ok()?;
    tx_tests::pool_options(max, Duration::from_secs(10))
        .connect_with(opts.options([("synchronous_commit", "off")]))
        .await
        .map(TxPool::new)
        .map_err(|e| server_missing("PostgreSQL", &e))
        .ok()
}

/// A pool on a fresh SQLite file (WAL) in a temp dir; keep the dir alive.
pub async fn sqlite_pool(max: u32) -> (SqliteTxPool, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let pool = sqlite_pool_at(&dir.path().join("outbox.db"), max).await;
    (pool, dir)
}

pub async fn sqlite_pool_at(path: &std::path::Path, max: u32) -> SqliteTxPool {
    let opts = tx_tests::sqlite_options(path).busy_timeout(Duration::from_secs(10));
    tx_tests::sqlite_pool_with(opts, max, Duration::from_secs(10)).await
}

/// A name unique to this process and call (`t_<prefix>_<pid>_<n>`), for tables, streams,
/// subjects and queues.
pub fn unique(prefix: &str) -> String {
    tx_tests::unique_table(prefix)
}

/// An outbox in a table of its own, installed.
pub async fn fresh_outbox<DB: OutboxDatabase>(db: &TxPool<DB>) -> Outbox<DB> {
    let outbox = Outbox::with_table(db.clone(), &unique("ob")).unwrap();
    outbox.install().await.unwrap();
    outbox
}

/// An inbox in a table of its own, installed.
pub async fn fresh_inbox<DB: OutboxDatabase>(db: &TxPool<DB>) -> Inbox<DB> {
    let inbox = Inbox::with_table(db.clone(), &unique("ib")).unwrap();
    inbox.install().await.unwrap();
    inbox
}

/// Creates a table of the test's own, `CREATE TABLE <name> (<columns>)`; returns its name.
pub async fn create_table<DB: sqlx::Database>(
    db: &TxPool<DB>,
    prefix: &str,
    columns: &str,
) -> String
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let name = unique(prefix);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {name} ({columns})"
    )))
    .execute(db.pool())
    .await
    .unwrap();
    name
}

/// What a [`RecordingSink`] saw.
#[derive(Debug, Clone)]
pub struct Sent {
    pub id: String,
    pub topic: String,
    pub key: Option<String>,
    pub payload: String,
    pub headers: Vec<(String, String)>,
}

/// Decides whether a send fails (by message); `None` lets it through.
pub type FailRule = Box<dyn Fn(&Envelope) -> Option<String> + Send + Sync>;

/// A sink that records every message it acknowledges, in order, and fails the ones its rule
/// says. Sends of one batch are recorded in batch order.
#[derive(Default)]
pub struct RecordingSink {
    pub sent: Mutex<Vec<Sent>>,
    pub attempts: AtomicUsize,
    pub rule: Mutex<Option<FailRule>>,
}

impl RecordingSink {
    pub fn new() -> Arc<Self> {
        Arc::new(RecordingSink::default())
    }

    pub fn fail_when(&self, rule: impl Fn(&Envelope) -> Option<String> + Send + Sync + 'static) {
        *self.rule.lock().unwrap() = Some(Box::new(rule));
    }

    pub fn heal(&self) {
        *self.rule.lock().unwrap() = None;
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }

    pub fn payloads(&self) -> Vec<String> {
        self.sent().into_iter().map(|s| s.payload).collect()
    }

    /// Payloads per key, in the order sent.
    pub fn by_key(&self) -> HashMap<String, Vec<String>> {
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for s in self.sent() {
            m.entry(s.key.unwrap_or_default())
                .or_default()
                .push(s.payload);
        }
        m
    }
}

impl Sink for RecordingSink {
    async fn send(&self, batch: &[Envelope]) -> Vec<Result<(), SinkError>> {
        let rule = self.rule.lock().unwrap();
        let mut sent = self.sent.lock().unwrap();
        batch
            .iter()
            .map(|m| {
                self.attempts.fetch_add(1, Ordering::SeqCst);
                if let Some(why) = rule.as_ref().and_then(|r| r(m)) {
                    return Err(SinkError::new(why));
                }
                sent.push(Sent {
                    id: m.id.to_string(),
                    topic: m.topic.clone(),
                    key: m.key.clone(),
                    payload: String::from_utf8_lossy(&m.payload).into_owned(),
                    headers: m.headers.clone(),
                });
                Ok(())
            })
            .collect()
    }
}

/// A loopback TCP proxy; [`cut`](CutProxy::cut) closes every connection through it (the
/// client sees its broker connection die), new connections go through again.
pub struct CutProxy {
    addr: SocketAddr,
    /// Each connection ends when this is sent to (or dropped with the proxy).
    cut: Arc<watch::Sender<()>>,
    accept: JoinHandle<()>,
    pub cuts: AtomicUsize,
}

impl CutProxy {
    pub async fn start(upstream: &str) -> io::Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(watch::Sender::new(()));
        let (upstream, cut2) = (upstream.to_owned(), cut.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                // Subscribed now: only a later cut ends this connection.
                let mut cut = cut2.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(CutProxy {
            addr,
            cut,
            accept,
            cuts: AtomicUsize::new(0),
        })
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Drops every proxied connection now.
    pub fn cut(&self) {
        self.cut.send_replace(());
        self.cuts.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Completes once the [`Running`] that handed it out is stopped: the shutdown signal of a
/// relay or consumer under test.
pub type Stopped = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A task (a relay, a consumer) that runs until [`stop`](Running::stop), or is aborted as a
/// crash would end it.
pub struct Running {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Running {
    /// Spawns `body`, handing it the signal that [`stop`](Running::stop) gives.
    pub fn spawn<Fut>(body: impl FnOnce(Stopped) -> Fut) -> Running
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, mut signal) = watch::channel(false);
        let stopped: Stopped = Box::pin(async move {
            let _ = signal.wait_for(|s| *s).await;
        });
        Running {
            task: tokio::spawn(body(stopped)),
            stop,
        }
    }

    /// Signals the task to stop and waits for it; panics if it failed.
    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }

    /// Aborts the task mid-work and waits until it is gone; the stop signal is never given.
    pub async fn abort(self) {
        let Running { task, stop } = self;
        task.abort();
        let _ = task.await;
        drop(stop);
    }
}

/// What `connect` gives, or `None` (the caller skips) when `what` cannot be reached within
/// 5 s.
pub async fn within_5s<T, E: std::fmt::Display>(
    what: &str,
    connect: impl Future<Output = Result<T, E>>,
) -> Option<T> {
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            server_missing(what, &e);
            None
        }
        Err(e) => {
            server_missing(what, &e);
            None
        }
    }
}

/// Retries `f` until it returns `Some`, for at most `limit` (then panics with `what`).
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
