//! The outbox, relay and inbox on each database, with a recording sink: what is delivered
//! (committed work only, with propagation), retries, parking, per-key order with three
//! relays, and late commits that a relay must not overtake.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{RecordingSink, unique};
use tx_outbox::{Inbox, Message, Outbox, Received, Relay};
use tx_sqlx::{Propagation, TransactionTemplate, TxError, TxPool};

const LIMIT: Duration = Duration::from_secs(30);

/// One module of tests per backend: `name: database type, pool (and its temp dir), whether
/// a RequiresNew scope may write beside an open writer, whether transactions may overlap;`.
macro_rules! backend {
    ($($module:ident: $db:ty, $pool:expr, requires_new = $requires_new:expr, overlapping = $overlap:expr;)*) => {$(
        mod $module {
            use super::*;

            type Db = $db;

            /// The test's own SQL with `?` placeholders, in the backend's spelling.
            fn sql(text: &str) -> String {
                if std::any::TypeId::of::<Db>() == std::any::TypeId::of::<sqlx::Postgres>() {
                    tx_sqlx::sql_text::numbered_placeholders(text)
                } else {
                    text.to_owned()
                }
            }

            async fn pool() -> Option<(TxPool<Db>, Option<tempfile::TempDir>)> {
                $pool
            }

            async fn setup() -> Option<(TxPool<Db>, Outbox<Db>, String, Option<tempfile::TempDir>)>
            {
                let (db, dir) = pool().await?;
                let outbox = support::fresh_outbox(&db).await;
                let columns = "id INTEGER PRIMARY KEY, note VARCHAR(100)";
                let orders = support::create_table(&db, "orders", columns).await;
                Some((db, outbox, orders, dir))
            }

            fn relay(
                outbox: &Outbox<Db>,
                sink: &Arc<RecordingSink>,
            ) -> Relay<Db, Arc<RecordingSink>> {
                Relay::new(outbox.clone(), sink.clone())
                    .backoff(Duration::from_millis(1), Duration::from_millis(5))
                    .poll_interval(Duration::from_millis(10))
            }

            /// Runs rounds until nothing is pending any more.
            async fn drain(relay: &Relay<Db, Arc<RecordingSink>>, outbox: &Outbox<Db>) {
                support::eventually(LIMIT, "the outbox to drain", || async {
                    relay.run_once().await.unwrap();
                    (outbox.stats().await.unwrap().pending == 0).then_some(())
                })
                .await;
            }

            async fn publish_in_tx(db: &TxPool<Db>, outbox: &Outbox<Db>, msgs: Vec<Message>) {
                TransactionTemplate::new(db.clone())
                    .execute(|_| {
                        let (outbox, msgs) = (outbox.clone(), msgs.clone());
                        async move {
                            for m in msgs {
                                outbox.publish(m).await?;
                            }
                            Ok::<_, TxError>(())
                        }
                    })
                    .await
                    .unwrap();
            }

            /// What a scope's body returns to commit (`true`) or roll back.
            fn commit_if(commits: bool) -> Result<(), TxError> {
                if commits {
                    Ok(())
                } else {
                    Err(TxError::UnexpectedRollback)
                }
            }

            /// In one transaction: inserts the order `(id, note)` with `insert` and publishes
            /// `msg`; the transaction then commits when `commits`.
            async fn order_with_message(
                db: &TxPool<Db>,
                outbox: &Outbox<Db>,
                insert: &str,
                (id, note): (i32, &'static str),
                msg: Message,
                commits: bool,
            ) -> Result<(), TxError> {
                let (db2, ob, ins) = (db.clone(), outbox.clone(), insert.to_owned());
                TransactionTemplate::new(db.clone())
                    .execute(move |_| {
                        let (db2, ob, ins, msg) = (db2.clone(), ob.clone(), ins.clone(), msg.clone());
                        async move {
                            sqlx::query(sqlx::AssertSqlSafe(ins))
                                .bind(id)
                                .bind(note)
                                .execute(&db2)
                                .await?;
                            ob.publish(msg).await?;
                            commit_if(commits)
                        }
                    })
                    .await
            }

            /// In one transaction: publishes `outer.0`, then `inner.1` in a scope of
            /// propagation `inner.0` that commits when `inner.2`; the transaction then commits
            /// when `outer.1`.
            async fn publish_around(
                db: &TxPool<Db>,
                outbox: &Outbox<Db>,
                outer: (&'static str, bool),
                inner: (Propagation, &'static str, bool),
            ) -> Result<(), TxError> {
                let (db2, ob) = (db.clone(), outbox.clone());
                TransactionTemplate::new(db.clone())
                    .execute(move |_| {
                        let (db2, ob) = (db2.clone(), ob.clone());
                        async move {
                            ob.publish(Message::new("orders", outer.0.as_bytes().to_vec()))
                                .await?;
                            let (propagation, payload, commits) = inner;
                            let r: Result<(), TxError> = TransactionTemplate::new(db2.clone())
                                .propagation(propagation)
                                .execute(|_| {
                                    let ob = ob.clone();
                                    async move {
                                        ob.publish(Message::new("orders", payload.as_bytes().to_vec()))
                                            .await?;
                                        commit_if(commits)
                                    }
                                })
                                .await;
                            assert_eq!(r.is_ok(), commits, "the inner scope of {payload:?}");
                            commit_if(outer.1)
                        }
                    })
                    .await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn publish_outside_a_transaction_is_refused() {
                let Some((db, outbox, _, _dir)) = setup().await else {
                    return;
                };
                let err = outbox
                    .publish(Message::new("t", b"x".to_vec()))
                    .await
                    .unwrap_err();
                assert!(matches!(err, TxError::NoTransaction), "{err}");
                // A Supports scope without a transaction is no transaction either.
                let err = TransactionTemplate::new(db.clone())
                    .propagation(Propagation::Supports)
                    .execute(|_| {
                        let outbox = outbox.clone();
                        async move { outbox.publish(Message::new("t", b"x".to_vec())).await }
                    })
                    .await
                    .unwrap_err();
                assert!(matches!(err, TxError::NoTransaction), "{err}");
                // Bad input fails clearly, inside a transaction too.
                let err = TransactionTemplate::new(db.clone())
                    .execute(|_| {
                        let outbox = outbox.clone();
                        async move { outbox.publish(Message::new("", b"x".to_vec())).await }
                    })
                    .await
                    .unwrap_err();
                assert!(err.to_string().contains("topic is empty"), "{err}");
                let err = TransactionTemplate::new(db.clone())
                    .execute(|_| {
                        let outbox = outbox.clone();
                        async move {
                            outbox
                                .publish(Message::new("t", vec![]).key("k".repeat(300)))
                                .await
                        }
                    })
                    .await
                    .unwrap_err();
                assert!(err.to_string().contains("key is longer than 255"), "{err}");
                let err = Outbox::with_table(db.clone(), "x; drop table y").unwrap_err();
                assert!(
                    err.to_string().contains("invalid outbox/inbox table name"),
                    "{err}"
                );
                assert_eq!(outbox.stats().await.unwrap().pending, 0);
                // Installing again changes nothing.
                outbox.install().await.unwrap();
                outbox.install().await.unwrap();
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn only_committed_work_is_delivered() {
                let Some((db, outbox, orders, _dir)) = setup().await else {
                    return;
                };
                let insert = sql(&format!("INSERT INTO {orders} (id, note) VALUES (?, ?)"));
                // Committed: the order and its message.
                let msg = Message::new("orders", b"committed".to_vec())
                    .key("o1")
                    .header("h", "v");
                order_with_message(&db, &outbox, &insert, (1, "a"), msg, true)
                    .await
                    .unwrap();
                // Rolled back: neither.
                let msg = Message::new("orders", b"rolled back".to_vec());
                let r = order_with_message(&db, &outbox, &insert, (2, "b"), msg, false).await;
                assert!(r.is_err());
                // A Nested scope rolled back to its savepoint takes its message with it; the
                // outer transaction's message goes out.
                let nested = (Propagation::Nested, "nested rolled back", false);
                publish_around(&db, &outbox, ("outer", true), nested)
                    .await
                    .unwrap();
                if $requires_new {
                    // RequiresNew follows the inner transaction: it commits although the
                    // outer one rolls back.
                    let requires_new = (Propagation::RequiresNew, "requires new", true);
                    let r = publish_around(&db, &outbox, ("outer rolled back", false), requires_new)
                        .await;
                    assert!(r.is_err());
                }
                assert_eq!(
                    outbox.stats().await.unwrap().pending,
                    if $requires_new { 3 } else { 2 }
                );
                let sink = RecordingSink::new();
                let relay = relay(&outbox, &sink);
                drain(&relay, &outbox).await;
                let mut got = sink.payloads();
                got.sort();
                let mut want = vec!["committed", "outer"];
                if $requires_new {
                    want.push("requires new");
                }
                want.sort();
                assert_eq!(got, want);
                let first = sink
                    .sent()
                    .into_iter()
                    .find(|s| s.payload == "committed")
                    .unwrap();
                assert_eq!(first.key.as_deref(), Some("o1"));
                assert_eq!(first.headers, vec![("h".to_owned(), "v".to_owned())]);
                assert_eq!(first.topic, "orders");
                let rows: Vec<(i32,)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT id FROM {orders}")))
                        .fetch_all(db.pool())
                        .await
                        .unwrap();
                assert_eq!(rows, vec![(1,)]);
                // Nothing more to do: another round sends nothing again.
                let report = relay.run_once().await.unwrap();
                assert_eq!(report.delivered, 0);
                assert_eq!(sink.sent().len(), want.len());
                let stats = outbox.stats().await.unwrap();
                assert_eq!(
                    (stats.pending, stats.failed, stats.oldest_pending_age),
                    (0, 0, None)
                );
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_failing_message_holds_back_its_key_only_then_is_parked() {
                let Some((db, outbox, _, _dir)) = setup().await else {
                    return;
                };
                for m in ["a1", "b1", "a2", "b2"] {
                    let key = &m[..1];
                    publish_in_tx(
                        &db,
                        &outbox,
                        vec![Message::new("t", m.as_bytes().to_vec()).key(key)],
                    )
                    .await;
                }
                let sink = RecordingSink::new();
                sink.fail_when(|m| (m.payload == b"a1").then(|| "broker says no".to_owned()));
                let patient = relay(&outbox, &sink).max_attempts(1000);
                support::eventually(LIMIT, "key b delivered", || async {
                    patient.run_once().await.unwrap();
                    let by_key = sink.by_key();
                    (by_key.get("b").map(Vec::len) == Some(2)).then_some(())
                })
                .await;
                for _ in 0..5 {
                    patient.run_once().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(6)).await;
                }
                let by_key = sink.by_key();
                assert_eq!(by_key["b"], vec!["b1", "b2"]);
                assert!(
                    !by_key.contains_key("a"),
                    "a2 went out while a1 was failing: {by_key:?}"
                );
                let stats = outbox.stats().await.unwrap();
                assert_eq!((stats.pending, stats.failed), (2, 0));
                assert!(stats.oldest_pending_age.is_some());
                // A relay with a lower limit parks a1; its key then goes on.
                let strict = relay(&outbox, &sink).max_attempts(3);
                drain(&strict, &outbox).await;
                assert_eq!(sink.by_key()["a"], vec!["a2"]);
                let failed = outbox.failed(10).await.unwrap();
                assert_eq!(failed.len(), 1);
                assert_eq!(failed[0].payload, b"a1");
                assert_eq!(failed[0].key.as_deref(), Some("a"));
                assert!(failed[0].attempts >= 3, "{}", failed[0].attempts);
                assert!(
                    failed[0].last_error.contains("broker says no"),
                    "{}",
                    failed[0].last_error
                );
                assert_eq!(outbox.stats().await.unwrap().failed, 1);
                // Parked means parked: more rounds do not send it.
                let before = sink.attempts.load(std::sync::atomic::Ordering::SeqCst);
                strict.run_once().await.unwrap();
                assert_eq!(
                    sink.attempts.load(std::sync::atomic::Ordering::SeqCst),
                    before
                );
                // Put back, it goes out.
                sink.heal();
                let id = failed[0].id;
                assert!(outbox.retry_failed(id).await.unwrap());
                assert!(
                    !outbox.retry_failed(id).await.unwrap(),
                    "not parked any more"
                );
                assert!(
                    !outbox
                        .retry_failed(tx_outbox::MessageId::new())
                        .await
                        .unwrap()
                );
                drain(&strict, &outbox).await;
                assert_eq!(sink.by_key()["a"], vec!["a2", "a1"]);
                let stats = outbox.stats().await.unwrap();
                assert_eq!((stats.pending, stats.failed), (0, 0));
                assert_eq!(outbox.purge_delivered(Duration::ZERO).await.unwrap(), 4);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn three_relays_keep_per_key_order() {
                let Some((db, outbox, _, _dir)) = setup().await else {
                    return;
                };
                const KEYS: usize = 24;
                const PER_KEY: usize = 12;
                // Interleaved keys, several messages per transaction.
                let mut all = Vec::new();
                for n in 0..PER_KEY {
                    for k in 0..KEYS {
                        all.push(
                            Message::new("t", format!("{n}").into_bytes()).key(format!("k{k}")),
                        );
                    }
                }
                for chunk in all.chunks(36) {
                    publish_in_tx(&db, &outbox, chunk.to_vec()).await;
                }
                let sink = RecordingSink::new();
                // One send in five fails: retries must not let a key's later message overtake.
                sink.fail_when(|_| (fastrand::u8(..) < 51).then(|| "random failure".to_owned()));
                let relays: Vec<_> = (0..3)
                    .map(|i| {
                        Arc::new(
                            relay(&outbox, &sink)
                                .batch(20)
                                .max_attempts(1000)
                                .name(format!("r{i}")),
                        )
                    })
                    .collect();
                let tasks: Vec<_> = relays
                    .iter()
                    .map(|r| {
                        let (r, outbox) = (r.clone(), outbox.clone());
                        tokio::spawn(async move {
                            let end = tokio::time::Instant::now() + LIMIT;
                            while outbox.stats().await.unwrap().pending > 0 {
                                assert!(tokio::time::Instant::now() < end, "relays did not finish");
                                r.run_once().await.unwrap();
                                tokio::task::yield_now().await;
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                let by_key = sink.by_key();
                assert_eq!(by_key.len(), KEYS);
                let want: Vec<String> = (0..PER_KEY).map(|n| n.to_string()).collect();
                for (k, got) in by_key {
                    assert_eq!(got, want, "order of key {k}");
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_late_commit_is_not_overtaken() {
                if !$overlap {
                    return; // one writer at a time: transactions cannot overlap
                }
                let Some((db, outbox, _, _dir)) = setup().await else {
                    return;
                };
                let (published_tx, published) = tokio::sync::oneshot::channel();
                let (go_tx, go) = tokio::sync::oneshot::channel::<()>();
                // T1 publishes first (the smaller id) and commits last.
                let t1 = {
                    let (db, outbox) = (db.clone(), outbox.clone());
                    tokio::spawn(async move {
                        let mut signals = Some((published_tx, go));
                        TransactionTemplate::new(db)
                            .execute(move |_| {
                                let (published_tx, go) = signals.take().expect("runs once");
                                let outbox = outbox.clone();
                                async move {
                                    outbox
                                        .publish(Message::new("t", b"first".to_vec()).key("a"))
                                        .await?;
                                    published_tx.send(()).unwrap();
                                    go.await.unwrap();
                                    Ok::<_, TxError>(())
                                }
                            })
                            .await
                            .unwrap();
                    })
                };
                published.await.unwrap();
                publish_in_tx(
                    &db,
                    &outbox,
                    vec![Message::new("t", b"second".to_vec()).key("a")],
                )
                .await;
                let sink = RecordingSink::new();
                let relay = relay(&outbox, &sink);
                for _ in 0..3 {
                    relay.run_once().await.unwrap();
                }
                assert!(
                    sink.payloads().is_empty(),
                    "a message went out while an earlier one of its key could still commit: {:?}",
                    sink.payloads()
                );
                go_tx.send(()).unwrap();
                t1.await.unwrap();
                drain(&relay, &outbox).await;
                assert_eq!(sink.payloads(), vec!["first", "second"]);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_inbox_handles_a_message_once() {
                let Some((db, _outbox, orders, _dir)) = setup().await else {
                    return;
                };
                let inbox = Inbox::with_table(db.clone(), &unique("ib")).unwrap();
                inbox.install().await.unwrap();
                inbox.install().await.unwrap();
                let insert = sql(&format!("INSERT INTO {orders} (id, note) VALUES (?, 'x')"));
                let handle = |n: i32, fail: bool| {
                    let (db, insert) = (db.clone(), insert.clone());
                    move || async move {
                        sqlx::query(sqlx::AssertSqlSafe(insert))
                            .bind(n)
                            .execute(&db)
                            .await?;
                        if fail {
                            return Err(TxError::UnexpectedRollback);
                        }
                        Ok::<_, TxError>(n)
                    }
                };
                let id = tx_outbox::MessageId::new();
                // A failing handler records nothing: the redelivery runs it again.
                let r = inbox.receive("billing", id, handle(1, true)).await;
                assert!(r.is_err());
                assert_eq!(
                    inbox
                        .receive("billing", id, handle(1, false))
                        .await
                        .unwrap(),
                    Received::Handled(1)
                );
                assert_eq!(
                    inbox
                        .receive("billing", id, handle(2, false))
                        .await
                        .unwrap(),
                    Received::Duplicate
                );
                // Another consumer handles the same message on its own.
                assert_eq!(
                    inbox.receive("audit", id, handle(3, false)).await.unwrap(),
                    Received::Handled(3)
                );
                let rows: Vec<(i32,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT id FROM {orders} ORDER BY id"
                )))
                .fetch_all(db.pool())
                .await
                .unwrap();
                assert_eq!(rows, vec![(1,), (3,)]);
                let err = inbox.receive("", "x", handle(4, false)).await.unwrap_err();
                assert!(
                    err.to_string().contains("consumer must be 1 to 191 bytes"),
                    "{err}"
                );
                assert_eq!(inbox.purge(Duration::from_secs(3600)).await.unwrap(), 0);
            }
        }
    )*};
}

backend! {
    postgres: sqlx::Postgres, support::pg_pool(8).await.map(|p| (p, None)), requires_new = true, overlapping = true;
    mysql: sqlx::MySql, support::mysql_pool(8).await.map(|p| (p, None)), requires_new = true, overlapping = true;
    sqlite: sqlx::Sqlite, {
        let (p, d) = support::sqlite_pool(4).await;
        Some((p, Some(d)))
    }, requires_new = false, overlapping = false;
}

/// With feature `metrics`: delivered, failed and parked counters and the lag histogram,
/// labelled with the table.
#[cfg(feature = "metrics")]
mod metrics_recorded {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    use metrics::{
        Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
        SharedString, Unit,
    };

    use super::*;

    type Seen = Mutex<HashMap<(String, String), (u64, usize)>>;

    fn seen() -> &'static Seen {
        static SEEN: OnceLock<Seen> = OnceLock::new();
        SEEN.get_or_init(Seen::default)
    }

    struct Handle(String, String);

    impl CounterFn for Handle {
        fn increment(&self, value: u64) {
            seen()
                .lock()
                .unwrap()
                .entry((self.0.clone(), self.1.clone()))
                .or_default()
                .0 += value;
        }
        fn absolute(&self, _: u64) {}
    }

    impl HistogramFn for Handle {
        fn record(&self, value: f64) {
            assert!(value >= 0.0);
            seen()
                .lock()
                .unwrap()
                .entry((self.0.clone(), self.1.clone()))
                .or_default()
                .1 += 1;
        }
    }

    struct Capture;

    fn handle(key: &Key) -> Arc<Handle> {
        let table = key
            .labels()
            .find(|l| l.key() == "table")
            .map(|l| l.value().to_owned())
            .unwrap_or_default();
        Arc::new(Handle(key.name().to_owned(), table))
    }

    impl Recorder for Capture {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(handle(key))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(handle(key))
        }
    }

    #[tokio::test]
    async fn relay_rounds_are_counted() {
        let _ = metrics::set_global_recorder(Capture);
        let (db, _dir) = support::sqlite_pool(2).await;
        let outbox = Outbox::with_table(db.clone(), &unique("ob")).unwrap();
        outbox.install().await.unwrap();
        for p in ["ok1", "bad", "ok2"] {
            TransactionTemplate::new(db.clone())
                .execute(|_| {
                    let outbox = outbox.clone();
                    async move {
                        outbox
                            .publish(Message::new("t", p.as_bytes().to_vec()))
                            .await
                    }
                })
                .await
                .unwrap();
        }
        let sink = RecordingSink::new();
        sink.fail_when(|m| (m.payload == b"bad").then(|| "no".to_owned()));
        let relay = Relay::new(outbox.clone(), sink.clone())
            .max_attempts(2)
            .backoff(Duration::from_millis(1), Duration::from_millis(2));
        support::eventually(LIMIT, "drained", || async {
            relay.run_once().await.unwrap();
            (outbox.stats().await.unwrap().pending == 0).then_some(())
        })
        .await;
        let table = outbox.table().to_owned();
        let get = |name: &str| {
            seen()
                .lock()
                .unwrap()
                .get(&(name.to_owned(), table.clone()))
                .copied()
                .unwrap_or_default()
        };
        assert_eq!(get("tx_outbox_delivered_total").0, 2);
        assert_eq!(get("tx_outbox_send_failures_total").0, 2);
        assert_eq!(get("tx_outbox_parked_total").0, 1);
        assert_eq!(get("tx_outbox_lag_seconds").1, 2);
    }
}

/// `run` wakes on PostgreSQL's NOTIFY (the poll interval here is far longer than the test),
/// and stops at once with an error when its table does not exist.
mod run_loop {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_notify_wakes_the_relay() {
        let Some(db) = support::pg_pool(4).await else {
            return;
        };
        let outbox = Outbox::with_table(db.clone(), &unique("ob")).unwrap();
        outbox.install().await.unwrap();
        let sink = RecordingSink::new();
        let relay =
            Relay::new(outbox.clone(), sink.clone()).poll_interval(Duration::from_secs(3600));
        let task = support::Running::spawn(|stopped| async move {
            relay.run(stopped).await.unwrap();
        });
        // Let the relay finish its first (empty) round and wait on LISTEN.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for n in 0..3 {
            TransactionTemplate::new(db.clone())
                .execute(|_| {
                    let outbox = outbox.clone();
                    async move {
                        outbox
                            .publish(Message::new("t", format!("{n}").into_bytes()))
                            .await
                    }
                })
                .await
                .unwrap();
            let want = n + 1;
            support::eventually(
                Duration::from_secs(20),
                "the NOTIFY to wake the relay",
                || async { (sink.sent().len() == want).then_some(()) },
            )
            .await;
        }
        task.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_fails_fast_without_its_table() {
        let (db, _dir) = support::sqlite_pool(2).await;
        let outbox = Outbox::with_table(db, "never_installed").unwrap();
        let relay = Relay::new(outbox, RecordingSink::new());
        let err = relay.run(std::future::pending::<()>()).await.unwrap_err();
        assert!(err.to_string().contains("never_installed"), "{err}");
    }
}

/// Each relay round that leased partitions is a `tx_outbox.batch` span with what it did.
mod tracing_spans {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

    use super::*;

    /// Every span seen: name and fields; live spans by id.
    #[derive(Default)]
    struct Seen {
        spans: Vec<(String, Vec<(String, String)>)>,
        live: HashMap<u64, usize>,
    }

    #[derive(Clone, Default)]
    struct Spans(Arc<Mutex<Seen>>);

    struct Fields<'a>(&'a mut Vec<(String, String)>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push((field.name().to_owned(), format!("{value:?}")));
        }
    }

    impl<S> Layer<S> for Spans
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
            let mut fields = Vec::new();
            attrs.record(&mut Fields(&mut fields));
            let mut seen = self.0.lock().unwrap();
            seen.spans
                .push((attrs.metadata().name().to_owned(), fields));
            let n = seen.spans.len() - 1;
            seen.live.insert(id.into_u64(), n);
        }

        fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
            let mut seen = self.0.lock().unwrap();
            if let Some(&n) = seen.live.get(&id.into_u64()) {
                values.record(&mut Fields(&mut seen.spans[n].1));
            }
        }

        fn on_close(&self, id: Id, _: Context<'_, S>) {
            self.0.lock().unwrap().live.remove(&id.into_u64());
        }
    }

    /// Installed process-wide (a per-thread subscriber can miss spans whose callsite another
    /// test's thread saw first without one).
    fn spans() -> Spans {
        static SPANS: OnceLock<Spans> = OnceLock::new();
        SPANS
            .get_or_init(|| {
                let spans = Spans::default();
                tracing::subscriber::set_global_default(
                    tracing_subscriber::registry().with(spans.clone()),
                )
                .expect("no other global subscriber in this test binary");
                spans
            })
            .clone()
    }

    #[tokio::test]
    async fn a_round_is_a_span() {
        let spans = spans();
        let (db, _dir) = support::sqlite_pool(2).await;
        let outbox = Outbox::with_table(db.clone(), &unique("ob")).unwrap();
        outbox.install().await.unwrap();
        TransactionTemplate::new(db.clone())
            .execute(|_| {
                let outbox = outbox.clone();
                async move {
                    outbox
                        .publish(Message::new("t", b"1".to_vec()).key("a"))
                        .await?;
                    outbox
                        .publish(Message::new("t", b"2".to_vec()).key("a"))
                        .await
                }
            })
            .await
            .unwrap();
        let relay = Relay::new(outbox.clone(), RecordingSink::new());
        assert_eq!(relay.run_once().await.unwrap().delivered, 2);
        let seen = spans.0.lock().unwrap();
        let table = outbox.table().to_owned();
        let (_, fields) = seen
            .spans
            .iter()
            .find(|(name, f)| {
                name == "tx_outbox.batch" && f.iter().any(|(n, v)| n == "table" && *v == table)
            })
            .expect("a tx_outbox.batch span for this outbox");
        let get = |k: &str| {
            fields
                .iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("messages").as_deref(), Some("2"));
        assert_eq!(get("delivered").as_deref(), Some("2"));
        assert_eq!(get("partitions").as_deref(), Some("1"));
    }
}
