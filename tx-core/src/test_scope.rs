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
//! The engine asks [`redirect`] at the start of every scope; outside a test body that is one
//! relaxed atomic load.

use std::future::Future;
use std::panic::{AssertUnwindSafe, resume_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures_util::FutureExt;

use crate::context::Context;
use crate::definition::{Propagation, TransactionDefinition};
use crate::error::TxError;
use crate::manager::{ManagerKey, PhysicalTransaction, ShareManager};
use crate::propagation::{self, ManagerRef};
use crate::status::{Scope, ScopeKind, TransactionStatus};
use crate::synchronization::SyncScope;
use crate::transaction::{Physical, Savepoint, Transaction};

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
    /// As a new transaction: a savepoint of the test transaction, completed like a commit or
    /// rollback.
    NewTransaction(Arc<Transaction>),
    /// As a scope without a transaction: a savepoint that is always released. `owns_hooks`:
    /// it completes its own hooks (it is the outermost such scope, or it suspends an emulated
    /// transaction); otherwise they go to the enclosing scope without a transaction.
    WithoutTransaction {
        tx: Arc<Transaction>,
        owns_hooks: bool,
    },
    /// Refused, as without a transaction (`Mandatory`).
    Fail,
}

/// Whether `scope`, bound for a manager inside a test transaction, stands for "no
/// transaction" in the code under test: the test transaction's own scope, or an emulated
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
            let tx = existing.tx.clone()?;
            let transparent = is_transparent(frame, existing);
            let is_root = Arc::ptr_eq(&frame.root, existing);
            match (propagation, transparent) {
                (Propagation::Required | Propagation::RequiresNew | Propagation::Nested, true)
                | (Propagation::RequiresNew, false) => Some(Redirect::NewTransaction(tx)),
                (Propagation::Supports | Propagation::NotSupported | Propagation::Never, true) => {
                    Some(Redirect::WithoutTransaction {
                        tx,
                        owns_hooks: is_root,
                    })
                }
                (Propagation::NotSupported, false) => Some(Redirect::WithoutTransaction {
                    tx,
                    owns_hooks: true,
                }),
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
        Redirect::NewTransaction(tx) => {
            tracing::debug!(
                target: "tx",
                "Test transaction: savepoint in [{}] for new transaction [{}]",
                tx.name(),
                definition.get_name()
            );
            emulated_transaction(ctx, key, tx, definition, rollback_on, body).await
        }
        Redirect::WithoutTransaction { tx, owns_hooks } => {
            tracing::debug!(
                target: "tx",
                "Test transaction: savepoint in [{}] for non-transactional scope [{}]",
                tx.name(),
                definition.get_name()
            );
            emulated_without_transaction(ctx, key, tx, owns_hooks, definition, rollback_on, body)
                .await
        }
        Redirect::Fail => Err(TxError::NoTransaction.into()),
    }
}

/// How an emulated scope's body ended.
enum End<T, E> {
    Returned(Result<T, E>),
    Panicked(Box<dyn std::any::Any + Send>),
    TimedOut,
}

/// Rolls back to the savepoint of an emulated scope dropped before it finished, and completes
/// its hooks as rolled back.
struct CancelGuard {
    armed: Option<(Arc<Transaction>, u64, Arc<SyncScope>)>,
    /// The savepoint is still open (neither released nor rolled back to).
    open: AtomicBool,
    /// Whether this scope completes the hooks.
    owns_hooks: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some((tx, id, sync)) = self.armed.take() {
            if self.open.load(Ordering::Relaxed) {
                tx.abandon_savepoint(id);
            }
            if self.owns_hooks {
                sync.spawn_finish_cancelled(async {});
            }
        }
    }
}

/// What to do with a savepoint at the end of its scope.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resolve {
    Release,
    RollBack,
}

/// Releases or rolls back to savepoint `id` if it was ever sent. A failed release (a
/// PostgreSQL transaction aborted by a failed statement) rolls back to it instead, so the
/// test transaction stays usable, and returns the release's error.
async fn resolve(tx: &Transaction, id: u64, how: Resolve) -> Result<(), TxError> {
    let mut slot = tx.slot.lock().await;
    let Some(pos) = slot.savepoints.iter().position(|sp| sp.id == id) else {
        return Ok(());
    };
    let inner: Vec<Savepoint> = slot.savepoints.drain(pos..).collect();
    let Physical::Active(physical) = &mut slot.physical else {
        return Ok(());
    };
    let sp = &inner[0];
    if !sp.created {
        return Ok(());
    }
    let name = sp.name();
    // A cancelled scope inside this one left its savepoint to be undone: undo it first,
    // or releasing this one would keep its work.
    let abandoned_inside = inner[1..].iter().any(|s| s.abandoned && s.created);
    if how == Resolve::RollBack || abandoned_inside {
        return roll_back_to(physical, &name).await;
    }
    match physical.release_savepoint(&name).await {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::debug!(target: "tx", "Release of savepoint {name} failed, rolling back to it: {e}");
            roll_back_to(physical, &name).await?;
            Err(e)
        }
    }
}

/// `ROLLBACK TO` the savepoint, then `RELEASE` it so names do not pile up.
async fn roll_back_to(
    physical: &mut Box<dyn PhysicalTransaction>,
    name: &str,
) -> Result<(), TxError> {
    physical.rollback_to_savepoint(name).await?;
    physical.release_savepoint(name).await
}

/// A scope that would begin a transaction: a savepoint of the test transaction, released when
/// the scope would commit (with the commit sequence of its hooks around it), rolled back to
/// when it would roll back.
async fn emulated_transaction<T, E, F, Fut, R>(
    ctx: Context,
    key: ManagerKey,
    tx: Arc<Transaction>,
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
    if !tx.manager.supports_savepoints() {
        return Err(TxError::NestedNotSupported.into());
    }
    let id = tx.push_savepoint().await.map_err(E::from)?;
    let global_before = tx.is_global_rollback_only();
    let scope = Arc::new(Scope::new(
        ScopeKind::NewTransaction,
        Some(tx.clone()),
        definition.name_cow().clone(),
    ));
    let sync = Arc::new(SyncScope::default());
    let status = TransactionStatus::owner(scope.clone());
    let sp_ctx = ctx
        .bind(key, Some(scope.clone()))
        .with_scope(status.clone(), sync.clone());

    let mut guard = CancelGuard {
        armed: Some((tx.clone(), id, sync.clone())),
        open: AtomicBool::new(true),
        owns_hooks: true,
    };
    let run = sp_ctx
        .clone()
        .run(AssertUnwindSafe(body(status)).catch_unwind());
    let caught = |r: std::thread::Result<Result<T, E>>| match r {
        Ok(r) => End::Returned(r),
        Err(panic) => End::Panicked(panic),
    };
    let end = match definition.get_timeout() {
        Some(timeout) => match tokio::time::timeout(timeout, run).await {
            Ok(r) => caught(r),
            Err(_) => End::TimedOut,
        },
        None => caught(run.await),
    };

    // A participant that failed marked the test transaction: that mark belongs to this
    // emulated transaction and goes with it.
    let marked_inside = tx.is_global_rollback_only() && !global_before;
    let local = scope.is_local_rollback_only();
    let commit = match &end {
        End::Panicked(_) | End::TimedOut => false,
        End::Returned(Ok(_)) => !local && !marked_inside,
        End::Returned(Err(e)) => !rollback_on(e) && !local && !marked_inside,
    };
    let undo_failed = AtomicBool::new(false);
    let roll_back = || async {
        if let Err(e) = resolve(&tx, id, Resolve::RollBack).await {
            tracing::warn!(target: "tx", "rollback to savepoint of [{}] failed: {e}", scope.name());
            undo_failed.store(true, Ordering::Relaxed);
        }
        guard.open.store(false, Ordering::Relaxed);
    };
    let failure = if commit {
        let release = async {
            let r = resolve(&tx, id, Resolve::Release).await;
            guard.open.store(false, Ordering::Relaxed);
            r
        };
        let (_, r) = sync
            .commit(&sp_ctx, definition.is_read_only(), release, roll_back())
            .await;
        r.err()
    } else {
        sync.rollback(&sp_ctx, roll_back()).await;
        None
    };
    tx.restore_global_rollback_only(global_before);
    if undo_failed.load(Ordering::Relaxed) {
        // The savepoint's work could not be undone: nothing after it may commit.
        tx.set_global_rollback_only();
    }
    guard.armed = None;
    scope.set_completed();
    if let Some(e) = failure {
        return Err(e.into());
    }
    match end {
        End::Returned(Ok(_)) if marked_inside && !local => Err(TxError::UnexpectedRollback.into()),
        End::Returned(r) => r,
        End::TimedOut => Err(TxError::Timeout.into()),
        End::Panicked(panic) => resume_unwind(panic),
    }
}

/// A scope that would run without a transaction: its statements run on a savepoint of the
/// test transaction that is always released (autocommit would have kept them); its hooks
/// complete as a scope without a transaction completes them.
async fn emulated_without_transaction<T, E, F, Fut, R>(
    ctx: Context,
    key: ManagerKey,
    tx: Arc<Transaction>,
    owns_hooks: bool,
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
    if !tx.manager.supports_savepoints() {
        return Err(TxError::NestedNotSupported.into());
    }
    let id = tx.push_savepoint().await.map_err(E::from)?;
    let scope = Arc::new(Scope::new(
        ScopeKind::NoTransaction,
        Some(tx.clone()),
        definition.name_cow().clone(),
    ));
    let status = TransactionStatus::owner(scope.clone());
    let (sync, owns_hooks) = match (owns_hooks, ctx.sync()) {
        (false, Some(outer)) => (outer.clone(), false),
        _ => (Arc::new(SyncScope::default()), true),
    };
    let ctx = ctx
        .bind(key, Some(scope.clone()))
        .with_scope(status.clone(), sync.clone());

    let mut guard = CancelGuard {
        armed: Some((tx.clone(), id, sync.clone())),
        open: AtomicBool::new(true),
        owns_hooks,
    };
    let end = ctx
        .clone()
        .run(AssertUnwindSafe(body(status)).catch_unwind())
        .await;
    // Autocommit would have kept every statement that succeeded: release, whatever the
    // outcome (a failed release rolls back to it, see `resolve`).
    if let Err(e) = resolve(&tx, id, Resolve::Release).await {
        tracing::debug!(target: "tx", "scope [{}] without transaction: {e}", scope.name());
    }
    guard.open.store(false, Ordering::Relaxed);
    guard.armed = None;
    scope.set_completed();
    let r = match end {
        Ok(r) => r,
        Err(panic) => {
            if owns_hooks {
                sync.rollback(&ctx, async {}).await;
            }
            resume_unwind(panic)
        }
    };
    if !owns_hooks {
        return r;
    }
    let failed = match &r {
        Ok(_) => scope.is_local_rollback_only(),
        Err(e) => rollback_on(e) || scope.is_local_rollback_only(),
    };
    if failed {
        sync.rollback(&ctx, async {}).await;
        return r;
    }
    let (_, hooks) = sync
        .commit(&ctx, definition.is_read_only(), async { Ok(()) }, async {})
        .await;
    match hooks {
        Ok(()) => r,
        Err(e) => Err(e.into()),
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
/// transactional scope to go on). Work in a `tokio::spawn`ed task is outside the test
/// transaction and commits for real, as it runs outside any transaction.
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
/// # use tx_core::manager::*; use std::sync::Arc;
/// # #[derive(Clone, Default)] struct Noop(Arc<()>);
/// # struct NoopTx;
/// # impl PhysicalTransaction for NoopTx {
/// #     fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>> { Box::pin(async { Ok(()) }) }
/// #     fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>> { Box::pin(async { Ok(()) }) }
/// #     fn create_savepoint<'a>(&'a mut self, _: &'a str) -> BoxFuture<'a, Result<(), TxError>> { Box::pin(async { Ok(()) }) }
/// #     fn rollback_to_savepoint<'a>(&'a mut self, _: &'a str) -> BoxFuture<'a, Result<(), TxError>> { Box::pin(async { Ok(()) }) }
/// #     fn release_savepoint<'a>(&'a mut self, _: &'a str) -> BoxFuture<'a, Result<(), TxError>> { Box::pin(async { Ok(()) }) }
/// #     fn as_any_mut(&mut self) -> &mut dyn std::any::Any { self }
/// # }
/// # impl TransactionManager for Noop {
/// #     fn key(&self) -> ManagerKey { ManagerKey::of(&self.0) }
/// #     fn begin(&self, _: BeginOptions) -> BoxFuture<'static, Result<Box<dyn PhysicalTransaction>, TxError>> {
/// #         Box::pin(async { Ok(Box::new(NoopTx) as Box<dyn PhysicalTransaction>) })
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let db = Noop::default(); // a TxPool in real code
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
