//! What a transactional scope asks for: propagation, isolation, timeout, read-only, name.

use std::borrow::Cow;
use std::time::Duration;

/// How a scope relates to a transaction that may already be running (Spring's propagation).
///
/// | behaviour | a transaction exists | none exists |
/// |---|---|---|
/// | `Required` | join it | begin one |
/// | `RequiresNew` | suspend it, begin an independent one | begin one |
/// | `Nested` | savepoint in it | begin one |
/// | `Supports` | join it | run without one |
/// | `NotSupported` | suspend it, run without one | run without one |
/// | `Mandatory` | join it | [`TxError::NoTransaction`](crate::TxError::NoTransaction) |
/// | `Never` | [`TxError::ExistingTransaction`](crate::TxError::ExistingTransaction) | run without one |
///
/// ```
/// use tx_core::Propagation;
/// assert_eq!(Propagation::default(), Propagation::Required);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Propagation {
    /// Join the current transaction, or begin one.
    #[default]
    Required,
    /// Always begin an independent transaction on another connection, suspending the current.
    RequiresNew,
    /// A savepoint inside the current transaction, or a new transaction.
    Nested,
    /// Join the current transaction, or run without one.
    Supports,
    /// Suspend the current transaction and run without one.
    NotSupported,
    /// Join the current transaction; fail with `NoTransaction` when there is none.
    Mandatory,
    /// Run without a transaction; fail with `ExistingTransaction` inside one.
    Never,
}

impl Propagation {
    /// Spring's name for it (`REQUIRES_NEW`), as used in logs.
    #[must_use]
    pub const fn spring_name(self) -> &'static str {
        match self {
            Propagation::Required => "PROPAGATION_REQUIRED",
            Propagation::RequiresNew => "PROPAGATION_REQUIRES_NEW",
            Propagation::Nested => "PROPAGATION_NESTED",
            Propagation::Supports => "PROPAGATION_SUPPORTS",
            Propagation::NotSupported => "PROPAGATION_NOT_SUPPORTED",
            Propagation::Mandatory => "PROPAGATION_MANDATORY",
            Propagation::Never => "PROPAGATION_NEVER",
        }
    }
}

/// The isolation level a new transaction begins with. Participants run with their owner's.
///
/// ```
/// use tx_core::Isolation;
/// assert_eq!(Isolation::default(), Isolation::Default);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Isolation {
    /// The database's default level (READ COMMITTED on PostgreSQL, REPEATABLE READ on MySQL).
    #[default]
    Default,
    /// `READ UNCOMMITTED`.
    ReadUncommitted,
    /// `READ COMMITTED`.
    ReadCommitted,
    /// `REPEATABLE READ`.
    RepeatableRead,
    /// `SERIALIZABLE`.
    Serializable,
}

impl Isolation {
    /// The SQL spelling (`REPEATABLE READ`), `None` for `Default`.
    #[must_use]
    pub const fn sql(self) -> Option<&'static str> {
        match self {
            Isolation::Default => None,
            Isolation::ReadUncommitted => Some("READ UNCOMMITTED"),
            Isolation::ReadCommitted => Some("READ COMMITTED"),
            Isolation::RepeatableRead => Some("REPEATABLE READ"),
            Isolation::Serializable => Some("SERIALIZABLE"),
        }
    }

    /// Spring's name for it (`ISOLATION_SERIALIZABLE`), as used in logs.
    #[must_use]
    pub const fn spring_name(self) -> &'static str {
        match self {
            Isolation::Default => "ISOLATION_DEFAULT",
            Isolation::ReadUncommitted => "ISOLATION_READ_UNCOMMITTED",
            Isolation::ReadCommitted => "ISOLATION_READ_COMMITTED",
            Isolation::RepeatableRead => "ISOLATION_REPEATABLE_READ",
            Isolation::Serializable => "ISOLATION_SERIALIZABLE",
        }
    }
}

/// The attributes of a transactional scope (Spring's `TransactionDefinition`).
///
/// ```
/// use std::time::Duration;
/// use tx_core::{Isolation, Propagation, TransactionDefinition};
///
/// let def = TransactionDefinition::default()
///     .propagation(Propagation::RequiresNew)
///     .isolation(Isolation::Serializable)
///     .timeout(Duration::from_secs(5))
///     .read_only(true)
///     .name("billing::charge");
/// assert_eq!(def.get_propagation(), Propagation::RequiresNew);
/// assert_eq!(def.get_name(), "billing::charge");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[must_use = "a TransactionDefinition does nothing until it is given to a TransactionTemplate"]
pub struct TransactionDefinition {
    propagation: Propagation,
    isolation: Isolation,
    timeout: Option<Duration>,
    read_only: bool,
    name: Cow<'static, str>,
}

impl TransactionDefinition {
    /// A definition built at compile time (used by `#[transactional]`).
    #[doc(hidden)]
    pub const fn __const(
        propagation: Propagation,
        isolation: Isolation,
        timeout: Option<Duration>,
        read_only: bool,
        name: &'static str,
    ) -> Self {
        TransactionDefinition {
            propagation,
            isolation,
            timeout,
            read_only,
            name: Cow::Borrowed(name),
        }
    }

    /// Sets the propagation behaviour (default `Required`).
    pub fn propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = propagation;
        self
    }

    /// Sets the isolation level of a new transaction (default `Default`).
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// Sets the deadline, counted from the start of a new transaction. Ignored by participants.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Marks a new transaction read-only (default `false`).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Names the transaction for logs and [`TransactionStatus::name`](crate::TransactionStatus::name).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The propagation behaviour.
    #[must_use]
    pub fn get_propagation(&self) -> Propagation {
        self.propagation
    }

    /// The isolation level.
    #[must_use]
    pub fn get_isolation(&self) -> Isolation {
        self.isolation
    }

    /// The timeout, if any.
    #[must_use]
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Whether a new transaction is read-only.
    #[must_use]
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub(crate) fn name_cow(&self) -> &Cow<'static, str> {
        &self.name
    }

    /// The name (empty when none was given).
    #[must_use]
    pub fn get_name(&self) -> &str {
        &self.name
    }
}
