//! When a transactional listener runs, relative to the transaction its event was published in.

/// When a transactional listener ([`EventBus::listen`](crate::EventBus::listen)) runs, relative to the transaction the
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
    /// call returns [`TxError::BeforeCommit`](crate::TxError::BeforeCommit).
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
    pub(super) const ALL: [TransactionPhase; 4] = [
        TransactionPhase::BeforeCommit,
        TransactionPhase::AfterCommit,
        TransactionPhase::AfterRollback,
        TransactionPhase::AfterCompletion,
    ];

    pub(super) const fn index(self) -> usize {
        self as usize
    }
}
