//! [`Outbox`]: messages written in the business transaction.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tx_sqlx::{TransactionManager, TxError, TxPool};

use crate::message::{Message, MessageId, from_millis};
use crate::store::{Dialect, Purge, Sql, SqlStore, Store, check_table_name, invalid, partition_of};

/// The default table of an outbox.
pub const DEFAULT_OUTBOX_TABLE: &str = "tx_outbox";
/// The default table of an inbox.
pub const DEFAULT_INBOX_TABLE: &str = "tx_inbox";

mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::Postgres {}
    impl Sealed for sqlx::MySql {}
    impl Sealed for sqlx::Sqlite {}
}

/// The databases an outbox and an inbox run on: PostgreSQL, MySQL/MariaDB and SQLite.
pub trait OutboxDatabase: sqlx::Database + sealed::Sealed {}
impl OutboxDatabase for sqlx::Postgres {}
impl OutboxDatabase for sqlx::MySql {}
impl OutboxDatabase for sqlx::Sqlite {}

/// The store and the transaction manager behind a pool, chosen by its database.
pub(crate) fn open<DB: OutboxDatabase>(db: TxPool<DB>, table: &str, inbox: &str) -> Opened {
    let any: Box<dyn Any> = Box::new(db);
    let any = match open_as::<sqlx::Postgres>(any, Dialect::Postgres, table, inbox) {
        Ok(opened) => return opened,
        Err(other) => other,
    };
    let any = match open_as::<sqlx::MySql>(any, Dialect::MySql, table, inbox) {
        Ok(opened) => return opened,
        Err(other) => other,
    };
    match open_as::<sqlx::Sqlite>(any, Dialect::Sqlite, table, inbox) {
        Ok(opened) => opened,
        Err(_) => unreachable!("OutboxDatabase is sealed to the three backends"),
    }
}

type Opened = (Arc<dyn Store>, Arc<dyn TransactionManager>);

/// [`open`] for the pool in `any` if it is a pool of `D`; `any` back otherwise.
fn open_as<D: sqlx::Database>(
    any: Box<dyn Any>,
    dialect: Dialect,
    table: &str,
    inbox: &str,
) -> Result<Opened, Box<dyn Any>>
where
    SqlStore<D>: Store,
    TxPool<D>: TransactionManager,
{
    let db = any.downcast::<TxPool<D>>()?;
    let m = Arc::new((*db).clone());
    let s = SqlStore::new(*db, Sql::new(dialect, table, inbox));
    Ok((Arc::new(s), m))
}

/// The transactional outbox: [`publish`](Outbox::publish) writes a message as a row in the
/// transaction bound to the pool in the current task, so the message exists if and only if
/// that transaction commits; a [`Relay`](crate::Relay) delivers committed rows afterwards.
///
/// Cheap to clone (an `Arc`); every clone is the same outbox.
///
/// ```no_run
/// use tx_outbox::{Message, Outbox};
/// use tx_sqlx::{PgTxPool, TransactionTemplate, TxError};
///
/// # async fn run() -> Result<(), TxError> {
/// let db = PgTxPool::new(sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?);
/// let outbox = Outbox::new(db.clone());
/// outbox.install().await?;
///
/// TransactionTemplate::new(db.clone())
///     .execute(|_| {
///         let (db, outbox) = (db.clone(), outbox.clone());
///         async move {
///             sqlx::query("update items set stock = stock - 1 where id = 1").execute(&db).await?;
///             outbox.publish(Message::new("stock.changed", b"1".to_vec()).key("item-1")).await?;
///             Ok::<_, TxError>(())
///         }
///     })
///     .await?;
/// # Ok(()) }
/// ```
pub struct Outbox<DB: OutboxDatabase> {
    pub(crate) store: Arc<dyn Store>,
    _db: PhantomData<fn() -> DB>,
}

impl<DB: OutboxDatabase> Clone for Outbox<DB> {
    fn clone(&self) -> Self {
        Outbox {
            store: self.store.clone(),
            _db: PhantomData,
        }
    }
}

impl<DB: OutboxDatabase> fmt::Debug for Outbox<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("table", &self.store.table())
            .finish()
    }
}

impl<DB: OutboxDatabase> Outbox<DB> {
    /// The outbox in table [`DEFAULT_OUTBOX_TABLE`] (and its `_partitions` companion).
    #[must_use]
    pub fn new(db: TxPool<DB>) -> Self {
        Self::with_table(db, DEFAULT_OUTBOX_TABLE).expect("the default table name is valid")
    }

    /// The outbox in table `table`: several outboxes can share a database.
    ///
    /// ```
    /// # async fn run() -> Result<(), tx_sqlx::TxError> {
    /// let db = tx_sqlx::SqliteTxPool::new(sqlx::SqlitePool::connect("sqlite::memory:").await?);
    /// assert!(tx_outbox::Outbox::with_table(db.clone(), "billing_outbox").is_ok());
    /// assert!(tx_outbox::Outbox::with_table(db, "bad name; drop").is_err());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The name is not 1 to 48 ASCII letters, digits and underscores.
    pub fn with_table(db: TxPool<DB>, table: &str) -> Result<Self, TxError> {
        check_table_name(table)?;
        let (store, _) = open(db, table, DEFAULT_INBOX_TABLE);
        Ok(Outbox {
            store,
            _db: PhantomData,
        })
    }

    /// The table the messages are in.
    #[must_use]
    pub fn table(&self) -> &str {
        self.store.table()
    }

    /// Creates the outbox's tables and indexes if they do not exist (idempotent; concurrent
    /// calls are serialized). Run it at start-up, outside any transaction, or put the
    /// statements of the crate documentation's "Schema" section in your own migrations.
    ///
    /// # Errors
    /// The database refused a statement (e.g. no `CREATE` privilege).
    ///
    /// # Cancel safety
    /// Each statement is idempotent: a cancelled install can simply be run again.
    pub async fn install(&self) -> Result<(), TxError> {
        self.store.install().await
    }

    /// Writes `message` on the transaction bound to this outbox's pool in the current task
    /// and returns its id. It is delivered only if that transaction commits: inside a
    /// `Nested` scope that rolls back, the message is gone with the savepoint; inside
    /// `RequiresNew`, it follows the inner transaction. On PostgreSQL it also queues a
    /// `NOTIFY` (sent at commit) that wakes the relays.
    ///
    /// # Errors
    /// * [`TxError::NoTransaction`] outside a transaction on this pool (also in a
    ///   `Supports`/`NotSupported` scope without one): nothing is ever sent for work that
    ///   did not commit, so there is no autocommit fallback.
    /// * An invalid message (empty topic, topic or key longer than 255 bytes) or a read-only
    ///   transaction: an error saying so.
    /// * The database's own errors (e.g. the table is missing: run [`install`](Self::install)).
    ///
    /// # Cancel safety
    /// Dropping the future may leave the row written or not; the enclosing transaction then
    /// decides, as for any statement.
    pub async fn publish(&self, message: Message) -> Result<MessageId, TxError> {
        if let Some(why) = message.invalid() {
            return Err(invalid(format!("cannot publish this message: {why}")));
        }
        let id = MessageId::new();
        let part = partition_of(message.key.as_deref());
        self.store.insert(&message, id, part).await?;
        Ok(id)
    }

    /// How much work is waiting.
    ///
    /// # Errors
    /// The database's errors.
    ///
    /// # Cancel safety
    /// Read-only: safe to cancel.
    pub async fn stats(&self) -> Result<OutboxStats, TxError> {
        let s = self.store.stats().await?;
        Ok(OutboxStats {
            pending: u64::try_from(s.pending).unwrap_or(0),
            failed: u64::try_from(s.failed).unwrap_or(0),
            oldest_pending_age: s.oldest_pending_ms.map(|t| {
                Duration::from_millis(u64::try_from(s.now_ms.saturating_sub(t)).unwrap_or(0))
            }),
        })
    }

    /// Up to `limit` messages parked after `max_attempts` failed sends, oldest first.
    ///
    /// # Errors
    /// The database's errors.
    ///
    /// # Cancel safety
    /// Read-only: safe to cancel.
    pub async fn failed(&self, limit: usize) -> Result<Vec<FailedMessage>, TxError> {
        let rows = self.store.failed(limit).await?;
        Ok(rows
            .into_iter()
            .map(|r| FailedMessage {
                id: r.message_id.parse().unwrap_or(MessageId::NIL),
                raw_id: r.message_id,
                topic: r.topic,
                key: r.key,
                payload: r.payload,
                attempts: u32::try_from(r.attempts).unwrap_or(0),
                last_error: r.last_error.unwrap_or_default(),
                created_at: from_millis(r.created_ms),
            })
            .collect())
    }

    /// Puts a parked message back to pending (attempts reset); `false` when no parked
    /// message has this id. It is sent after whatever of its key was delivered meanwhile.
    /// Runs on the transaction bound to the pool, if any.
    ///
    /// # Errors
    /// The database's errors.
    ///
    /// # Cancel safety
    /// One statement: it either ran or not.
    pub async fn retry_failed(&self, id: MessageId) -> Result<bool, TxError> {
        self.store.retry_failed(id).await
    }

    /// Deletes delivered messages older than `older_than` (for relays that mark rather than
    /// delete); returns how many.
    ///
    /// # Errors
    /// The database's errors.
    ///
    /// # Cancel safety
    /// One statement: it either ran or not.
    pub async fn purge_delivered(&self, older_than: Duration) -> Result<u64, TxError> {
        self.store.purge(Purge::Delivered, older_than).await
    }
}

/// What [`Outbox::stats`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxStats {
    /// Committed messages not delivered yet (including ones waiting for a retry).
    pub pending: u64,
    /// Messages parked after `max_attempts` failed sends.
    pub failed: u64,
    /// How long the oldest pending message has waited (database clock).
    pub oldest_pending_age: Option<Duration>,
}

/// A message parked after `max_attempts` failed sends ([`Outbox::failed`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FailedMessage {
    /// Its id (the nil UUID if the stored id is not a UUID: a row written by hand; see
    /// `raw_id`).
    pub id: MessageId,
    /// The stored id text.
    pub raw_id: String,
    /// Its topic.
    pub topic: String,
    /// Its ordering key.
    pub key: Option<String>,
    /// Its payload.
    pub payload: Vec<u8>,
    /// How many sends failed.
    pub attempts: u32,
    /// The last send error.
    pub last_error: String,
    /// When it was published.
    pub created_at: SystemTime,
}
