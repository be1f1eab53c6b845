//! Transactional events: [`EventBus`] and [`TransactionPhase`], Spring's
//! `ApplicationEventPublisher` with `@EventListener` and `@TransactionalEventListener`.
//!
//! Built on the synchronization mechanism: publishing inside a transaction registers one
//! [`TransactionSynchronization`](crate::TransactionSynchronization) per event with the current scope, so an event follows
//! exactly the transaction a hook registered there would (RequiresNew, Nested, participants),
//! and its listeners run in the hook phases. The user guide (the order-created example, the
//! rules, failures, events vs hooks) is on [`EventBus`] (`guide.md`), the item rustdoc
//! shows: this module is private and its items are re-exported at the crate root.
//!
//! Bottom-up, as Spring's event package: [`phase`] (when a listener runs), [`registry`]
//! (the listeners per event type), [`dispatch`] (running them for one event), [`bus`] (the
//! API).

mod bus;
mod dispatch;
mod phase;
mod registry;

pub use bus::EventBus;
pub use phase::TransactionPhase;
pub use registry::{ListenerHandle, ListenerResult};
