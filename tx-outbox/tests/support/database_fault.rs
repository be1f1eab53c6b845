//! A publisher, a relay (woken by `NOTIFY`) and an inbox consumer running on PostgreSQL and
//! JetStream through a database fault: every message of a transaction that reported a commit
//! is handled exactly once; none of a transaction that reported a failure; one whose commit
//! outcome is unknown at most once; and everything recovers by itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::watch;
use tx_outbox::nats::JetStreamSink;
use tx_outbox::{Delivery, Inbox, Message, Outbox, Relay};
use tx_sqlx::{PgTxPool, TransactionTemplate, TxError};

/// How a publishing transaction ended, as its caller saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Committed,
    Failed,
    Unknown,
}

/// Runs the scenario on `db`, with `fault` injected half a second in.
pub async fn relay_through<F, Fut>(db: PgTxPool, fault: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let client = match async_nats::connect(super::nats_url()).await {
        Ok(c) => c,
        Err(e) => return super::server_missing("NATS", &e),
    };
    let js = jetstream::new(client);
    let prefix = super::unique("obr");
    let stream = prefix.to_uppercase();
    js.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.>")],
        storage: jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap();
    let outbox = Outbox::with_table(db.clone(), &super::unique("ob")).unwrap();
    outbox.install().await.unwrap();
    let inbox = Inbox::with_table(db.clone(), &super::unique("ib")).unwrap();
    inbox.install().await.unwrap();
    let handled = super::unique("handled");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {handled} (n BIGINT NOT NULL)"
    )))
    .execute(db.pool())
    .await
    .unwrap();

    // The relay (woken by NOTIFY; 200 ms polling as fallback).
    let sink = JetStreamSink::connect(&super::nats_url())
        .await
        .unwrap()
        .ack_timeout(Duration::from_secs(2))
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
                        let (outbox, db) = (outbox.clone(), db.clone());
                        async move {
                            outbox
                                .publish(
                                    Message::new("n", n.to_string().into_bytes())
                                        .key(format!("k{}", n % 7)),
                                )
                                .await?;
                            // Keep the transaction open most of the time, so that the fault
                            // lands inside one (a killed idle connection is replaced by the
                            // pool's liveness check without failing anything).
                            sqlx::query("SELECT pg_sleep(0.02)").execute(&db).await?;
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
    fault().await;
    // Run on past the restart, until some transactions committed after it.
    let before = outcomes.lock().unwrap().len();
    super::eventually(
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
    let got: Vec<i64> = super::eventually(
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
