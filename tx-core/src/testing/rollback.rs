//! Test transactions that always roll back, whatever the test body returns.

use std::future::Future;

use crate::context::Context;
use crate::definition::{Propagation, TransactionDefinition};
use crate::error::TxError;
use crate::manager::ShareManager;
use crate::propagation::{self, ManagerRef};
use crate::status::TransactionStatus;
use crate::test_redirect::{ActiveGuard, in_test_transaction};

/// Runs `body` in a transaction on `manager` (a `TxPool`, or any other manager) that is always
/// rolled back, whatever the body returns, also when it panics or an assertion fails (the
/// panic then continues): a test leaves nothing behind.
///
/// Inside it, the scopes of the code under test on the same manager behave as they would
/// without the test transaction, on savepoints of it:
///
/// * a scope that would begin a transaction (`Required`, `Nested`, `RequiresNew` outside
///   every transaction; `RequiresNew` anywhere) runs on a savepoint, released where the
///   transaction would commit and rolled back to where it would roll back; its hooks run
///   then, in the commit or rollback order (`after_commit` when the scope would have
///   committed);
/// * a scope that would run without a transaction (`NotSupported` anywhere; `Supports` and
///   `Never` outside every transaction) runs on a savepoint that is always released, and
///   completes its hooks as a scope without a transaction does;
/// * joining (`Required`, `Supports`, `Mandatory` inside one of those transactions), `Nested`
///   inside one, and `Never` inside one (refused) are unchanged; `Mandatory` outside every
///   transaction fails with [`TxError::NoTransaction`], as it would in production.
///
/// Only scopes on `manager` are redirected: code that also writes through a second manager
/// (another pool) needs a test transaction on each, nested:
/// `rollback(&db, || rollback(&audit_db, || async { .. }))`.
///
/// Statements run directly in the body (on the manager's executor) run in the test
/// transaction: they see what the code under test wrote. Called inside a transaction of
/// `manager` (for instance inside another test transaction), it runs on a savepoint of it,
/// always rolled back to.
///
/// What a single transaction cannot reproduce: work of a `RequiresNew` scope is undone when a
/// scope around it rolls back (in production it stays committed), it sees the uncommitted
/// writes of the scope it suspends, and the isolation level, read-only flag and server-side
/// statement timeout of inner scopes are those of the test transaction. On PostgreSQL a
/// statement that fails directly in the body aborts the test transaction (run it inside a
/// transactional scope to go on). Work in a `tokio::spawn`ed task, and statements run by
/// `after_commit` and `after_completion` hooks (which run after their scope, outside every
/// transaction, as in production), are outside the test transaction and commit for real.
///
/// # Errors
///
/// Whatever the body returns, after the rollback; [`TxError::NestedNotSupported`] from a scope
/// inside it when the manager has no savepoints.
///
/// # Cancel safety
///
/// Dropping the future rolls the test transaction back, as a cancelled transactional call does.
///
/// ```
/// use tx_core::{Propagation, TransactionTemplate, TxError};
/// # use tx_core::testing::NoopManager;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let db = NoopManager::default(); // a TxPool in real code
/// let audit = TransactionTemplate::new(db.clone()).propagation(Propagation::RequiresNew);
/// tx_core::testing::rollback(&db, || async {
///     audit
///         .execute(|status| async move {
///             // A savepoint of the test transaction, not a transaction that would commit.
///             assert!(status.is_new_transaction());
///             Ok::<_, TxError>(())
///         })
///         .await?;
///     Ok::<_, TxError>(())
/// })
/// .await
/// .unwrap();
/// # }
/// ```
pub async fn rollback<M, T, E, F, Fut>(manager: &M, body: F) -> Result<T, E>
where
    M: ShareManager,
    E: From<TxError>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let key = manager.key();
    // Nested: a new transaction outside one, a savepoint inside one (or inside another test
    // transaction); either way its owner marks it rollback-only at the end.
    let definition = TransactionDefinition::default()
        .propagation(Propagation::Nested)
        .name("test transaction");
    let scoped = |status: TransactionStatus| async move {
        let _active = ActiveGuard::enter();
        let root = Context::current()
            .bound_scope(key)
            .cloned()
            .expect("a Nested scope binds its manager");
        // Marked before the body runs, so a panic or a dropped future rolls back too.
        status.set_rollback_only();
        in_test_transaction(key, root, body()).await
    };
    propagation::run(
        ManagerRef::Borrowed(manager),
        &definition,
        |_| true,
        scoped,
        None,
    )
    .await
}
