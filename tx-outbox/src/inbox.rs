//! [`Inbox`]: a consumer's handling of a message, exactly once per message id.

use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tx_sqlx::{TransactionManager, TransactionTemplate, TxError, TxPool};

use crate::outbox::{DEFAULT_INBOX_TABLE, DEFAULT_OUTBOX_TABLE, OutboxDatabase, open};
use crate::store::{Purge, Store, check_table_name, invalid};

/// The outcome of [`Inbox::receive`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a Duplicate must still be acknowledged to the broker"]
pub enum Received<T> {
    /// First delivery: the handler ran and its transaction committed.
    Handled(T),
    /// The message was already handled by this consumer; the handler did not run.
    Duplicate,
}

impl<T> Received<T> {
    /// True for [`Received::Duplicate`].
    #[must_use]
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Received::Duplicate)
    }
}

/// The idempotent-consumer side: records `(consumer, message_id)` in the same transaction as
/// the handler's writes, so a message delivered twice (brokers deliver at least once) is
/// handled once. Cheap to clone.
///
/// ```no_run
/// use tx_outbox::{Inbox, Received};
/// use tx_sqlx::{PgTxPool, TxError};
///
/// # async fn run(db: PgTxPool, message_id: &str) -> Result<(), TxError> {
/// let inbox = Inbox::new(db.clone());
/// inbox.install().await?;
/// let outcome = inbox
///     .receive("inventory", message_id, || async {
///         sqlx::query("update stock set reserved = reserved + 1 where item = 'book'")
///             .execute(&db)
///             .await?;
///         Ok::<_, TxError>(())
///     })
///     .await?;
/// if outcome.is_duplicate() { /* already handled: just acknowledge */ }
/// # Ok(()) }
/// ```
pub struct Inbox<DB: OutboxDatabase> {
    store: Arc<dyn Store>,
    manager: Arc<dyn TransactionManager>,
    _db: PhantomData<fn() -> DB>,
}

impl<DB: OutboxDatabase> Clone for Inbox<DB> {
    fn clone(&self) -> Self {
        Inbox {
            store: self.store.clone(),
            manager: self.manager.clone(),
            _db: PhantomData,
        }
    }
}

impl<DB: OutboxDatabase> std::fmt::Debug for Inbox<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").finish_non_exhaustive()
    }
}

impl<DB: OutboxDatabase> Inbox<DB> {
    /// The inbox in table [`DEFAULT_INBOX_TABLE`].
    #[must_use]
    pub fn new(db: TxPool<DB>) -> Self {
        Self::with_table(db, DEFAULT_INBOX_TABLE).expect("the default table name is valid")
    }

    /// The inbox in table `table`.
    ///
    /// # Errors
    /// The name is not 1 to 48 ASCII letters, digits and underscores.
    pub fn with_table(db: TxPool<DB>, table: &str) -> Result<Self, TxError> {
        check_table_name(table)?;
        let (store, manager) = open(db, DEFAULT_OUTBOX_TABLE, table);
        Ok(Inbox {
            store,
            manager,
            _db: PhantomData,
        })
    }

    /// Creates the inbox table if it does not exist (idempotent).
    ///
    /// # Errors
    /// The database refused a statement.
    ///
    /// # Cancel safety
    /// Idempotent: run it again.
    pub async fn install(&self) -> Result<(), TxError> {
        self.store.inbox_install().await
    }

    /// Runs `handler` in a transaction (propagation Required: it joins the caller's
    /// transaction on this pool, if any) that first records `(consumer, message_id)`. If this
    /// consumer already recorded the id, the handler does not run and the result is
    /// [`Received::Duplicate`]. Acknowledge the broker only after this returns `Ok`.
    ///
    /// Two deliveries of one message at once: the second waits for the first's transaction
    /// (a unique key), then is a duplicate if the first committed, or runs if it rolled back.
    ///
    /// # Errors
    /// The handler's error (its transaction is rolled back, the id is not recorded: a
    /// redelivery runs it again), or the engine's, through `E: From<TxError>`; an empty
    /// consumer or message id, or one longer than 191 bytes, is refused.
    ///
    /// # Cancel safety
    /// Dropping the future rolls the transaction back: nothing recorded, the message will be
    /// handled on redelivery.
    pub async fn receive<T, E, F, Fut>(
        &self,
        consumer: &str,
        message_id: impl Display,
        handler: F,
    ) -> Result<Received<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<TxError>,
    {
        let message_id = message_id.to_string();
        for (what, v) in [("consumer", consumer), ("message id", message_id.as_str())] {
            if v.is_empty() || v.len() > 191 {
                return Err(E::from(invalid(format!(
                    "Inbox::receive: the {what} must be 1 to 191 bytes long, got {} bytes",
                    v.len()
                ))));
            }
        }
        let mut handler = Some(handler);
        let store = &self.store;
        let message_id = &message_id;
        TransactionTemplate::new(self.manager.clone())
            .name("tx_outbox::Inbox::receive")
            .execute(move |_status| {
                let handler = handler.take();
                async move {
                    if !store.inbox_record(consumer, message_id).await? {
                        return Ok(Received::Duplicate);
                    }
                    let handler = handler.expect("the inbox's transaction body runs once");
                    handler().await.map(Received::Handled)
                }
            })
            .await
    }

    /// Handles `delivery` as `consumer` (see [`receive`](Self::receive)); true when its
    /// transaction committed or it was a duplicate, i.e. when the broker may be told it is
    /// done. A failure is logged: the consumer hands the message back for redelivery.
    #[cfg(any(feature = "nats", feature = "amqp"))]
    pub(crate) async fn handle<H: crate::Handler>(
        &self,
        consumer: &str,
        handler: &H,
        delivery: crate::Delivery,
    ) -> bool {
        let id = delivery.message_id.clone();
        match self
            .receive(consumer, &id, || handler.handle(delivery))
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(target: "tx_outbox", message_id = %id, error = %e,
                    "handler failed; the broker redelivers the message");
                false
            }
        }
    }

    /// Forgets records older than `older_than` (keep them longer than any redelivery can
    /// take); returns how many.
    ///
    /// # Errors
    /// The database's errors.
    ///
    /// # Cancel safety
    /// One statement: it either ran or not.
    pub async fn purge(&self, older_than: Duration) -> Result<u64, TxError> {
        self.store.purge(Purge::Inbox, older_than).await
    }
}
