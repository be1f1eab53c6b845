//! Transactional events: [`EventBus`] and [`TransactionPhase`], Spring's
//! `ApplicationEventPublisher` with `@EventListener` and `@TransactionalEventListener`.
//!
//! Built on the synchronization mechanism: publishing inside a transaction registers one
//! [`TransactionSynchronization`] per event with the current scope, so an event follows
//! exactly the transaction a hook registered there would (RequiresNew, Nested, participants),
//! and its listeners run in the hook phases. The user guide (the order-created example, the
//! rules, failures, events vs hooks) is on [`EventBus`], the item rustdoc shows: this module
//! is private and its items are re-exported at the crate root.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use futures_util::FutureExt;

use crate::completion::Completion;
use crate::context::is_actual_transaction_active;
use crate::error::{BoxError, TxError};
use crate::manager::BoxFuture;
use crate::synchronization::{TransactionSynchronization, panic_message, register_synchronization};

/// When a transactional listener ([`EventBus::listen`]) runs, relative to the transaction the
/// event was published in (Spring's `TransactionPhase`).
///
/// ```
/// use tx_core::TransactionPhase;
/// assert_eq!(TransactionPhase::default(), TransactionPhase::AfterCommit);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TransactionPhase {
    /// Just before COMMIT, inside the transaction (statements still go into it), after the
    /// body returned `Ok`. An `Err` (or panic) rolls the transaction back and the committing
    /// call returns [`TxError::BeforeCommit`].
    BeforeCommit,
    /// After a successful COMMIT, outside the transaction. Failures are logged.
    #[default]
    AfterCommit,
    /// After ROLLBACK (also of a `Nested` savepoint the event was published in), outside the
    /// transaction. Failures are logged.
    AfterRollback,
    /// After COMMIT or ROLLBACK (or a commit whose outcome is unknown), after the
    /// `AfterCommit`/`AfterRollback` listeners of the same event. Failures are logged.
    AfterCompletion,
}

impl TransactionPhase {
    const ALL: [TransactionPhase; 4] = [
        TransactionPhase::BeforeCommit,
        TransactionPhase::AfterCommit,
        TransactionPhase::AfterRollback,
        TransactionPhase::AfterCompletion,
    ];

    const fn index(self) -> usize {
        self as usize
    }
}

/// An event as listeners of every type receive it before the downcast.
type AnyEvent = Arc<dyn Any + Send + Sync>;

/// A listener with its event type erased.
type ErasedListener = dyn Fn(AnyEvent) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync;

/// Which list of its event type a listener is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Phase(TransactionPhase),
}

#[derive(Clone)]
struct Entry {
    /// Registration sequence number (unique per bus; the tie-breaker among equal orders).
    id: u64,
    order: i32,
    fallback: bool,
    listener: Arc<ErasedListener>,
}

impl Entry {
    fn call(&self, event: &AnyEvent) -> BoxFuture<'static, Result<(), BoxError>> {
        (self.listener)(event.clone())
    }
}

/// Every listener of one event type, each list sorted by `(order, id)`. Immutable once
/// published in the registry: a change builds a new one.
#[derive(Clone)]
struct TypeListeners {
    event_type: &'static str,
    plain: Vec<Entry>,
    phased: [Vec<Entry>; 4],
}

impl TypeListeners {
    fn new(event_type: &'static str) -> TypeListeners {
        TypeListeners {
            event_type,
            plain: Vec::new(),
            phased: Default::default(),
        }
    }

    fn list(&self, phase: TransactionPhase) -> &[Entry] {
        &self.phased[phase.index()]
    }

    fn list_mut(&mut self, kind: Kind) -> &mut Vec<Entry> {
        match kind {
            Kind::Plain => &mut self.plain,
            Kind::Phase(p) => &mut self.phased[p.index()],
        }
    }

    fn has_transactional(&self) -> bool {
        self.phased.iter().any(|l| !l.is_empty())
    }

    fn is_empty(&self) -> bool {
        self.plain.is_empty() && !self.has_transactional()
    }

    fn sort(&mut self) {
        for list in std::iter::once(&mut self.plain).chain(self.phased.iter_mut()) {
            list.sort_by_key(|e| (e.order, e.id));
        }
    }
}

type Registry = HashMap<TypeId, Arc<TypeListeners>>;

struct Shared {
    /// Read lock-free by `publish`; replaced whole by writers.
    registry: ArcSwap<Registry>,
    /// Serializes writers (registration and handle adjustments are rare).
    write: Mutex<()>,
    next_id: AtomicU64,
}

impl Shared {
    /// Applies `change` to the listeners of `type_id` (creating them when `event_type` is
    /// given) and publishes the result.
    fn modify(
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

    fn snapshot(&self, type_id: TypeId) -> Option<Arc<TypeListeners>> {
        self.registry.load().get(&type_id).cloned()
    }
}

/// Publishes typed events to plain and transactional listeners (Spring's
/// `ApplicationEventPublisher` with `@EventListener` / `@TransactionalEventListener`).
///
/// Cheap to clone: clones share their listeners. Events are any `Send + Sync + 'static`
/// type, dispatched by type; `publish` takes no lock (one atomic load and a hash lookup), so
/// one bus can serve a whole application. A service publishes a typed event
/// ([`publish`](EventBus::publish)) and knows none of the code that reacts to it.
/// Listeners subscribe by event type:
///
/// - [`on`](EventBus::on): a *plain* listener, run at once by `publish` (awaited there, inside
///   the publisher's transaction if there is one);
/// - [`listen`](EventBus::listen): a *transactional* listener, run when the transaction the
///   event was published in reaches its [`TransactionPhase`]: just before COMMIT, after
///   COMMIT, after ROLLBACK, or after either.
///
/// # Example: the order-created event
///
/// Creating an order must send the delayed "cancel if unpaid" message, write the business log
/// and notify the user, but only once the order is really committed: a message sent from
/// inside the transaction would survive its rollback, and its consumer would look for an order
/// that does not exist. The order service publishes `OrderCreated`; the three side effects are
/// `AfterCommit` listeners it does not know about, and a fourth listener records orders that
/// were rolled back.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tx_core::{BoxError, EventBus, TransactionPhase, TransactionTemplate, TxError};
/// # use tx_core::testing::NoopManager;
/// # static JOURNAL: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
/// # fn journal(s: String) { JOURNAL.lock().unwrap().push(s) }
/// # fn take_journal() -> Vec<String> { std::mem::take(&mut *JOURNAL.lock().unwrap()) }
/// # mod mq { pub async fn send_delayed(topic: &str, key: &str, _d: std::time::Duration) -> Result<(), tx_core::BoxError> { super::journal(format!("mq {topic} {key}")); Ok(()) } }
/// # mod business_log { pub async fn write(line: String) -> Result<(), tx_core::BoxError> { super::journal(format!("log {line}")); Ok(()) } }
/// # mod notify { pub async fn member(id: u64, text: &str) -> Result<(), tx_core::BoxError> { super::journal(format!("notify {id}: {text}")); Ok(()) } }
/// # async fn insert_order(_sn: &str) -> Result<(), TxError> { journal("INSERT order".into()); Ok(()) }
///
/// /// The event: any `Send + Sync + 'static` type.
/// #[derive(Debug)]
/// struct OrderCreated {
///     order_sn: String,
///     member_id: u64,
/// }
///
/// /// Wiring, at start-up: who reacts to an order, and when.
/// fn order_listeners(bus: &EventBus) {
///     // The message that cancels the order if it is still unpaid in 30 minutes.
///     bus.listen(TransactionPhase::AfterCommit, |e: Arc<OrderCreated>| async move {
///         mq::send_delayed("order.cancel.delay", &e.order_sn, Duration::from_secs(30 * 60)).await
///     });
///     bus.listen(TransactionPhase::AfterCommit, |e: Arc<OrderCreated>| async move {
///         business_log::write(format!("order {} created", e.order_sn)).await
///     });
///     bus.listen(TransactionPhase::AfterCommit, |e: Arc<OrderCreated>| async move {
///         notify::member(e.member_id, "your order has been placed").await
///     });
///     bus.listen(TransactionPhase::AfterRollback, |e: Arc<OrderCreated>| async move {
///         business_log::write(format!("order {} rolled back", e.order_sn)).await
///     });
/// }
///
/// /// The order service: writes the order and publishes the event, nothing more.
/// async fn create_order(
///     template: &TransactionTemplate,
///     bus: &EventBus,
///     order_sn: &str,
///     member_id: u64,
///     pay_ok: bool,
/// ) -> Result<(), TxError> {
///     template
///         .execute(|_status| async move {
///             insert_order(order_sn).await?;
///             bus.publish(OrderCreated { order_sn: order_sn.to_owned(), member_id }).await?;
///             // Nothing has been sent yet: the listeners wait for the commit.
///             if !pay_ok {
///                 return Err(TxError::UnexpectedRollback); // any error rolls back
///             }
///             Ok(())
///         })
///         .await
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let template = TransactionTemplate::new(NoopManager::default()); // a TxPool in real code
/// let bus = EventBus::new();
/// order_listeners(&bus);
///
/// create_order(&template, &bus, "20260127001", 7, true).await.unwrap();
/// assert_eq!(take_journal(), [
///     "INSERT order",
///     // COMMIT, then:
///     "mq order.cancel.delay 20260127001",
///     "log order 20260127001 created",
///     "notify 7: your order has been placed",
/// ]);
///
/// assert!(create_order(&template, &bus, "20260127002", 8, false).await.is_err());
/// assert_eq!(take_journal(), ["INSERT order", "log order 20260127002 rolled back"]);
/// # }
/// ```
///
/// # Rules
///
/// - **Which transaction.** An event follows the transaction of the innermost scope it is
///   published in, like a hook registered there: inside a `RequiresNew` scope it follows that
///   new transaction, not the suspended outer one; inside a joined participant, the
///   transaction it joined; inside a `Nested` scope, the savepoint: if the savepoint is
///   released the event follows the enclosing transaction, if it is rolled back the event's
///   `AfterRollback` and `AfterCompletion` listeners run right then and its `AfterCommit`
///   listeners never do (Spring would still run them on the outer commit, although the
///   savepoint's writes were undone).
/// - **No transaction.** Transactional listeners need an actual transaction
///   ([`is_actual_transaction_active`](crate::is_actual_transaction_active)), exactly as
///   Spring's `TransactionalApplicationListenerSynchronization.register` requires both an
///   active synchronization and an actual transaction. So outside every scope, and also in a
///   `Supports`/`NotSupported`/`Never` scope running without a transaction (which does collect
///   plain hooks), a transactional listener is skipped (debug log on target `"tx"`) unless it
///   was given [`fallback_execution(true)`](ListenerHandle::fallback_execution); then it runs
///   at once, inside `publish`. There is no commit to wait for: the statements before
///   `publish` already ran in autocommit.
/// - **Order.** Listeners of one phase run one after the other, lowest
///   [`order`](ListenerHandle::order) first, in registration order among equal orders
///   (default order 0). Events run in the order they were published. Within `publish`: the
///   transactional listeners are attached to the transaction (or, without one, the fallback
///   listeners run, phase by phase), then the plain listeners run.
/// - **Snapshot.** `publish` takes the listeners registered for the event's type at that
///   moment; listeners added, removed or re-ordered later do not change what an event already
///   published will run.
/// - **Where listeners run.** Plain and `BeforeCommit` listeners run inside the transaction:
///   statements they send through a transaction-aware executor (`&TxPool`) are part of it.
///   `AfterCommit`, `AfterRollback` and `AfterCompletion` listeners run outside every
///   transaction (statements autocommit; open a new scope to write transactionally).
///
/// # Listener results and failures
///
/// Every listener, plain or transactional, is an `async` closure taking `Arc<Event>` whose
/// body returns either `()` (it cannot fail) or `Result<(), E>` for any error `E` that
/// converts into [`BoxError`]: your own error type, a driver's, `Box<dyn Error>`, a message
/// (see [`ListenerResult`]). A listener can move between phases unchanged.
///
/// ```
/// use std::sync::Arc;
/// use tx_core::{BoxError, EventBus, TransactionPhase};
///
/// struct OrderPaid { order_id: u64 }
/// #[derive(Debug, thiserror::Error)]
/// #[error("mail server down")]
/// struct MailError;
/// async fn send_receipt(_order: u64) -> Result<(), MailError> { Ok(()) }
///
/// let bus = EventBus::new();
/// // Cannot fail: the body is `()`.
/// bus.listen(TransactionPhase::AfterCommit, |e: Arc<OrderPaid>| async move {
///     println!("order {} paid", e.order_id);
/// });
/// // Fails with its own error type.
/// bus.listen(TransactionPhase::AfterCommit, |e: Arc<OrderPaid>| async move {
///     send_receipt(e.order_id).await
/// });
/// // A message is an error too (`Ok(())` alone names no error type: say which, once).
/// bus.listen(TransactionPhase::BeforeCommit, |e: Arc<OrderPaid>| async move {
///     if e.order_id == 0 {
///         return Err(BoxError::from("order 0 does not exist"));
///     }
///     Ok(())
/// });
/// ```
///
/// | listener | an `Err` | a panic |
/// |---|---|---|
/// | plain ([`on`](EventBus::on)) | stops there; `publish` returns it as [`TxError::Listener`] | propagates out of `publish` |
/// | `BeforeCommit` in a transaction | rolls the transaction back; the committing call returns [`TxError::BeforeCommit`] carrying it | the same, with the panic message |
/// | `BeforeCommit`, fallback execution | `publish` returns it as [`TxError::Listener`] | propagates out of `publish` |
/// | `AfterCommit`, `AfterRollback`, `AfterCompletion` | logged with `tracing` (target `"tx"`, level error); the next listener runs | the same |
///
/// Only what runs before the commit can fail it. A plain listener runs inside the
/// transaction, before its commit: when the publisher propagates its error with `?`, the
/// transaction rolls back (and the event's `AfterRollback` listeners see it, since the
/// transactional listeners were attached first). After COMMIT nothing can be undone, so
/// after-phase failures never turn a committed call into an `Err`, whether the listener ran
/// after a real commit or as a fallback.
///
/// `AfterCompletion` listeners run on commit, on rollback, and when the commit outcome is
/// unknown (a connection lost during COMMIT), where neither `AfterCommit` nor `AfterRollback`
/// runs.
///
/// # Events or plain hooks?
///
/// [`after_commit`](crate::after_commit), [`after_rollback`](crate::after_rollback) and
/// [`register_synchronization`](crate::register_synchronization) do the same job from inside
/// the function that does the work. The rule of thumb:
///
/// | | hooks (`after_commit(..)`) | events (`EventBus`) |
/// |---|---|---|
/// | coupling | the transactional function names every side effect | the function publishes a fact; listeners are wired elsewhere |
/// | adding a reaction | edit the function | add a listener |
/// | state | captures whatever the function has at hand, no type to declare | what the event type carries |
/// | fits | one or two side effects that belong to this function | several, growing or cross-module reactions; the same event published from several places |
///
/// Events add what hooks lack: listeners for `BeforeCommit` validation shared by every
/// publisher, ordering across independently written listeners, `fallback_execution` for code
/// that is called both with and without a transaction, and plain listeners for what must
/// happen synchronously. A hook, on the other hand, registered outside every scope fails with
/// [`TxError::NoTransaction`] rather than being skipped, which is what you want when running
/// without a transaction is a bug.
///
/// # Without a transaction
///
/// Plain listeners run; transactional ones only with `fallback_execution(true)`:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tx_core::{EventBus, TransactionPhase};
///
/// struct UserRegistered(&'static str);
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let bus = EventBus::new();
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let s = seen.clone();
/// // A listener is called once per event, so each call takes its own handle on `seen`.
/// bus.on(move |e: Arc<UserRegistered>| {
///     let s = s.clone();
///     async move { s.lock().unwrap().push(format!("plain {}", e.0)) }
/// });
/// let s = seen.clone();
/// bus.listen(TransactionPhase::AfterCommit, move |e: Arc<UserRegistered>| {
///     let s = s.clone();
///     async move { s.lock().unwrap().push(format!("after commit {}", e.0)) }
/// });
///
/// let s = seen.clone();
/// bus.listen(TransactionPhase::AfterCommit, move |e: Arc<UserRegistered>| {
///     let s = s.clone();
///     async move { s.lock().unwrap().push(format!("fallback {}", e.0)) }
/// })
/// .fallback_execution(true);
///
/// // Outside every transaction: the fallback listener runs at once, then the plain one; the
/// // other AfterCommit listener is skipped.
/// bus.publish(UserRegistered("ada")).await.unwrap();
/// assert_eq!(*seen.lock().unwrap(), ["fallback ada", "plain ada"]);
/// # }
/// ```
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

/// What a listener's future may return: `()` for a listener that cannot fail, or
/// `Result<(), E>` with any error that converts into [`BoxError`] (`Box<dyn Error>`, a
/// `&str` or `String` message, your own error type, ...).
///
/// Implemented for those two and nothing else (the trait is sealed); it only shows up in the
/// bounds of [`EventBus::listen`] and [`EventBus::on`].
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

fn erase<E, F, Fut>(listener: F) -> Arc<ErasedListener>
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
            bus: self.clone(),
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
    /// [`TransactionSynchronization`] per event); outside one, those with
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

/// Without a transaction: runs the listeners that asked for it, phase by phase.
async fn run_fallback(listeners: &TypeListeners, event: &AnyEvent) -> Result<(), TxError> {
    let mut skipped = 0usize;
    for phase in TransactionPhase::ALL {
        for entry in listeners.list(phase) {
            if !entry.fallback {
                skipped += 1;
                continue;
            }
            if phase == TransactionPhase::BeforeCommit {
                entry.call(event).await.map_err(TxError::Listener)?;
            } else {
                run_logged(entry, phase, listeners.event_type, event).await;
            }
        }
    }
    if skipped > 0 {
        tracing::debug!(
            target: "tx",
            "No transaction is active - skipping {skipped} transactional listener(s) of {}",
            listeners.event_type
        );
    }
    Ok(())
}

/// Runs an after-phase listener; its failure or panic is logged, never returned.
async fn run_logged(entry: &Entry, phase: TransactionPhase, event_type: &str, event: &AnyEvent) {
    match AssertUnwindSafe(async { entry.call(event).await })
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(
            target: "tx",
            "{phase:?} listener of {event_type} failed: {e}; ignored, the transaction outcome stands"
        ),
        Err(panic) => tracing::error!(
            target: "tx",
            "{phase:?} listener of {event_type} {}; ignored, the transaction outcome stands",
            panic_message(&*panic)
        ),
    }
}

/// One published event, waiting for its transaction to complete.
struct EventSynchronization {
    event: AnyEvent,
    listeners: Arc<TypeListeners>,
}

impl EventSynchronization {
    async fn run_phase(&self, phase: TransactionPhase) {
        for entry in self.listeners.list(phase) {
            run_logged(entry, phase, self.listeners.event_type, &self.event).await;
        }
    }
}

impl TransactionSynchronization for EventSynchronization {
    async fn before_commit(&self, _read_only: bool) -> Result<(), BoxError> {
        for entry in self.listeners.list(TransactionPhase::BeforeCommit) {
            if let Err(e) = entry.call(&self.event).await {
                tracing::debug!(
                    target: "tx",
                    "BeforeCommit listener of {} failed: {e}",
                    self.listeners.event_type
                );
                return Err(e);
            }
        }
        Ok(())
    }

    async fn after_commit(&self) {
        self.run_phase(TransactionPhase::AfterCommit).await;
    }

    async fn after_completion(&self, completion: Completion) {
        if completion == Completion::RolledBack {
            self.run_phase(TransactionPhase::AfterRollback).await;
        }
        self.run_phase(TransactionPhase::AfterCompletion).await;
    }
}

/// A registered listener: adjust it ([`order`](Self::order),
/// [`fallback_execution`](Self::fallback_execution)) or [`remove`](Self::remove) it.
///
/// Returned by [`EventBus::listen`] and [`EventBus::on`]. The settings live in the bus, so a
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
    bus: EventBus,
    type_id: TypeId,
    kind: Kind,
    id: u64,
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
        self.bus.shared.modify(self.type_id, None, |l| {
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
        self.bus.shared.modify(self.type_id, None, |l| {
            let list = l.list_mut(kind);
            let before = list.len();
            list.retain(|e| e.id != id);
            removed = list.len() != before;
        });
        removed
    }
}
