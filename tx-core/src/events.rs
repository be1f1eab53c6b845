//! Transactional events (placeholder, being written).
#![allow(missing_docs)]
pub enum TransactionPhase { BeforeCommit, AfterCommit, AfterRollback, AfterCompletion }
#[derive(Clone, Default)]
pub struct EventBus;
pub struct ListenerHandle;
