//! The `LISTEN` side of `publish`'s `NOTIFY` (PostgreSQL only): wakes an idle relay.

use std::time::Duration;

use futures_util::future::BoxFuture;
use tx_sqlx::{TxError, TxPool};

use super::contract::Listener;

/// A backend's notification listener, if it has one.
pub(super) trait ListenerFor: sqlx::Database {
    /// A listener on `channel`; `None` on backends without notifications, whose relays poll.
    fn listener_for<'a>(
        _db: &'a TxPool<Self>,
        _channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn Listener>>, TxError>> {
        Box::pin(async { Ok(None) })
    }
}

pub(super) async fn listener_for<DB: ListenerFor>(
    db: &TxPool<DB>,
    channel: &str,
) -> Result<Option<Box<dyn Listener>>, TxError> {
    DB::listener_for(db, channel).await
}

impl ListenerFor for sqlx::MySql {}

impl ListenerFor for sqlx::Sqlite {}

impl ListenerFor for sqlx::Postgres {
    fn listener_for<'a>(
        db: &'a TxPool<Self>,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn Listener>>, TxError>> {
        Box::pin(async move {
            let mut l = sqlx::postgres::PgListener::connect_with(db.pool()).await?;
            l.listen(channel).await?;
            Ok(Some(Box::new(PgWake(l)) as Box<dyn Listener>))
        })
    }
}

struct PgWake(sqlx::postgres::PgListener);

impl Listener for PgWake {
    fn wait(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match self.0.recv().await {
                // Fold a burst of notifications into one wake-up.
                Ok(_) => while self.0.next_buffered().is_some() {},
                Err(e) => {
                    // `recv` reconnects on its next call; the poll interval covers the gap.
                    tracing::debug!(target: "tx_outbox", error = %e, "LISTEN connection lost");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        })
    }
}
