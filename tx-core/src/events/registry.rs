//! The listener registry: listeners per event type, plain and per phase, in their order;
//! swapped whole on every change, so publishing reads it without a lock. A [`ListenerHandle`]
//! adjusts or removes its entry.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use super::phase::TransactionPhase;
use crate::error::BoxError;
use crate::manager::BoxFuture;

/// An event as listeners of every type receive it before the downcast.
pub(super) type AnyEvent = Arc<dyn Any + Send + Sync>;

/// A listener with its event type erased.
pub(super) type ErasedListener =
    dyn Fn(AnyEvent) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync;

/// Which list of its event type a listener is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Plain,
    Phase(TransactionPhase),
}

#[derive(Clone)]
pub(super) struct Entry {
    /// Registration sequence number (unique per bus; the tie-breaker among equal orders).
    pub(super) id: u64,
    pub(super) order: i32,
    pub(super) fallback: bool,
    pub(super) listener: Arc<ErasedListener>,
}

impl Entry {
    pub(super) fn call(&self, event: &AnyEvent) -> BoxFuture<'static, Result<(), BoxError>> {
        (self.listener)(event.clone())
    }
}

/// Every listener of one event type, each list sorted by `(order, id)`. Immutable once
/// published in the registry: a change builds a new one.
#[derive(Clone)]
pub(super) struct TypeListeners {
    pub(super) event_type: &'static str,
    pub(super) plain: Vec<Entry>,
    pub(super) phased: [Vec<Entry>; 4],
}

impl TypeListeners {
    pub(super) fn new(event_type: &'static str) -> TypeListeners {
        TypeListeners {
            event_type,
            plain: Vec::new(),
            phased: Default::default(),
        }
    }

    pub(super) fn list(&self, phase: TransactionPhase) -> &[Entry] {
        &self.phased[phase.index()]
    }

    pub(super) fn list_mut(&mut self, kind: Kind) -> &mut Vec<Entry> {
        match kind {
            Kind::Plain => &mut self.plain,
            Kind::Phase(p) => &mut self.phased[p.index()],
        }
    }

    pub(super) fn has_transactional(&self) -> bool {
        self.phased.iter().any(|l| !l.is_empty())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.plain.is_empty() && !self.has_transactional()
    }

    pub(super) fn sort(&mut self) {
        for list in std::iter::once(&mut self.plain).chain(self.phased.iter_mut()) {
            list.sort_by_key(|e| (e.order, e.id));
        }
    }
}

pub(super) type Registry = HashMap<TypeId, Arc<TypeListeners>>;

pub(super) struct Shared {
    /// Read lock-free by `publish`; replaced whole by writers.
    pub(super) registry: ArcSwap<Registry>,
    /// Serializes writers (registration and handle adjustments are rare).
    pub(super) write: Mutex<()>,
    pub(super) next_id: AtomicU64,
}

impl Shared {
    /// Applies `change` to the listeners of `type_id` (creating them when `event_type` is
    /// given) and publishes the result.
    pub(super) fn modify(
        &self,
        type_id: TypeId,
        event_type: Option<&'static str>,
        change: impl FnOnce(&mut TypeListeners),
    ) {
        let _writer = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.registry.load_full();
        let mut listeners = match (current.get(&type_id), event_type) {
            (Some(l), _) => TypeListeners::clone(l),
            (None, Some(name)) => TypeListeners::new(name),
            (None, None) => return,
        };
        change(&mut listeners);
        listeners.sort();
        let mut registry = Registry::clone(&current);
        if listeners.is_empty() {
            registry.remove(&type_id);
        } else {
            registry.insert(type_id, Arc::new(listeners));
        }
        self.registry.store(Arc::new(registry));
    }

    pub(super) fn snapshot(&self, type_id: TypeId) -> Option<Arc<TypeListeners>> {
        self.registry.load().get(&type_id).cloned()
    }
}

/// What a listener's future may return: `()` for a listener that cannot fail, or
/// `Result<(), E>` with any error that converts into [`BoxError`] (`Box<dyn Error>`, a
/// `&str` or `String` message, your own error type, ...).
///
/// Implemented for those two and nothing else (the trait is sealed); it only shows up in the
/// bounds of [`EventBus::listen`](crate::EventBus::listen) and [`EventBus::on`](crate::EventBus::on).
///
/// A body that returns `Ok(())` on every path names no error type, which Rust cannot infer:
/// return `()` instead, or spell the type once (`Ok::<_, BoxError>(())`).
pub trait ListenerResult: sealed::Sealed {
    /// The result as the bus handles it.
    #[doc(hidden)]
    fn into_result(self) -> Result<(), BoxError>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for () {}
    impl<E> Sealed for Result<(), E> {}
}

impl ListenerResult for () {
    fn into_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<E: Into<BoxError>> ListenerResult for Result<(), E> {
    fn into_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

pub(super) fn erase<E, F, Fut>(listener: F) -> Arc<ErasedListener>
where
    E: Send + Sync + 'static,
    F: Fn(Arc<E>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: ListenerResult,
{
    Arc::new(
        move |event: AnyEvent| -> BoxFuture<'static, Result<(), BoxError>> {
            match event.downcast::<E>() {
                Ok(event) => {
                    // Called here, not inside the future: a listener that panics before
                    // returning its future panics in the phase that called it.
                    let fut = listener(event);
                    Box::pin(async move { fut.await.into_result() })
                }
                // Unreachable: listeners are looked up by the event's TypeId.
                Err(_) => Box::pin(async { Ok(()) }),
            }
        },
    )
}

/// A registered listener: adjust it ([`order`](Self::order),
/// [`fallback_execution`](Self::fallback_execution)) or [`remove`](Self::remove) it.
///
/// Returned by [`EventBus::listen`](crate::EventBus::listen) and [`EventBus::on`](crate::EventBus::on). The settings live in the bus, so a
/// handle adjusts the listener wherever the bus is shared; dropping the handle leaves the
/// listener registered. Changes apply to events published afterwards.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tx_core::{EventBus, TransactionPhase};
///
/// struct Tick;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let bus = EventBus::new();
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// for name in ["a", "b", "c"] {
///     let s = seen.clone();
///     let handle = bus.listen(TransactionPhase::AfterCommit, move |_: Arc<Tick>| {
///         let s = s.clone();
///         async move { s.lock().unwrap().push(name) }
///     });
///     // Outside a transaction only fallback listeners run; "c" goes first.
///     let handle = handle.fallback_execution(true);
///     if name == "c" {
///         handle.order(-1);
///     }
/// }
/// bus.publish(Tick).await.unwrap();
/// assert_eq!(*seen.lock().unwrap(), ["c", "a", "b"]);
/// # }
/// ```
#[derive(Clone)]
pub struct ListenerHandle {
    pub(super) shared: Arc<Shared>,
    pub(super) type_id: TypeId,
    pub(super) kind: Kind,
    pub(super) id: u64,
}

impl std::fmt::Debug for ListenerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerHandle")
            .field("phase", &self.phase())
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ListenerHandle {
    fn adjust(&self, change: impl FnOnce(&mut Entry)) {
        let (kind, id) = (self.kind, self.id);
        self.shared.modify(self.type_id, None, |l| {
            if let Some(entry) = l.list_mut(kind).iter_mut().find(|e| e.id == id) {
                change(entry);
            }
        });
    }

    /// Sets the listener's order among the listeners of its phase (or among plain listeners):
    /// lower runs first; equal orders run in registration order. Default 0.
    pub fn order(self, order: i32) -> Self {
        self.adjust(|e| e.order = order);
        self
    }

    /// Whether a transactional listener runs, at once, for events published outside an
    /// actual transaction (Spring's `fallbackExecution`). Default `false`: it is skipped.
    /// No effect on a plain listener, which always runs.
    pub fn fallback_execution(self, fallback: bool) -> Self {
        self.adjust(|e| e.fallback = fallback);
        self
    }

    /// The phase of a transactional listener; `None` for a plain one.
    #[must_use]
    pub fn phase(&self) -> Option<TransactionPhase> {
        match self.kind {
            Kind::Plain => None,
            Kind::Phase(p) => Some(p),
        }
    }

    /// Unregisters the listener; events published afterwards no longer reach it. Returns
    /// whether it was still registered.
    pub fn remove(self) -> bool {
        let (kind, id) = (self.kind, self.id);
        let mut removed = false;
        self.shared.modify(self.type_id, None, |l| {
            let list = l.list_mut(kind);
            let before = list.len();
            list.retain(|e| e.id != id);
            removed = list.len() != before;
        });
        removed
    }
}
