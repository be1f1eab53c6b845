//! # tx-outbox: the transactional outbox and inbox
//!
//! A local transaction cannot include a broker: "commit, then send" loses the message when
//! the process dies in between, "send, then commit" sends messages for work that rolled back.
//! The outbox makes "write the order and send the message" atomic: [`Outbox::publish`] writes
//! the message as a row **in the business transaction** (the one `#[transactional]` or a
//! `TransactionTemplate` bound to the pool), and a [`Relay`] delivers committed rows to a
//! broker afterwards. On the consuming side, [`Inbox::receive`] records the message id in the
//! same transaction as the handler's writes, so a redelivered message is not handled twice.
//!
//! ```no_run
//! use tx_outbox::{Inbox, Message, Outbox, Received, Relay};
//! use tx_sqlx::{SqliteTxPool, TransactionTemplate, TxError};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct OrderPlaced { order_id: i64 }
//!
//! # async fn run(sink: impl tx_outbox::Sink) -> Result<(), TxError> {
//! let db = SqliteTxPool::new(sqlx::SqlitePool::connect("sqlite://shop.db?mode=rwc").await?);
//! let outbox = Outbox::new(db.clone());
//! outbox.install().await?;
//!
//! // The order and its event commit together, or neither does.
//! TransactionTemplate::new(db.clone())
//!     .execute(|_| {
//!         let (db, outbox) = (db.clone(), outbox.clone());
//!         async move {
//!             sqlx::query("insert into orders(id) values (1)").execute(&db).await?;
//!             let event = Message::json("orders.placed", &OrderPlaced { order_id: 1 })
//!                 .map_err(|e| TxError::database(tx_sqlx::Operation::Statement, false, e))?
//!                 .key("order-1");
//!             outbox.publish(event).await?;
//!             Ok::<_, TxError>(())
//!         }
//!     })
//!     .await?;
//!
//! // Somewhere else: deliver committed messages (at least once, in order per key).
//! let relay = Relay::new(outbox.clone(), sink);
//! relay.run_once().await?;
//! # Ok(()) }
//! ```
//!
//! ## Guarantees
//!
//! | what | guarantee |
//! |---|---|
//! | a message published in a transaction that commits | reaches the sink **at least once** (re-sent after a crash, a lost acknowledgement or a broker failure; parked as failed after `max_attempts` sends, listed by [`Outbox::failed`], never dropped) |
//! | a message published in a transaction that rolls back (or a `Nested` scope rolled back to its savepoint) | never sent |
//! | `publish` outside a transaction | [`TxError::NoTransaction`](tx_sqlx::TxError::NoTransaction) |
//! | messages with the same key | reach the sink **in publication order**, which is their transactions' commit order whenever one committed before the next published (the usual case: writers of one aggregate lock it first); with any number of relays; a failing message holds back its own key only, until delivered or parked |
//! | messages without a key | no order |
//! | duplicates at the broker | JetStream drops a re-send within its duplicate window (`Nats-Msg-Id`); RabbitMQ carries `message_id` for the consumer |
//! | handling through [`Inbox::receive`] | **exactly once** per `(consumer, message id)`: the id is recorded in the handler's own transaction, a redelivery is [`Received::Duplicate`] |
//!
//! ## How the relay avoids the two classic traps
//!
//! **Ids are not commit order.** A relay that remembers "the largest id sent" skips a row
//! whose transaction got a smaller id but committed later. This relay keeps no such cursor:
//! each row carries its own state (pending, delivered, failed), and a row becomes eligible
//! only when no row with a smaller id can still appear:
//!
//! * **PostgreSQL**: rows are stamped with `pg_current_xact_id()`; the relay reads only rows
//!   whose transaction id is below `pg_snapshot_xmin(pg_current_snapshot())`, i.e. older than
//!   every transaction still running. A consequence: a long-running transaction anywhere on
//!   the server delays delivery until it ends (keep transactions short; watch
//!   [`Outbox::stats`]'s `oldest_pending_age`).
//! * **MySQL / MariaDB**: a publisher holds a shared lock on its partition's row of
//!   `<table>_partitions` until its transaction ends; a relay leases a partition with an
//!   `UPDATE` of that row, which waits for those publishers (at most a second, else it tries
//!   the partition next round) and records the largest id present at that moment (a locking
//!   read, which also waits for rows still being inserted). Every row up to that bound is
//!   final, and the relay reads no further. The relays of one `Outbox` keep one extra
//!   connection (outside the pool) for these leases, with `innodb_lock_wait_timeout = 1`.
//! * **SQLite**: one writer at a time (`BEGIN IMMEDIATE`): ids are assigned in commit order.
//!
//! **`FOR UPDATE SKIP LOCKED` breaks per-key order.** With several relays, each skipping the
//! rows another has locked, the second message of a key can go out while the first is still
//! in flight. Here messages are spread over 32 partitions by a hash of the key, a relay
//! leases whole partitions (with an expiry, so a dead relay's partitions are taken over), and
//! within a round a key's next message is sent only after the previous one was acknowledged.
//! A failed message stays at the head of its key with a retry time; the key's later messages
//! wait behind it, other keys go on.
//!
//! ## Schema
//!
//! [`Outbox::install`] and [`Inbox::install`] create the tables if they are missing. To manage
//! them in your own migrations instead, create the same (here for the default table names on
//! PostgreSQL; MySQL uses `BIGINT AUTO_INCREMENT`, `VARCHAR(255)`, `LONGBLOB` and plain
//! composite indexes `(state, part, id)`, `(part, msg_key, state, id)`, SQLite
//! `INTEGER PRIMARY KEY AUTOINCREMENT` and `BLOB`; MySQL and SQLite have no `xid` column):
//!
//! ```sql
//! CREATE TABLE tx_outbox (
//!     id BIGSERIAL PRIMARY KEY,
//!     message_id TEXT NOT NULL UNIQUE,        -- MessageId (UUID), the broker's de-duplication id
//!     topic TEXT NOT NULL,
//!     msg_key TEXT,                           -- ordering key
//!     part INTEGER NOT NULL,                  -- partition: FNV-1a(key) % 32
//!     headers TEXT NOT NULL,                  -- JSON array of [name, value]
//!     payload BYTEA NOT NULL,
//!     created_ms BIGINT NOT NULL,             -- database clock, ms since the epoch
//!     state SMALLINT NOT NULL DEFAULT 0,      -- 0 pending, 1 delivered, 2 failed (parked)
//!     attempts INTEGER NOT NULL DEFAULT 0,
//!     next_attempt_ms BIGINT NOT NULL DEFAULT 0,
//!     last_error TEXT,
//!     delivered_ms BIGINT,
//!     xid xid8 NOT NULL DEFAULT pg_current_xact_id());
//! CREATE INDEX tx_outbox_pending ON tx_outbox (part, id) WHERE state = 0;
//! CREATE INDEX tx_outbox_key ON tx_outbox (part, msg_key, id) WHERE state = 0;
//! CREATE INDEX tx_outbox_failed ON tx_outbox (id) WHERE state = 2;
//! CREATE TABLE tx_outbox_partitions (
//!     part INTEGER PRIMARY KEY,
//!     owner TEXT,
//!     lease_until BIGINT NOT NULL DEFAULT 0,
//!     bound BIGINT NOT NULL DEFAULT 0);
//! INSERT INTO tx_outbox_partitions (part) SELECT generate_series(0, 31);
//!
//! CREATE TABLE tx_inbox (
//!     consumer TEXT NOT NULL,
//!     message_id TEXT NOT NULL,
//!     received_ms BIGINT NOT NULL,
//!     PRIMARY KEY (consumer, message_id));
//! CREATE INDEX tx_inbox_received ON tx_inbox (received_ms);
//! ```
//!
//! On PostgreSQL `publish` also runs `pg_notify('<table>', '')`, delivered at commit, which
//! wakes relays at once ([`Relay::run`] polls as a fallback, and on the other databases).
//!
//! ## Features
//!
//! * `nats`: `nats::JetStreamSink` and `nats::consume` (a durable pull consumer through the
//!   inbox, one key at a time or several: `nats::ConsumeOptions`), on `async-nats`; and the
//!   `tx-outbox-relay` binary, a standalone relay process configured by environment variables.
//! * `amqp`: `amqp::AmqpSink` (publisher confirms, persistent messages) and
//!   `amqp::consume`, on `lapin`.
//!
//! Both consumers run a [`Handler`] for each message: any `Fn(Delivery) -> impl Future`
//! whose error is `From<TxError>` and `Display`.
//! * `metrics`: relay counters and the publish-to-acknowledgement lag through the `metrics`
//!   facade (`tx_outbox_delivered_total`, `tx_outbox_send_failures_total`,
//!   `tx_outbox_parked_total`, `tx_outbox_lag_seconds`).
//!
//! Each relay round is a `tracing` span `tx_outbox.batch` (relay, table, partitions,
//! messages, delivered, failed).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod handler;
mod inbox;
mod message;
#[cfg(feature = "metrics")]
mod metrics;
mod outbox;
mod relay;
mod sink;
mod store;

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "nats")]
pub mod nats;

pub use handler::Handler;
pub use inbox::{Inbox, Received};
pub use message::{
    Delivery, Envelope, InvalidMessageId, KEY_HEADER, MAX_NAME_LEN, Message, MessageId,
};
pub use outbox::{
    DEFAULT_INBOX_TABLE, DEFAULT_OUTBOX_TABLE, FailedMessage, Outbox, OutboxDatabase, OutboxStats,
};
pub use relay::{Relay, RelayReport};
pub use sink::{Sink, SinkError};
