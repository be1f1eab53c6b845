//! PostgreSQL restarted under a running relay (and a running publisher and consumer): every
//! message of a transaction that reported a commit is delivered to JetStream and handled
//! exactly once through the inbox; none of a transaction that reported a failure; a
//! transaction whose commit outcome is unknown is handled at most once; the relay, its
//! `LISTEN` connection and the consumer recover by themselves.
//!
//! This binary restarts the shared PostgreSQL server (`pg_ctlcluster ... restart`). cargo runs
//! test binaries one after another, so no other binary of this crate sees the restart; a
//! drop guard brings the server back (and waits until it answers) however the test ends.
//! Needs root and the server tools on a machine whose test server is local; otherwise skips
//! loudly, or fails under `TX_TEST_REQUIRE_SERVERS=1`.

mod support;

use std::io::{Read, Seek};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio::sync::watch;
use tx_outbox::nats::JetStreamSink;
use tx_outbox::{Delivery, Inbox, Message, Outbox, Relay};
use tx_sqlx::{TransactionTemplate, TxError};

fn servers_required() -> bool {
    std::env::var("TX_TEST_REQUIRE_SERVERS").is_ok_and(|v| v == "1" || v == "true")
}

/// Runs a command with its output in a temporary file (a daemon inheriting a pipe would keep
/// a reader waiting forever); `Err` carries the status and output.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let mut out = tempfile::tempfile().map_err(|e| format!("temp file: {e}"))?;
    let err = out.try_clone().map_err(|e| format!("temp file: {e}"))?;
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().map_err(|e| e.to_string())?))
        .stderr(Stdio::from(err))
        .status()
        .map_err(|e| format!("{program}: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let mut text = String::new();
    let _ = out.rewind();
    let _ = out.read_to_string(&mut text);
    Err(format!(
        "`{program} {}` failed ({status}): {}",
        args.join(" "),
        text.trim()
    ))
}

/// The version of the local `main` cluster, when this process may restart it.
fn restart_tools() -> Result<String, String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("`id -u`: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not running as root".into());
    }
    for tool in ["pg_ctlcluster", "pg_isready"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            return Err(format!("`{tool}` not found in PATH"));
        }
    }
    let url = support::pg_url();
    if !url.contains("@127.0.0.1") && !url.contains("@localhost") {
        return Err(format!(
            "the PostgreSQL test server ({url}) is not the local one"
        ));
    }
    let versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .map_err(|e| format!("/etc/postgresql: {e}"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("main").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match versions.as_slice() {
        [v] => Ok(v.clone()),
        other => Err(format!(
            "expected one PostgreSQL `main` cluster, found {other:?}"
        )),
    }
}

fn pg_ready() -> bool {
    run("pg_isready", &["-h", "127.0.0.1", "-q", "-t", "2"]).is_ok()
}

fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn restart_postgres(version: &str) -> Result<(), String> {
    run(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            version,
            "main",
            "restart",
            "-m",
            "fast",
        ],
    )?;
    if !wait_for(Duration::from_secs(30), pg_ready) {
        return Err("PostgreSQL did not answer within 30 s of its restart".into());
    }
    Ok(())
}

/// Brings PostgreSQL back, and waits until it answers, however the test ends.
struct RestorePostgres(String);

impl Drop for RestorePostgres {
    fn drop(&mut self) {
        let version = self.0.clone();
        let ok = wait_for(Duration::from_secs(60), || {
            pg_ready() || {
                let _ = run(
                    "pg_ctlcluster",
                    &["--skip-systemctl-redirect", &version, "main", "start"],
                );
                false
            }
        });
        if !ok {
            let e = "PostgreSQL is not back 60 s after the test";
            if std::thread::panicking() {
                eprintln!("!!!!! {e}");
            } else {
                panic!("{e}");
            }
        }
    }
}

/// How a publishing transaction ended, as its caller saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Committed,
    Failed,
    Unknown,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_the_relay() {
    let version = match restart_tools() {
        Ok(v) => v,
        Err(why) => {
            if servers_required() {
                panic!("cannot restart PostgreSQL (TX_TEST_REQUIRE_SERVERS=1): {why}");
            }
            eprintln!("\n!!!!! SKIPPED: cannot restart PostgreSQL here: {why} !!!!!\n");
            return;
        }
    };
    let Some(db) = support::pg_pool(8).await else {
        return;
    };
    let client = match async_nats::connect(support::nats_url()).await {
        Ok(c) => c,
        Err(e) => return support::server_missing("NATS", &e),
    };
    let _restore = RestorePostgres(version.clone());
    let js = jetstream::new(client);
    let prefix = support::unique("obr");
    let stream = prefix.to_uppercase();
    js.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.>")],
        storage: jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap();
    let outbox = Outbox::with_table(db.clone(), &support::unique("ob")).unwrap();
    outbox.install().await.unwrap();
    let inbox = Inbox::with_table(db.clone(), &support::unique("ib")).unwrap();
    inbox.install().await.unwrap();
    let handled = support::unique("handled");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {handled} (n BIGINT NOT NULL)"
    )))
    .execute(db.pool())
    .await
    .unwrap();

    // The relay (woken by NOTIFY; 200 ms polling as fallback).
    let sink = JetStreamSink::connect(&support::nats_url(), Duration::from_secs(2))
        .await
        .unwrap()
        .subject_prefix(prefix.clone());
    let relay = Arc::new(
        Relay::new(outbox.clone(), sink)
            .lease(Duration::from_secs(2))
            .poll_interval(Duration::from_millis(200))
            .backoff(Duration::from_millis(20), Duration::from_millis(500)),
    );
    let (stop_tx, stop) = watch::channel(false);
    let relay_task = {
        let (relay, mut stop) = (relay.clone(), stop.clone());
        tokio::spawn(async move {
            relay
                .run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .unwrap();
        })
    };
    // The consumer, through the inbox.
    let consumer_task = {
        let (inbox, db, handled, js, stream, mut stop) = (
            inbox.clone(),
            db.clone(),
            handled.clone(),
            js.clone(),
            stream.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let consumer = tx_outbox::nats::durable_pull_consumer(
                &js,
                &stream,
                "c",
                "",
                Duration::from_secs(2),
            )
            .await
            .unwrap();
            let insert = format!("INSERT INTO {handled} (n) VALUES ($1)");
            let handler = move |d: Delivery| {
                let (db, insert) = (db.clone(), insert.clone());
                async move {
                    let n: i64 = String::from_utf8_lossy(&d.payload).parse().unwrap();
                    sqlx::query(sqlx::AssertSqlSafe(insert))
                        .bind(n)
                        .execute(&db)
                        .await?;
                    Ok::<_, TxError>(())
                }
            };
            tx_outbox::nats::consume(
                &inbox,
                "c",
                &consumer,
                Duration::from_millis(50),
                handler,
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            )
            .await
            .unwrap();
        })
    };
    // A publisher running through the restart, recording how each transaction ended.
    let outcomes: Arc<Mutex<Vec<(i64, Outcome)>>> = Arc::default();
    let (stop_publisher, publisher_stop) = watch::channel(false);
    let publisher = {
        let (db, outbox, outcomes, mut stop) =
            (db.clone(), outbox.clone(), outcomes.clone(), publisher_stop);
        tokio::spawn(async move {
            let mut n: i64 = 0;
            while !*stop.borrow_and_update() {
                let r: Result<(), TxError> = TransactionTemplate::new(db.clone())
                    .timeout(Duration::from_secs(5))
                    .execute(|_| {
                        let outbox = outbox.clone();
                        async move {
                            outbox
                                .publish(
                                    Message::new("n", n.to_string().into_bytes())
                                        .key(format!("k{}", n % 7)),
                                )
                                .await?;
                            Ok(())
                        }
                    })
                    .await;
                let outcome = match r {
                    Ok(()) => Outcome::Committed,
                    Err(TxError::CommitOutcomeUnknown(_)) => Outcome::Unknown,
                    Err(_) => Outcome::Failed,
                };
                outcomes.lock().unwrap().push((n, outcome));
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = version.clone();
    tokio::task::spawn_blocking(move || restart_postgres(&v))
        .await
        .unwrap()
        .unwrap();
    // Run on past the restart, until some transactions committed after it.
    let before = outcomes.lock().unwrap().len();
    support::eventually(
        Duration::from_secs(30),
        "publishing to commit again",
        || async {
            let o = outcomes.lock().unwrap();
            (o.len() > before + 50
                && o[before..]
                    .iter()
                    .filter(|(_, x)| *x == Outcome::Committed)
                    .count()
                    > 20)
                .then_some(())
        },
    )
    .await;
    let _ = stop_publisher.send(true);
    publisher.await.unwrap();
    let outcomes = outcomes.lock().unwrap().clone();
    let committed: Vec<i64> = outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::Committed)
        .map(|(n, _)| *n)
        .collect();
    let unknown: Vec<i64> = outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::Unknown)
        .map(|(n, _)| *n)
        .collect();
    assert!(
        outcomes.iter().any(|(_, o)| *o != Outcome::Committed),
        "the restart failed no transaction"
    );
    // Keep relaying and consuming until everything committed is handled.
    let count = format!("SELECT n FROM {handled} ORDER BY n");
    let got: Vec<i64> = support::eventually(
        Duration::from_secs(60),
        "every committed message handled",
        || async {
            let rows: Vec<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(count.clone()))
                .fetch_all(db.pool())
                .await
                .ok()?;
            let got: Vec<i64> = rows.into_iter().map(|r| r.0).collect();
            committed
                .iter()
                .all(|n| got.binary_search(n).is_ok())
                .then_some(got)
        },
    )
    .await;
    let mut dedup = got.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), got.len(), "a message was handled twice");
    for n in &got {
        assert!(
            committed.contains(n) || unknown.contains(n),
            "message {n} of a failed transaction was handled"
        );
    }
    let _ = stop_tx.send(true);
    relay_task.await.unwrap();
    consumer_task.await.unwrap();
    let _ = js.delete_stream(&stream).await;
    drop(stop);
}
