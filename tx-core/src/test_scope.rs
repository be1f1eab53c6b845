//! Test transactions: a test body runs in one transaction that is always rolled back, and
//! the scopes of the code under test that would begin, or suspend, a transaction of that
//! manager take savepoints of it instead, so nothing they write escapes the test.
//!
//! Inside the test transaction the code under test behaves as it would outside any
//! transaction: a `Required` (or `Nested`, or `RequiresNew`) scope is a new "transaction",
//! emulated by a savepoint that is released when the scope would commit (its hooks run then:
//! `before_commit`, `before_completion`, RELEASE, `after_commit`, `after_completion`) and rolled
//! back to when it would roll back. A `RequiresNew` inside such a scope gets a savepoint of its
//! own, completed the same way; a `NotSupported` (or a `Supports`/`Never` scope outside every
//! emulated transaction) runs on a savepoint that is always released, as autocommit would keep
//! its statements, and completes its hooks as a scope without a transaction does. `Mandatory`
//! outside every emulated transaction fails with [`TxError::NoTransaction`], as in production.
//!
//! This module only decides ([`redirect`]); the engine's savepoint scope runs the stand-ins
//! ([`SavepointCompletion`]). The engine asks at the start of every scope; outside a test body
//! that is one relaxed atomic load.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::context::Context;
use crate::definition::{Propagation, TransactionDefinition};
use crate::error::TxError;
use crate::manager::{ManagerKey, ShareManager};
use crate::propagation::{self, ManagerRef, SavepointCompletion};
use crate::status::{Scope, ScopeKind, TransactionStatus};

/// Test bodies running right now, in any task: the engine looks no further while it is 0.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

tokio::task_local! {
    /// The test transactions the current task runs in, innermost first.
    static FRAMES: Arc<Frame>;
}

/// One test transaction: its manager and the scope it runs in.
struct Frame {
    key: ManagerKey,
    root: Arc<Scope>,
    parent: Option<Arc<Frame>>,
}

impl Frame {
    fn find(self: &Arc<Frame>, key: ManagerKey) -> Option<&Frame> {
        let mut link = Some(&**self);
        while let Some(f) = link {
            if f.key == key {
                return Some(f);
            }
            link = f.parent.as_deref();
        }
        None
    }
}

/// Counts a running test body (undone also when it panics or is dropped).
struct ActiveGuard;

impl ActiveGuard {
    fn enter() -> ActiveGuard {
        ACTIVE.fetch_add(1, Ordering::SeqCst);
        ActiveGuard
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a scope inside a test transaction runs instead of what its propagation says.
pub(crate) enum Redirect {
    /// On a savepoint of the enclosing scope `owner`, completed as `completion` says.
    Savepoint {
        owner: Arc<Scope>,
        completion: SavepointCompletion,
    },
    /// Refused, as without a transaction (`Mandatory`).
    Fail,
}

/// Whether `scope`, bound for a manager inside a test transaction, stands for "no
/// transaction" in the code under test: the test transaction's own scope, or a stand-in of a
/// scope without a transaction (the only bound scopes of that kind).
fn is_transparent(frame: &Frame, scope: &Arc<Scope>) -> bool {
    Arc::ptr_eq(&frame.root, scope) || matches!(scope.kind, ScopeKind::NoTransaction)
}

/// What a scope with `propagation` on manager `key` does instead, when the current task runs
/// in a test transaction of that manager; `None`: what the propagation table says.
pub(crate) fn redirect(
    key: ManagerKey,
    propagation: Propagation,
    existing: Option<&Arc<Scope>>,
) -> Option<Redirect> {
    if ACTIVE.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let existing = existing?;
    FRAMES
        .try_with(|frames| {
            let frame = frames.find(key)?;
            let transparent = is_transparent(frame, existing);
            let savepoint = |completion| {
                Some(Redirect::Savepoint {
                    owner: existing.clone(),
                    completion,
                })
            };
            match (propagation, transparent) {
                (Propagation::Required | Propagation::RequiresNew | Propagation::Nested, true)
                | (Propagation::RequiresNew, false) => {
                    savepoint(SavepointCompletion::NewTransaction)
                }
                // The outermost scope without a transaction, or one that suspends an emulated
                // transaction, completes its own hooks.
                (Propagation::Supports | Propagation::NotSupported | Propagation::Never, true) => {
                    savepoint(SavepointCompletion::WithoutTransaction {
                        owns_hooks: Arc::ptr_eq(&frame.root, existing),
                    })
                }
                (Propagation::NotSupported, false) => {
                    savepoint(SavepointCompletion::WithoutTransaction { owns_hooks: true })
                }
                (Propagation::Mandatory, true) => Some(Redirect::Fail),
                // Joining, a savepoint, or Never's refusal: as the engine does it.
                (
                    Propagation::Required
                    | Propagation::Supports
                    | Propagation::Mandatory
                    | Propagation::Nested
                    | Propagation::Never,
                    false,
                ) => None,
            }
        })
        .ok()
        .flatten()
}

/// Runs a scope the way [`redirect`] decided.
pub(crate) async fn execute<T, E, F, Fut, R>(
    redirect: Redirect,
    ctx: Context,
    key: ManagerKey,
    definition: &TransactionDefinition,
    rollback_on: R,
    body: F,
) -> Result<T, E>
where
    E: From<TxError>,
    F: FnOnce(TransactionStatus) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Fn(&E) -> bool,
{
    match redirect {
        Redirect::Savepoint { owner, completion } => {
            tracing::debug!(
                target: "tx",
                "Test transaction: savepoint in [{}] for {} scope [{}]",
                owner.name(),
                match completion {
                    SavepointCompletion::WithoutTransaction { .. } => "non-transactional",
                    _ => "new transaction",
                },
                definition.get_name()
            );
            let timeout = match completion {
                SavepointCompletion::NewTransaction => definition.get_timeout(),
                _ => None,
            };
            let Some(timeout) = timeout else {
                return propagation::savepoint(
                    ctx,
                    key,
                    owner,
                    definition,
                    completion,
                    rollback_on,
                    body,
                )
                .await;
            };
            // The stand-in of a transaction keeps its deadline: past it, it rolls back.
            let bounded = move |status: TransactionStatus| async move {
                match tokio::time::timeout(timeout, body(status.clone())).await {
                    Ok(r) => r,
                    Err(_) => {
                        status.set_rollback_only();
                        Err(TxError::Timeout.into())
                    }
                }
            };
            propagation::savepoint(
                ctx,
                key,
                owner,
                definition,
                completion,
                rollback_on,
                bounded,
            )
            .await
        }
        Redirect::Fail => Err(TxError::NoTransaction.into()),
    }
}

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
        let frame = Arc::new(Frame {
            key,
            root,
            parent: FRAMES.try_with(Arc::clone).ok(),
        });
        // Marked before the body runs, so a panic or a dropped future rolls back too.
        status.set_rollback_only();
        FRAMES.scope(frame, body()).await
    };
    let (result, _) =
        propagation::execute(ManagerRef::Borrowed(manager), &definition, |_| true, scoped).await;
    result
}
