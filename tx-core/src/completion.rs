//! How a transaction ended, as synchronization hooks see it.

/// The outcome passed to `after_completion` hooks (Spring's `STATUS_COMMITTED`,
/// `STATUS_ROLLED_BACK`, `STATUS_UNKNOWN`).
///
/// ```
/// use tx_core::Completion;
/// assert_ne!(Completion::Committed, Completion::RolledBack);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Completion {
    /// The transaction committed.
    Committed,
    /// The transaction (or the savepoint its hooks belonged to) rolled back, or the scope
    /// without a transaction failed.
    RolledBack,
    /// The outcome is unknown: the connection was lost while `COMMIT` was in flight.
    Unknown,
}
