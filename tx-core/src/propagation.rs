//! The propagation engine (Spring's `AbstractPlatformTransactionManager`), written once for
//! every backend: decides per scope whether to join, begin, suspend, savepoint or refuse, runs
//! the body, and completes what the scope owns.

use std::borrow::Cow;
use std::future::Future;
use std::panic::{AssertUnwindSafe, resume_unwind};
use std::sync::Arc;

use futures_util::FutureExt;

use crate::completion::Completion;
use crate::context::Context;
use crate::definition::{Propagation, TransactionDefinition};
use crate::error::TxError;
use crate::manager::{ManagerKey, ShareManager, SharedManager};
use crate::registry;
use crate::status::{Scope, ScopeKind, TransactionStatus};
use crate::synchronization::SyncScope;
use crate::transaction::Transaction;

/// Which manager a scope uses.
#[derive(Clone, Copy)]
pub enum ManagerRef<'a> {
    /// The default manager ([`crate::set_default_manager`]).
    Default,
    /// A manager registered by name ([`crate::register_manager`]).
    Named(&'a str),
    /// A manager the engine already shares.
    Shared(&'a SharedManager),
    /// A manager given by reference (`manager = self.db`).
    Borrowed(&'a dyn ShareManager),
}

/// The resolved manager: its key (enough to join) and, only when a transaction must begin,
/// the manager itself.
struct Resolved<'r, 'a> {
    key: ManagerKey,
    by: &'r ManagerRef<'a>,
}

impl Resolved<'_, '_> {
    fn share(&self) -> Result<SharedManager, TxError> {
        match *self.by {
            ManagerRef::Default => registry::default_manager(),
            ManagerRef::Named(name) => registry::named_manager(name),
            ManagerRef::Shared(m) => Ok(m.clone()),
            ManagerRef::Borrowed(m) => Ok(m.share()),
        }
    }
}

impl<'a> ManagerRef<'a> {
    fn resolve(&self) -> Result<Resolved<'_, 'a>, TxError> {
        let key = match *self {
            ManagerRef::Default => registry::default_key()?,
            ManagerRef::Named(name) => registry::named_key(name)?,
            ManagerRef::Shared(m) => m.key(),
            ManagerRef::Borrowed(m) => m.key(),
        };
        Ok(Resolved { key, by: self })
    }
}

/// What the retry loop needs to know about one run.
#[derive(Clone, Copy, Default)]
pub(crate) struct RunInfo {
    /// The run began (and completed) its own transaction.
    pub(crate) owned_transaction: bool,
    /// A statement, `BEGIN` or `COMMIT` failed with a serialization failure or deadlock.
    pub(crate) retryable_failure: bool,
}

/// How a scope's body ended.
enum BodyEnd<T, E> {
    Returned(Result<T, E>),
    Panicked(Box<dyn std::any::Any + Send>),
    TimedOut,
}

impl<T, E> BodyEnd<T, E> {
    fn from_caught(r: std::thread::Result<Result<T, E>>) -> Self {
        match r {
            Ok(r) => BodyEnd::Returned(r),
            Err(panic) => BodyEnd::Panicked(panic),
        }
    }
}

/// Runs `body` in a scope with `definition`'s propagation on `manager`.
///
/// `rollback_on(&err)` says whether an `Err` of the body rolls the scope back (the rollback
/// rules); `Ok` commits unless something marked the scope rollback-only.
pub(crate) async fn execute<T, E, F, Fut, R>(
    manager: ManagerRef<'_>,
    definition: &TransactionDefinition,
    rollback_on: R,
    body: F,
) -> (Result<T, E>, RunInfo)
where
    E: From<TxError>,
    F: FnOnce(TransactionStatus) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Fn(&E) -> bool,
{
    let manager = match manager.resolve() {
        Ok(m) => m,
        Err(e) => return (Err(e.into()), RunInfo::default()),
    };
    let key = manager.key;
    let ctx = Context::current();
    let existing = ctx.bound_scope(key).cloned();

    // Inside a test transaction (feature `testing`), scopes that would begin or suspend a
    // transaction of its manager take savepoints of it instead.
    #[cfg(feature = "testing")]
    if let Some(redirect) =
        crate::test_scope::redirect(key, definition.get_propagation(), existing.as_ref())
    {
        let r = crate::test_scope::execute(redirect, ctx, key, definition, rollback_on, body);
        return (r.await, RunInfo::default());
    }

    // The propagation table (SPEC "Semantics"), in one place.
    match (definition.get_propagation(), existing) {
        (Propagation::Required | Propagation::Supports | Propagation::Mandatory, Some(owner)) => (
            participate(ctx, owner, rollback_on, body).await,
            RunInfo::default(),
        ),
        (Propagation::Nested, Some(owner)) => (
            savepoint(ctx, key, owner, definition, rollback_on, body).await,
            RunInfo::default(),
        ),
        (Propagation::RequiresNew, Some(suspended)) => {
            tracing::debug!(
                target: "tx",
                "Suspending current transaction [{}], creating new transaction with name [{}]",
                suspended.name(),
                definition.get_name()
            );
            let run = match manager.share() {
                Ok(m) => new_transaction(ctx, key, m, definition, rollback_on, body).await,
                Err(e) => (Err(e.into()), RunInfo::default()),
            };
            log_resume(&suspended);
            run
        }
        (Propagation::Required | Propagation::RequiresNew | Propagation::Nested, None) => {
            match manager.share() {
                Ok(m) => new_transaction(ctx, key, m, definition, rollback_on, body).await,
                Err(e) => (Err(e.into()), RunInfo::default()),
            }
        }
        (Propagation::NotSupported, Some(suspended)) => {
            tracing::debug!(
                target: "tx",
                "Suspending current transaction [{}] for non-transactional scope [{}]",
                suspended.name(),
                definition.get_name()
            );
            let result = without_transaction(ctx, Some(key), definition, rollback_on, body).await;
            log_resume(&suspended);
            (result, RunInfo::default())
        }
        (Propagation::Supports | Propagation::NotSupported | Propagation::Never, None) => (
            without_transaction(ctx, None, definition, rollback_on, body).await,
            RunInfo::default(),
        ),
        (Propagation::Mandatory, None) => (Err(TxError::NoTransaction.into()), RunInfo::default()),
        (Propagation::Never, Some(_)) => {
            (Err(TxError::ExistingTransaction.into()), RunInfo::default())
        }
    }
}

/// Marks the transaction rollback-only if a participant is dropped before it finished (its
/// writes may be half done).
struct ParticipantGuard<'a>(Option<&'a Transaction>);

impl Drop for ParticipantGuard<'_> {
    fn drop(&mut self) {
        if let Some(tx) = self.0 {
            tx.set_global_rollback_only();
        }
    }
}

/// Required/Supports/Mandatory inside a transaction: run in it; a failure marks it
/// rollback-only for its owner.
async fn participate<T, E, F, Fut, R>(
    ctx: Context,
    owner: Arc<Scope>,
    rollback_on: R,
    body: F,
) -> Result<T, E>
where
    F: FnOnce(TransactionStatus) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Fn(&E) -> bool,
{
    tracing::debug!(target: "tx", "Participating in existing transaction [{}]", owner.name());
    let tx = owner
        .tx
        .as_deref()
        .expect("a bound scope has a transaction");
    let status = TransactionStatus::participant(owner.clone());
    let mut guard = ParticipantGuard(Some(tx));
    let end = ctx
        .with_status(status.clone())
        .run(AssertUnwindSafe(body(status)).catch_unwind())
        .await;
    guard.0 = None;
    match end {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            if rollback_on(&e) {
                tracing::debug!(
                    target: "tx",
                    "Participating transaction failed - marking existing transaction [{}] as rollback-only",
                    owner.name()
                );
                tx.set_global_rollback_only();
            }
            Err(e)
        }
        Err(panic) => {
            tx.set_global_rollback_only();
            resume_unwind(panic)
        }
    }
}

/// Completes a cancelled new transaction: rolls back (unless COMMIT was already sent) and
/// finishes its hooks from where they stopped, in a spawned task (a destructor cannot wait).
struct CancelGuard {
    armed: Option<(Arc<Transaction>, Arc<SyncScope>)>,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let Some((tx, sync)) = self.armed.take() else {
            return;
        };
        tracing::debug!(target: "tx", "Transactional call [{}] cancelled: rolling back", tx.name());
        let physical = tx.try_take_physical();
        sync.spawn_finish_cancelled(async move {
            if let Some(p) = physical
                && let Err(e) = p.rollback().await
            {
                tracing::warn!(target: "tx", "rollback of cancelled transaction failed: {e}");
            }
        });
    }
}

fn log_resume(suspended: &Scope) {
    tracing::debug!(
        target: "tx",
        "Resuming suspended transaction [{}] after completion of inner scope",
        suspended.name()
    );
}

fn log_new(definition: &TransactionDefinition) {
    tracing::debug!(
        target: "tx",
        "Creating new transaction with name [{}]: {},{}{}{}",
        definition.get_name(),
        definition.get_propagation().spring_name(),
        definition.get_isolation().spring_name(),
        if definition.is_read_only() { ",readOnly" } else { "" },
        definition
            .get_timeout()
            .map(|t| format!(",timeout_{}ms", t.as_millis()))
            .unwrap_or_default(),
    );
}

/// Begins a transaction (lazily: BEGIN goes out with the first statement), runs the body in
/// it and commits or rolls back. Transactions of the same manager in `ctx` are suspended.
async fn new_transaction<T, E, F, Fut, R>(
    ctx: Context,
    key: ManagerKey,
    manager: SharedManager,
    definition: &TransactionDefinition,
    rollback_on: R,
    body: F,
) -> (Result<T, E>, RunInfo)
where
    E: From<TxError>,
    F: FnOnce(TransactionStatus) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Fn(&E) -> bool,
{
    log_new(definition);
    let tx = Arc::new(Transaction::new(
        manager,
        definition.clone(),
        key,
        ctx.bindings(),
    ));
    let scope = Arc::new(Scope::new(
        ScopeKind::NewTransaction,
        Some(tx.clone()),
        name_of(definition),
    ));
    let sync = Arc::new(SyncScope::default());
    let status = TransactionStatus::owner(scope.clone());
    let tx_ctx = ctx
        .bind(key, Some(scope.clone()))
        .with_scope(status.clone(), sync.clone());

    let mut cancel = CancelGuard {
        armed: Some((tx.clone(), sync.clone())),
    };
    let run = tx_ctx
        .clone()
        .run(AssertUnwindSafe(body(status)).catch_unwind());
    let end = match tx.deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, run).await {
            Ok(r) => BodyEnd::from_caught(r),
            Err(_) => BodyEnd::TimedOut,
        },
        None => BodyEnd::from_caught(run.await),
    };

    let result = complete_transaction(&tx, &scope, &sync, &tx_ctx, end, &rollback_on).await;
    cancel.armed = None;
    scope.set_completed();
    tracing::debug!(target: "tx", "Completed transaction [{}]", tx.name());
    let info = RunInfo {
        owned_transaction: true,
        retryable_failure: tx.saw_retryable(),
    };
    match result {
        Ok(r) => (r, info),
        Err(panic) => resume_unwind(panic),
    }
}

/// Commits or rolls back a transaction this scope began, per how its body ended.
/// `Err` carries a panic to resume once everything is cleaned up.
async fn complete_transaction<T, E, R>(
    tx: &Arc<Transaction>,
    scope: &Scope,
    sync: &SyncScope,
    tx_ctx: &Context,
    end: BodyEnd<T, E>,
    rollback_on: &R,
) -> Result<Result<T, E>, Box<dyn std::any::Any + Send>>
where
    E: From<TxError>,
    R: Fn(&E) -> bool,
{
    let rollback = || async {
        tracing::debug!(target: "tx", "Initiating transaction rollback [{}]", tx.name());
        if let Some(p) = tx.take_physical().await
            && let Err(e) = p.rollback().await
        {
            tracing::warn!(target: "tx", "rollback of [{}] failed: {e}", tx.name());
        }
    };
    // Returned value or error, and whether to try to commit.
    let (outcome, commit) = match end {
        BodyEnd::Panicked(panic) => {
            tracing::debug!(target: "tx", "Transactional body of [{}] panicked", tx.name());
            sync.rollback(tx_ctx, rollback()).await;
            return Err(panic);
        }
        BodyEnd::TimedOut => {
            tracing::debug!(target: "tx", "Transaction [{}] timed out", tx.name());
            sync.rollback(tx_ctx, rollback()).await;
            return Ok(Err(TxError::Timeout.into()));
        }
        BodyEnd::Returned(Ok(v)) => {
            let commit = !scope.is_local_rollback_only();
            if !commit {
                tracing::debug!(
                    target: "tx",
                    "Transactional code has requested rollback of [{}]",
                    tx.name()
                );
            }
            (Ok(v), commit)
        }
        BodyEnd::Returned(Err(e)) => {
            let commit = !rollback_on(&e) && !scope.is_local_rollback_only();
            (Err(e), commit)
        }
    };
    if !commit {
        sync.rollback(tx_ctx, rollback()).await;
        // A body that failed after the deadline failed because of it (a statement cut by the
        // server's statement timeout, or refused by the engine): report the timeout.
        if outcome.is_err() && tx.past_deadline() {
            return Ok(Err(TxError::Timeout.into()));
        }
        return Ok(outcome);
    }
    if tx.is_global_rollback_only() {
        tracing::debug!(
            target: "tx",
            "Global transaction [{}] is marked as rollback-only but transactional code requested commit",
            tx.name()
        );
        sync.rollback(tx_ctx, rollback()).await;
        return Ok(Err(TxError::UnexpectedRollback.into()));
    }
    let commit_physical = async {
        tracing::debug!(target: "tx", "Initiating transaction commit [{}]", tx.name());
        match tx.take_physical_for_commit().await {
            Ok(Some(p)) => p.commit().await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        }
    };
    let (completion, r) = sync
        .commit(
            tx_ctx,
            tx.definition.is_read_only(),
            commit_physical,
            rollback(),
        )
        .await;
    match r {
        Ok(()) => Ok(outcome),
        Err(e) => {
            if e.is_retryable() {
                tx.note_retryable();
            }
            if completion == Completion::RolledBack {
                tracing::debug!(target: "tx", "Commit of [{}] failed: {e}", tx.name());
            }
            Ok(Err(e.into()))
        }
    }
}

/// Rolls the savepoint back if a `Nested` scope is dropped before it finished; its hooks
/// finish as rolled back.
struct SavepointGuard {
    armed: Option<(Arc<Transaction>, u64, Arc<SyncScope>)>,
    /// Whether the savepoint is still open (its ROLLBACK TO / RELEASE has not returned).
    open: bool,
}

impl Drop for SavepointGuard {
    fn drop(&mut self) {
        if let Some((tx, id, sync)) = self.armed.take() {
            if self.open {
                tx.abandon_savepoint(id);
            }
            sync.spawn_finish_cancelled(async {});
        }
    }
}

/// Nested inside a transaction: a savepoint; failure rolls back to it and the outer
/// transaction goes on.
async fn savepoint<T, E, F, Fut, R>(
    ctx: Context,
    key: ManagerKey,
    owner: Arc<Scope>,
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
    let tx = owner.tx.clone().expect("a bound scope has a transaction");
    if !tx.manager.supports_savepoints() {
        return Err(TxError::NestedNotSupported.into());
    }
    let Some(parent_sync) = ctx.sync().cloned() else {
        unreachable!("a scope with a transaction owns or joins a hook list")
    };
    tracing::debug!(
        target: "tx",
        "Creating nested transaction with name [{}] in [{}]",
        definition.get_name(),
        tx.name()
    );
    let id = match tx.push_savepoint().await {
        Ok(id) => id,
        Err(e) => return Err(e.into()),
    };
    let global_before = tx.is_global_rollback_only();
    let scope = Arc::new(Scope::new(
        ScopeKind::Savepoint,
        Some(tx.clone()),
        name_of(definition),
    ));
    let sync = Arc::new(SyncScope::default());
    let status = TransactionStatus::owner(scope.clone());
    let sp_ctx = ctx
        .bind(key, Some(scope.clone()))
        .with_scope(status.clone(), sync.clone());

    let mut guard = SavepointGuard {
        armed: Some((tx.clone(), id, sync.clone())),
        open: true,
    };
    let end = BodyEnd::from_caught(
        sp_ctx
            .clone()
            .run(AssertUnwindSafe(body(status)).catch_unwind())
            .await,
    );

    // A participant inside that failed marked the transaction; that mark belongs to the
    // savepoint and is undone with it (Spring resets it on rollback to savepoint).
    let marked_inside = tx.is_global_rollback_only() && !global_before;
    let rollback = match &end {
        BodyEnd::Panicked(_) | BodyEnd::TimedOut => true,
        BodyEnd::Returned(Err(e)) => {
            rollback_on(e) || scope.is_local_rollback_only() || marked_inside
        }
        BodyEnd::Returned(Ok(_)) => scope.is_local_rollback_only() || marked_inside,
    };
    // The guard stays armed until the savepoint is resolved: a call cancelled during
    // ROLLBACK TO / RELEASE still has its savepoint undone and its hooks completed.
    let failure = if rollback {
        let mut failure = None;
        sync.rollback(&sp_ctx, async {
            if let Err(e) = tx.pop_savepoint(id, true).await {
                failure = Some(e);
            }
            guard.open = false;
        })
        .await;
        tx.restore_global_rollback_only(global_before);
        failure
    } else {
        let popped = tx.pop_savepoint(id, false).await;
        guard.open = false;
        match popped {
            Ok(()) => {
                sync.hand_over_to(&parent_sync);
                None
            }
            Err(e) => {
                sync.rollback(&sp_ctx, async {}).await;
                Some(e)
            }
        }
    };
    guard.armed = None;
    scope.set_completed();
    if let Some(e) = failure {
        // The savepoint's work could not be undone or kept: the whole transaction must go.
        tx.set_global_rollback_only();
        return Err(e.into());
    }
    match end {
        BodyEnd::Returned(Ok(_)) if marked_inside && !scope.is_local_rollback_only() => {
            Err(TxError::UnexpectedRollback.into())
        }
        BodyEnd::Returned(r) => r,
        BodyEnd::TimedOut => Err(TxError::Timeout.into()),
        BodyEnd::Panicked(panic) => resume_unwind(panic),
    }
}

/// Completes the hooks of a cancelled scope without a transaction.
struct NoTxCancelGuard(Option<Arc<SyncScope>>);

impl Drop for NoTxCancelGuard {
    fn drop(&mut self) {
        if let Some(sync) = self.0.take() {
            sync.spawn_finish_cancelled(async {});
        }
    }
}

/// Supports/NotSupported/Never without a transaction: statements run in autocommit. Such a
/// scope still collects hooks and, when it owns them, runs them at its end: as committed if it
/// ended `Ok` and unmarked, else as rolled back. `suspend` is the manager whose transaction
/// NotSupported suspends.
async fn without_transaction<T, E, F, Fut, R>(
    ctx: Context,
    suspend: Option<ManagerKey>,
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
    let scope = Arc::new(Scope::new(
        ScopeKind::NoTransaction,
        None,
        name_of(definition),
    ));
    let status = TransactionStatus::owner(scope.clone());
    // A scope without a transaction inside another such scope registers into that one's list.
    let (sync, owns_sync) = match (suspend, ctx.sync()) {
        (None, Some(outer)) => (outer.clone(), false),
        _ => (Arc::new(SyncScope::default()), true),
    };
    let ctx = match suspend {
        Some(key) => ctx.bind(key, None),
        None => ctx,
    }
    .with_scope(status.clone(), sync.clone());

    let mut guard = NoTxCancelGuard(owns_sync.then(|| sync.clone()));
    let end = ctx
        .clone()
        .run(AssertUnwindSafe(body(status)).catch_unwind())
        .await;
    guard.0 = None;
    scope.set_completed();
    if !owns_sync {
        return match end {
            Ok(r) => r,
            Err(panic) => resume_unwind(panic),
        };
    }
    match end {
        Err(panic) => {
            sync.rollback(&ctx, async {}).await;
            resume_unwind(panic)
        }
        Ok(r) => {
            let failed = match &r {
                Ok(_) => scope.is_local_rollback_only(),
                Err(e) => rollback_on(e) || scope.is_local_rollback_only(),
            };
            if failed {
                sync.rollback(&ctx, async {}).await;
                r
            } else {
                let (_, hooks) = sync
                    .commit(&ctx, definition.is_read_only(), async { Ok(()) }, async {})
                    .await;
                match hooks {
                    Ok(()) => r,
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}

fn name_of(definition: &TransactionDefinition) -> Cow<'static, str> {
    definition.name_cow().clone()
}
