//! A publisher, a relay (woken by `NOTIFY`) and an inbox consumer running on PostgreSQL and
//! JetStream through a database fault: every message of a transaction that reported a commit
//! is handled exactly once; none of a transaction that reported a failure; one whose commit
//! outcome is unknown at most once; and everything recovers by itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::stream::StorageType;
use tokio::sync::watch;
use tx_outbox::nats::ConsumeOptions;
use tx_outbox::{Delivery, Message, Relay};
use tx_sqlx::{PgTxPool, TransactionTemplate, TxError};

use super::Running;
use super::jetstream::Stream;

/// How a publishing transaction ended, as its caller saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Committed,
    Failed,
    Unknown,
}

impl Outcome {
    fn of(r: Result<(), TxError>) -> Outcome {
        match r {
            Ok(()) => Outcome::Committed,
            Err(TxError::CommitOutcomeUnknown(_)) => Outcome::Unknown,
            Err(_) => Outcome::Failed,
        }
    }
}

/// Runs the scenario on `db`, with `fault` injected half a second in.
pub async fn relay_through<F, Fut>(db: PgTxPool, fault: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(stream) = Stream::open("obr", StorageType::Memory).await else {
        return;
    };
    let outbox = super::fresh_outbox(&db).await;
    let inbox = super::fresh_inbox(&db).await;
    let handled = super::create_table(&db, "handled", "n BIGINT NOT NULL").await;

    // The relay (woken by NOTIFY; 200 ms polling as fallback).
    let relay = Relay::new(outbox.clone(), stream.sink(None).await)
        .lease(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(200))
        .backoff(Duration::from_millis(20), Duration::from_millis(500));
    let relay_task = Running::spawn(|stopped| async move {
        relay.run(stopped).await.unwrap();
    });
    // The consumer, through the inbox.
    let consumer_task = {
        let (inbox, db, stream) = (inbox.clone(), db.clone(), stream.clone());
        let insert = format!("INSERT INTO {handled} (n) VALUES ($1)");
        Running::spawn(|stopped| async move {
            let consumer = stream.consumer("c", Duration::from_secs(2)).await;
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
            let options = ConsumeOptions::default().retry_delay(Duration::from_millis(50));
            tx_outbox::nats::consume(&inbox, "c", &consumer, options, handler, stopped)
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
                outcomes.lock().unwrap().push((n, Outcome::of(r)));
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // One more transaction, held open across the fault, so that the fault surely lands inside
    // one: the publisher's are open most of the time, not always, and a fault between two of
    // them fails nothing (the pool waits for the server to come back).
    let (held_open, opened) = tokio::sync::oneshot::channel();
    let held = {
        let (db, outbox, outcomes) = (db.clone(), outbox.clone(), outcomes.clone());
        tokio::spawn(async move {
            let r: Result<(), TxError> = TransactionTemplate::new(db.clone())
                .execute(|_| async move {
                    outbox
                        .publish(Message::new("n", b"-1".to_vec()).key("held"))
                        .await?;
                    let _ = held_open.send(());
                    sqlx::query("SELECT pg_sleep(30)").execute(&db).await?;
                    Ok(())
                })
                .await;
            outcomes.lock().unwrap().push((-1, Outcome::of(r)));
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    opened.await.expect("the held transaction opened");
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
    held.await.unwrap();
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
    relay_task.stop().await;
    consumer_task.stop().await;
    stream.cleanup().await;
}
