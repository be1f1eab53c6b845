//! [`EventBus`]: registering listeners and publishing events.

use std::any::TypeId;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::dispatch::{EventSynchronization, run_fallback};
use super::phase::TransactionPhase;
use super::registry::{
    AnyEvent, Entry, ErasedListener, Kind, ListenerHandle, ListenerResult, Registry, Shared, erase,
};
use crate::context::is_actual_transaction_active;
use crate::error::TxError;
use crate::hook_registration::register_synchronization;

#[doc = include_str!("guide.md")]
#[derive(Clone)]
pub struct EventBus {
    shared: Arc<Shared>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new()
    }
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let registry = self.shared.registry.load();
        let mut map = f.debug_map();
        for l in registry.values() {
            let phases: Vec<usize> = l.phased.iter().map(Vec::len).collect();
            map.entry(
                &l.event_type,
                &format_args!("plain: {}, by phase: {phases:?}", l.plain.len()),
            );
        }
        map.finish()
    }
}

impl EventBus {
    /// A bus without listeners.
    #[must_use]
    pub fn new() -> EventBus {
        EventBus {
            shared: Arc::new(Shared {
                registry: ArcSwap::from_pointee(Registry::new()),
                write: Mutex::new(()),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    fn register<E: 'static>(&self, kind: Kind, listener: Arc<ErasedListener>) -> ListenerHandle {
        let type_id = TypeId::of::<E>();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared
            .modify(type_id, Some(std::any::type_name::<E>()), |l| {
                l.list_mut(kind).push(Entry {
                    id,
                    order: 0,
                    fallback: false,
                    listener,
                });
            });
        ListenerHandle {
            shared: self.shared.clone(),
            type_id,
            kind,
            id,
        }
    }

    /// Registers a transactional listener for events of type `E` (inferred from the
    /// closure's argument), run in `phase` of the transaction the event is published in
    /// (Spring's `@TransactionalEventListener(phase = ..)`).
    ///
    /// Published outside an actual transaction, the event skips this listener unless the
    /// returned handle sets [`fallback_execution(true)`](ListenerHandle::fallback_execution).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tx_core::{BoxError, EventBus, TransactionPhase, TransactionTemplate, TxError};
    /// # use tx_core::testing::NoopManager;
    /// struct Transfer { amount: i64 }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let bus = EventBus::new();
    /// // A validation every publisher of Transfer gets: its Err vetoes the commit.
    /// bus.listen(TransactionPhase::BeforeCommit, |t: Arc<Transfer>| async move {
    ///     if t.amount <= 0 {
    ///         return Err(BoxError::from("a transfer moves a positive amount"));
    ///     }
    ///     Ok(())
    /// });
    ///
    /// let template = TransactionTemplate::new(NoopManager::default());
    /// let r = template
    ///     .execute(|_| async { bus.publish(Transfer { amount: -5 }).await })
    ///     .await;
    /// assert!(matches!(r, Err(TxError::BeforeCommit(_))));
    /// # }
    /// ```
    pub fn listen<E, F, Fut>(&self, phase: TransactionPhase, listener: F) -> ListenerHandle
    where
        E: Send + Sync + 'static,
        F: Fn(Arc<E>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: ListenerResult,
    {
        self.register::<E>(Kind::Phase(phase), erase(listener))
    }

    /// Registers a plain listener for events of type `E` (Spring's `@EventListener`): `publish`
    /// runs it at once and awaits it, inside the publisher's transaction if there is one.
    /// Its `Err` is returned by `publish` (as [`TxError::Listener`]); its panic propagates.
    ///
    /// The handle's [`order`](ListenerHandle::order) applies among plain listeners;
    /// `fallback_execution` has no effect on them (they always run).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tx_core::{EventBus, TxError};
    ///
    /// struct Ping;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let bus = EventBus::new();
    /// bus.on(|_: Arc<Ping>| async { Err::<(), _>("nobody home") });
    /// let r = bus.publish(Ping).await;
    /// assert!(matches!(r, Err(TxError::Listener(e)) if e.to_string() == "nobody home"));
    /// # }
    /// ```
    pub fn on<E, F, Fut>(&self, listener: F) -> ListenerHandle
    where
        E: Send + Sync + 'static,
        F: Fn(Arc<E>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: ListenerResult,
    {
        self.register::<E>(Kind::Plain, erase(listener))
    }

    /// Publishes `event` to the listeners of its type (see [`EventBus`] for when each runs).
    ///
    /// Inside an actual transaction, the transactional listeners are attached to it (one
    /// [`TransactionSynchronization`](crate::TransactionSynchronization) per event); outside one, those with
    /// `fallback_execution(true)` run now and the others are skipped. Then the plain
    /// listeners run, in order.
    ///
    /// # Errors
    ///
    /// The first `Err` of a plain listener, or of a `BeforeCommit` listener run as a fallback,
    /// as [`TxError::Listener`] carrying the listener's error; the listeners after it do
    /// not run. Panics of those listeners propagate.
    ///
    /// # Cancel safety
    ///
    /// Dropped before it completes, the transactional listeners may already be attached to
    /// the transaction (they then run with it), and the plain listeners after the one in
    /// progress do not run. In a transaction the publisher's scope usually goes with it, so
    /// the transaction rolls back and the event's `AfterRollback` listeners see that.
    pub async fn publish<E: Send + Sync + 'static>(&self, event: E) -> Result<(), TxError> {
        let Some(listeners) = self.shared.snapshot(TypeId::of::<E>()) else {
            return Ok(());
        };
        let event: AnyEvent = Arc::new(event);
        if listeners.has_transactional() {
            let attached = is_actual_transaction_active()
                && register_synchronization(EventSynchronization {
                    event: event.clone(),
                    listeners: listeners.clone(),
                })
                .is_ok();
            if !attached {
                run_fallback(&listeners, &event).await?;
            }
        }
        for entry in &listeners.plain {
            entry.call(&event).await.map_err(TxError::Listener)?;
        }
        Ok(())
    }
}
