//! The database side of every broker test (an outbox, the consumer's inbox and its
//! `handled` table, with the end-state check), relays as tasks, and the checks the tests share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tx_outbox::{Delivery, Inbox, Message, Outbox, Relay, Sink};
use tx_sqlx::{PgTxPool, TransactionTemplate, TxError};

use crate::support::{self, CutProxy, Running, eventually};

pub type Pg = sqlx::Postgres;

pub const LIMIT: Duration = Duration::from_secs(40);

/// The `(key, seq)` of each message a consumer handled, in handling order.
pub type Order = Arc<Mutex<Vec<(String, i64)>>>;

/// Which deliveries a consumer's handler fails.
pub type Fail = Arc<dyn Fn(&Delivery) -> bool + Send + Sync>;

/// What a test publishes: `keys` x `per_key` committed messages, `chunk` per transaction.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub keys: usize,
    pub per_key: i64,
    pub chunk: usize,
}

impl Load {
    pub fn new(keys: usize, per_key: i64, chunk: usize) -> Load {
        Load {
            keys,
            per_key,
            chunk,
        }
    }
}

/// The database side of a test: the outbox, the consumer's inbox and its `handled` table.
pub struct Shop {
    pub db: PgTxPool,
    pub outbox: Outbox<Pg>,
    pub inbox: Inbox<Pg>,
    pub handled: String,
}

impl Shop {
    pub async fn open(pool_size: u32) -> Option<Shop> {
        Shop::on(support::pg_pool(pool_size).await?).await
    }

    pub async fn on(db: PgTxPool) -> Option<Shop> {
        Some(Shop {
            outbox: support::fresh_outbox(&db).await,
            inbox: support::fresh_inbox(&db).await,
            handled: support::create_table(
                &db,
                "handled",
                "message_id TEXT NOT NULL, k TEXT NOT NULL, seq BIGINT NOT NULL",
            )
            .await,
            db,
        })
    }

    /// Runs `sql` (naming the outbox table `{t}`) outside any transaction.
    pub async fn on_outbox(&self, sql: &str) {
        let sql = sql.replace("{t}", self.outbox.table());
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(self.db.pool())
            .await
            .unwrap();
    }

    /// Publishes `(key, seq)` messages in one transaction that commits or rolls back.
    pub async fn publish(&self, items: &[(String, i64)], commit: bool) {
        let r: Result<(), TxError> = TransactionTemplate::new(self.db.clone())
            .execute(|_| {
                let (outbox, items) = (self.outbox.clone(), items.to_vec());
                async move {
                    for (k, seq) in items {
                        let body = serde_json::json!({ "k": k, "seq": seq, "committed": commit });
                        outbox
                            .publish(Message::json("ev", &body).unwrap().key(k))
                            .await?;
                    }
                    if commit {
                        Ok(())
                    } else {
                        Err(TxError::UnexpectedRollback)
                    }
                }
            })
            .await;
        assert_eq!(r.is_ok(), commit);
    }

    /// Publishes `load` (keys interleaved) and a rolled-back transaction after every fourth
    /// one; returns the committed count.
    pub async fn publish_load(&self, load: Load) -> usize {
        let mut all = Vec::new();
        for seq in 0..load.per_key {
            for k in 0..load.keys {
                all.push((format!("k{k}"), seq));
            }
        }
        for (n, c) in all.chunks(load.chunk).enumerate() {
            self.publish(c, true).await;
            if n.is_multiple_of(4) {
                let ghost: Vec<(String, i64)> = c.iter().map(|(k, _)| (k.clone(), -1)).collect();
                self.publish(&ghost[..ghost.len().min(3)], false).await;
            }
        }
        all.len()
    }

    /// The consumer's handler: records the message in the `handled` table (in the inbox's
    /// transaction) and in `order` (in handling order).
    pub fn handler(
        &self,
        order: Order,
        fail: Fail,
    ) -> impl Fn(
        Delivery,
    )
        -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), TxError>> + Send>>
    + Clone
    + Send
    + Sync
    + 'static {
        let db = self.db.clone();
        let insert = format!(
            "INSERT INTO {} (message_id, k, seq) VALUES ($1, $2, $3)",
            self.handled
        );
        move |d: Delivery| {
            let (db, insert, order, fail) =
                (db.clone(), insert.clone(), order.clone(), fail.clone());
            Box::pin(async move {
                let body: serde_json::Value = d
                    .json()
                    .map_err(|e| TxError::database(tx_sqlx::Operation::Statement, false, e))?;
                assert_eq!(
                    body["committed"], true,
                    "a rolled-back message arrived: {body}"
                );
                let k = body["k"].as_str().unwrap().to_owned();
                let seq = body["seq"].as_i64().unwrap();
                assert_eq!(
                    d.key.as_deref(),
                    Some(k.as_str()),
                    "the key travels with the message"
                );
                if fail(&d) {
                    return Err(TxError::UnexpectedRollback);
                }
                sqlx::query(sqlx::AssertSqlSafe(insert))
                    .bind(&d.message_id)
                    .bind(&k)
                    .bind(seq)
                    .execute(&db)
                    .await?;
                order.lock().unwrap().push((k, seq));
                Ok(())
            })
        }
    }

    /// Waits until `expected` messages are handled, then checks the end state: each handled
    /// exactly once (by message id and by key/seq), none from a rolled-back transaction,
    /// nothing pending or parked in the outbox.
    pub async fn assert_end_state(&self, expected: usize) {
        let count = format!("SELECT COUNT(*) FROM {}", self.handled);
        eventually(LIMIT, "every committed message handled", || async {
            let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(count.clone()))
                .fetch_one(self.db.pool())
                .await
                .unwrap();
            assert!(
                n as usize <= expected,
                "more handled ({n}) than published ({expected})"
            );
            (n as usize == expected).then_some(())
        })
        .await;
        let (ids, pairs, ghosts): (i64, i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(DISTINCT message_id), COUNT(DISTINCT (k, seq)), COUNT(*) FILTER (WHERE seq < 0) FROM {}",
            self.handled
        )))
        .fetch_one(self.db.pool())
        .await
        .unwrap();
        assert_eq!(
            (ids as usize, pairs as usize, ghosts),
            (expected, expected, 0)
        );
        // The relay records a delivery after the broker's acknowledgement, which may come
        // after the consumer already handled the message.
        eventually(LIMIT, "the outbox drained", || async {
            let stats = self.outbox.stats().await.unwrap();
            assert_eq!(stats.failed, 0, "nothing parked");
            (stats.pending == 0).then_some(())
        })
        .await;
    }
}

/// Each key's handled sequence numbers are 0, 1, 2, ... in order.
pub fn assert_per_key_order(order: &Order, load: Load) {
    let mut by_key: HashMap<String, Vec<i64>> = HashMap::new();
    for (k, s) in order.lock().unwrap().iter() {
        by_key.entry(k.clone()).or_default().push(*s);
    }
    assert_eq!(by_key.len(), load.keys);
    let want: Vec<i64> = (0..load.per_key).collect();
    for (k, seqs) in by_key {
        assert_eq!(seqs, want, "order of key {k}");
    }
}

/// Runs `relay` once at a time until the outbox of `shop` has nothing pending.
pub async fn drain<S: Sink>(relay: &Relay<Pg, S>, shop: &Shop, what: &str) {
    eventually(LIMIT, what, || async {
        relay.run_once().await.unwrap();
        (shop.outbox.stats().await.unwrap().pending == 0).then_some(())
    })
    .await;
}

/// Cuts the connections through `proxy` four times at random moments, and checks that at
/// least one cut came while work was pending.
pub async fn cut_four_times(proxy: &CutProxy, shop: &Shop) {
    let mut cuts_mid_run = 0;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(30..80))).await;
        if shop.outbox.stats().await.unwrap().pending > 0 {
            cuts_mid_run += 1;
        }
        proxy.cut();
    }
    assert!(cuts_mid_run > 0, "no cut happened while work was pending");
}

pub fn never() -> Fail {
    Arc::new(|_| false)
}

pub fn relay<S: Sink>(shop: &Shop, sink: S) -> Relay<Pg, S> {
    Relay::new(shop.outbox.clone(), sink)
        .batch(50)
        .lease(Duration::from_millis(800))
        .backoff(Duration::from_millis(5), Duration::from_millis(50))
        .poll_interval(Duration::from_millis(20))
        .max_attempts(1000)
}

/// Runs `relay.run` as a task.
pub fn spawn_relay<S: Sink>(relay: Relay<Pg, S>) -> Running {
    Running::spawn(|stopped| async move {
        relay.run(stopped).await.unwrap();
    })
}

/// Stops `tasks` (relays, consumers) one after another.
pub async fn stop_all(tasks: impl IntoIterator<Item = Running>) {
    for task in tasks {
        task.stop().await;
    }
}
