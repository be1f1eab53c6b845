//! The propagation engine (Spring's `AbstractPlatformTransactionManager`), written once for
//! every backend: decides per scope whether to join, begin, suspend, savepoint or refuse, runs
//! the body, and completes what the scope owns.

use std::borrow::Cow;
use std::future::Future;
use std::panic::{AssertUnwindSafe, resume_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::FutureExt;

use crate::completion::Completion;
use crate::context::Context;
use crate::definition::{Propagation, TransactionDefinition};
use crate::error::TxError;
use crate::manager::{ManagerKey, ShareManager, SharedManager};
use crate::registry;
use crate::status::{Scope, ScopeKind, TransactionStatus};
use crate::synchronization::SyncScope;
use crate::transaction::{Retryable, Transaction};

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
#[derive(Clone, Default)]
pub(crate) struct RunInfo {
    /// The run began (and completed) its own transaction.
    pub(crate) owned_transaction: bool,
    /// That transaction rolled back (not committed, not unknown).
    pub(crate) rolled_back: bool,
    /// A statement, `BEGIN` or `COMMIT` of it failed with a serialization failure or
    /// deadlock that no `Nested` scope handled by rolling back to its savepoint.
    pub(crate) retryable: Option<Retryable>,
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
#[allow(dead_code)] // the entry point of callers without retries
pub(crate) fn execute<'a, T, E, F, Fut, R>(
    manager: ManagerRef<'a>,
    definition: &'a TransactionDefinition,
    rollback_on: R,
    body: F,
) -> impl Future<Output = (Result<T, E>, RunInfo)> + 'a
where
    E: From<TxError> + 'a,
    T: 'a,
    F: FnOnce(TransactionStatus) -> Fut + 'a,
    Fut: Future<Output = Result<T, E>> + 'a,
    R: Fn(&E) -> bool + 'a,
{
    execute_attempt(manager, definition, rollback_on, body, 1)
}

/// [`execute`], as run number `attempt` (from 1) of a retried call.
pub(crate) async fn execute_attempt<T, E, F, Fut, R>(
    manager: ManagerRef<'_>,
    definition: &TransactionDefinition,
    rollback_on: R,
    body: F,
    attempt: u32,
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
        // Boxed, so that this path does not grow the future of every scope.
        let r = crate::test_scope::execute(redirect, ctx, key, definition, rollback_on, body);
        return (Box::pin(r).await, RunInfo::default());
    }

    // The propagation table (SPEC "Semantics"), in one place.
    match (definition.get_propagation(), existing) {
        (Propagation::Required | Propagation::Supports | Propagation::Mandatory, Some(owner)) => (
            participate(ctx, owner, rollback_on, body).await,
            RunInfo::default(),
        ),
        (Propagation::Nested, Some(owner)) => (
            savepoint(
                ctx,
                key,
                owner,
                definition,
                SavepointCompletion::Nested,
                rollback_on,
                body,
            )
            .await,
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
                Ok(m) => new_transaction(ctx, key, m, definition, rollback_on, body, attempt).await,
                Err(e) => (Err(e.into()), RunInfo::default()),
            };
            log_resume(&suspended);
            run
        }
        (Propagation::Required | Propagation::RequiresNew | Propagation::Nested, None) => {
            match manager.share() {
                Ok(m) => new_transaction(ctx, key, m, definition, rollback_on, body, attempt).await,
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

/// Marks the owner scope rollback-only if a participant is dropped before it finished (its
/// writes may be half done).
struct ParticipantGuard<'a>(Option<&'a Scope>);

impl Drop for ParticipantGuard<'_> {
    fn drop(&mut self) {
        if let Some(owner) = self.0 {
            owner.mark_joined_rollback_only();
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
    let status = TransactionStatus::participant(owner.clone());
    let mut guard = ParticipantGuard(Some(&owner));
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
                owner.mark_joined_rollback_only();
            }
            Err(e)
        }
        Err(panic) => {
            owner.mark_joined_rollback_only();
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
        sync.spawn_finish_cancelled(tx.runtime(), async move {
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
    attempt: u32,
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
        attempt,
    ));
    let scope = Arc::new(Scope::new(
        ScopeKind::NewTransaction,
        Some(tx.clone()),
        name_of(definition),
    ));
    let sync = Arc::new(SyncScope::default());
    let status = TransactionStatus::owner(scope.clone());
    let tx_ctx = ctx
        .bind(key, Some(scope.clone()), None)
        .with_scope(status.clone(), sync.clone());

    let mut cancel = CancelGuard {
        armed: Some((tx.clone(), sync.clone())),
    };
    let end = {
        let run = tx_ctx
            .clone()
            .run(AssertUnwindSafe(body(status)).catch_unwind());
        match tx.deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, run).await {
                Ok(r) => BodyEnd::from_caught(r),
                Err(_) => BodyEnd::TimedOut,
            },
            None => BodyEnd::from_caught(run.await),
        }
    };
    // Decided when the body ended: a body that computed past the deadline without awaiting
    // must not commit, while its own error returned in time stays its error.
    let late = tx.past_deadline();

    let (result, completion) =
        complete_transaction(&tx, &scope, &sync, &tx_ctx, end, late, &rollback_on).await;
    cancel.armed = None;
    scope.set_completed();
    tracing::debug!(target: "tx", "Completed transaction [{}]", tx.name());
    let info = RunInfo {
        owned_transaction: true,
        rolled_back: completion == Completion::RolledBack,
        retryable: tx.take_retryable(),
    };
    match result {
        Ok(r) => (r, info),
        Err(panic) => resume_unwind(panic),
    }
}

/// Commits or rolls back a transaction this scope began, per how its body ended (`late`:
/// past the deadline). `Err` carries a panic to resume once everything is cleaned up.
#[allow(clippy::type_complexity)]
async fn complete_transaction<T, E, R>(
    tx: &Arc<Transaction>,
    scope: &Scope,
    sync: &SyncScope,
    tx_ctx: &Context,
    end: BodyEnd<T, E>,
    late: bool,
    rollback_on: &R,
) -> (
    Result<Result<T, E>, Box<dyn std::any::Any + Send>>,
    Completion,
)
where
    E: From<TxError>,
    R: Fn(&E) -> bool,
{
    let enclosing = tx.enclosing.as_ref();
    let rollback = || async {
        tracing::debug!(target: "tx", "Initiating transaction rollback [{}]", tx.name());
        match tx.take_physical(false).await {
            Ok(Some(p)) => {
                if let Err(e) = p.rollback().await {
                    tracing::warn!(target: "tx", "rollback of [{}] failed: {e}", tx.name());
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(target: "tx", "{e}"),
        }
    };
    let rolled_back = Completion::RolledBack;
    // Returned value or error, and whether to try to commit.
    let (outcome, commit) = match end {
        BodyEnd::Panicked(panic) => {
            tracing::debug!(target: "tx", "Transactional body of [{}] panicked", tx.name());
            sync.rollback(tx_ctx, enclosing, rollback()).await;
            return (Err(panic), rolled_back);
        }
        BodyEnd::TimedOut => {
            tracing::debug!(target: "tx", "Transaction [{}] timed out", tx.name());
            sync.rollback(tx_ctx, enclosing, rollback()).await;
            return (Ok(Err(TxError::Timeout.into())), rolled_back);
        }
        BodyEnd::Returned(_) if late => {
            // Also a body that failed after the deadline failed because of it (a statement
            // cut by the server's statement timeout, or refused by the engine).
            tracing::debug!(target: "tx", "Transaction [{}] ended past its deadline: rolling back", tx.name());
            sync.rollback(tx_ctx, enclosing, rollback()).await;
            return (Ok(Err(TxError::Timeout.into())), rolled_back);
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
        sync.rollback(tx_ctx, enclosing, rollback()).await;
        return (Ok(outcome), rolled_back);
    }
    if tx.is_global_rollback_only() {
        tracing::debug!(
            target: "tx",
            "Global transaction [{}] is marked as rollback-only but transactional code requested commit",
            tx.name()
        );
        sync.rollback(tx_ctx, enclosing, rollback()).await;
        return (Ok(Err(TxError::UnexpectedRollback.into())), rolled_back);
    }
    // Right before COMMIT, after every before_commit and before_completion hook: a hook may
    // have run past the deadline, or marked the transaction (a participant it called failed,
    // or it called set_rollback_only()).
    let check = || {
        if tx.past_deadline() {
            tracing::debug!(target: "tx", "Transaction [{}] reached its deadline before COMMIT", tx.name());
            Err(TxError::Timeout)
        } else if tx.is_global_rollback_only() || scope.is_local_rollback_only() {
            tracing::debug!(
                target: "tx",
                "Transaction [{}] was marked rollback-only by a synchronization before COMMIT",
                tx.name()
            );
            Err(TxError::UnexpectedRollback)
        } else {
            Ok(())
        }
    };
    let commit_physical = async {
        tracing::debug!(target: "tx", "Initiating transaction commit [{}]", tx.name());
        match tx.take_physical(true).await {
            Ok(Some(p)) => p.commit().await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        }
    };
    let (completion, r) = sync
        .commit(
            tx_ctx,
            enclosing,
            tx.definition.is_read_only(),
            tx.deadline,
            check,
            commit_physical,
            rollback(),
        )
        .await;
    match r {
        Ok(()) => (Ok(outcome), completion),
        Err(e) => {
            if e.is_retryable() {
                tx.note_retryable(e.sqlstate());
            }
            if completion == Completion::RolledBack {
                tracing::debug!(target: "tx", "Commit of [{}] failed: {e}", tx.name());
            }
            (Ok(Err(e.into())), completion)
        }
    }
}

/// How a savepoint scope completes: as a `Nested` scope, or standing in for a new transaction
/// or for a scope without one (inside a test transaction, which has no other transaction to
/// give them).
#[derive(Clone, Copy)]
#[cfg_attr(not(feature = "testing"), allow(dead_code))] // the stand-ins serve test transactions
pub(crate) enum SavepointCompletion {
    /// `Nested`: released when the scope commits, its hooks then handed to the enclosing
    /// owner; rolled back to when it fails.
    Nested,
    /// A new transaction: released where it would commit, with the commit sequence of its
    /// hooks around the release; rolled back to where it would roll back.
    NewTransaction,
    /// A scope without a transaction: always released (autocommit would have kept every
    /// statement). When it `owns_hooks` they run at its end as committed or rolled back, as
    /// for a scope without a transaction; else they are the enclosing such scope's.
    WithoutTransaction { owns_hooks: bool },
}

/// Rolls the savepoint back if a savepoint scope is dropped before it finished; the hooks it
/// owns finish as rolled back.
struct SavepointGuard {
    armed: Option<(Arc<Transaction>, u64, Option<Arc<SyncScope>>)>,
    /// Whether the savepoint is still open (its ROLLBACK TO / RELEASE has not returned).
    open: AtomicBool,
}

impl Drop for SavepointGuard {
    fn drop(&mut self) {
        if let Some((tx, id, sync)) = self.armed.take() {
            if self.open.load(Ordering::Relaxed) {
                tx.abandon_savepoint(id);
            }
            if let Some(sync) = sync {
                sync.spawn_finish_cancelled(tx.runtime(), async {});
            }
        }
    }
}

/// A savepoint scope inside the transaction of `owner`: `Nested` (failure rolls back to it and
/// the outer transaction goes on), or a stand-in of a test transaction (`completion`).
pub(crate) async fn savepoint<T, E, F, Fut, R>(
    ctx: Context,
    key: ManagerKey,
    owner: Arc<Scope>,
    definition: &TransactionDefinition,
    completion: SavepointCompletion,
    rollback_on: R,
    body: F,
) -> Result<T, E>
where
    E: From<TxError>,
    F: FnOnce(TransactionStatus) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Fn(&E) -> bool,
{
    use SavepointCompletion::{Nested, NewTransaction, WithoutTransaction};
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
    let id = match tx
        .push_savepoint(ctx.bound_frame(key), name_of(definition))
        .await
    {
        Ok(id) => id,
        Err(e) => return Err(e.into()),
    };
    let enclosing = ctx.bindings();
    let kind = match completion {
        Nested => ScopeKind::Savepoint,
        NewTransaction => ScopeKind::SavepointAsTransaction,
        WithoutTransaction { .. } => ScopeKind::NoTransaction,
    };
    let scope = Arc::new(Scope::new(kind, Some(tx.clone()), name_of(definition)));
    let owns_hooks = !matches!(completion, WithoutTransaction { owns_hooks: false });
    let sync = if owns_hooks {
        Arc::new(SyncScope::default())
    } else {
        parent_sync.clone()
    };
    let status = TransactionStatus::owner(scope.clone());
    let sp_ctx = ctx
        .bind(key, Some(scope.clone()), Some(id))
        .with_scope(status.clone(), sync.clone());

    let mut guard = SavepointGuard {
        armed: Some((tx.clone(), id, owns_hooks.then(|| sync.clone()))),
        open: AtomicBool::new(true),
    };
    let end = BodyEnd::from_caught(
        sp_ctx
            .clone()
            .run(AssertUnwindSafe(body(status)).catch_unwind())
            .await,
    );

    // A participant inside that failed marked this scope; that mark belongs to the savepoint
    // and is undone with it (Spring resets it on rollback to savepoint).
    let marked_inside = scope.is_joined_rollback_only();
    let rollback = match &end {
        BodyEnd::Panicked(_) | BodyEnd::TimedOut => true,
        BodyEnd::Returned(Err(e)) => {
            rollback_on(e) || scope.is_local_rollback_only() || marked_inside
        }
        BodyEnd::Returned(Ok(_)) => scope.is_local_rollback_only() || marked_inside,
    };
    // ROLLBACK TO or RELEASE; a stand-in releases with a fallback that keeps the test
    // transaction usable, and one without a transaction keeps its work either way.
    let (tx_ref, open) = (&tx, &guard.open);
    let end_savepoint = move |rollback: bool| async move {
        let r = match completion {
            WithoutTransaction { .. } => {
                if let Err(e) = tx_ref.release_or_roll_back_savepoint(id).await {
                    tracing::debug!(target: "tx", "scope without transaction on savepoint {id}: {e}");
                }
                Ok(())
            }
            NewTransaction if !rollback => tx_ref.release_or_roll_back_savepoint(id).await,
            _ => tx_ref.pop_savepoint(id, rollback).await,
        };
        open.store(false, Ordering::Relaxed);
        r
    };
    // The guard stays armed until the savepoint is resolved: a call cancelled during
    // ROLLBACK TO / RELEASE still has its savepoint undone and its hooks completed.
    // `unresolved`: the savepoint's work could be neither undone nor kept; `refused`: a
    // stand-in of a new transaction did not commit after all.
    let (unresolved, refused) = match (completion, rollback) {
        (WithoutTransaction { owns_hooks: false }, _) => {
            let _ = end_savepoint(rollback).await;
            (None, None)
        }
        (_, true) => {
            let mut failure = None;
            sync.rollback(&sp_ctx, enclosing.as_ref(), async {
                failure = end_savepoint(true).await.err();
            })
            .await;
            (failure, None)
        }
        (Nested, false) => match end_savepoint(false).await {
            Ok(()) => {
                sync.hand_over_to(&parent_sync);
                (None, None)
            }
            Err(e) => {
                sync.rollback(&sp_ctx, enclosing.as_ref(), async {}).await;
                (Some(e), None)
            }
        },
        (NewTransaction | WithoutTransaction { .. }, false) => {
            // A hook may have marked the scope.
            let check = || {
                if scope.is_local_rollback_only() || scope.is_joined_rollback_only() {
                    Err(TxError::UnexpectedRollback)
                } else {
                    Ok(())
                }
            };
            let undo = async {
                if let Err(e) = end_savepoint(true).await {
                    tracing::warn!(target: "tx", "rollback to savepoint of [{}] failed: {e}", scope.name());
                    tx_ref.set_global_rollback_only();
                }
            };
            // Boxed: only test transactions come here, and the future of every scope would
            // otherwise carry this state.
            let (_, r) = Box::pin(sync.commit(
                &sp_ctx,
                enclosing.as_ref(),
                definition.is_read_only(),
                None,
                check,
                end_savepoint(false),
                undo,
            ))
            .await;
            (None, r.err())
        }
    };
    guard.armed = None;
    scope.set_completed();
    if let Some(e) = unresolved {
        // The savepoint's work could not be undone or kept: the whole transaction must go.
        tx.set_global_rollback_only();
        return Err(e.into());
    }
    if let Some(e) = refused {
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
struct NoTxCancelGuard(Option<(Arc<SyncScope>, Option<tokio::runtime::Handle>)>);

impl Drop for NoTxCancelGuard {
    fn drop(&mut self) {
        if let Some((sync, runtime)) = self.0.take() {
            sync.spawn_finish_cancelled(runtime.as_ref(), async {});
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
        Some(key) => ctx.bind(key, None, None),
        None => ctx,
    }
    .with_scope(status.clone(), sync.clone());

    let mut guard = NoTxCancelGuard(
        owns_sync.then(|| (sync.clone(), tokio::runtime::Handle::try_current().ok())),
    );
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
    // Its hooks run after it, outside it, with the suspended transactions still known.
    let enclosing = ctx.bindings();
    match end {
        Err(panic) => {
            sync.rollback(&ctx, enclosing.as_ref(), async {}).await;
            resume_unwind(panic)
        }
        Ok(r) => {
            let failed = match &r {
                Ok(_) => scope.is_local_rollback_only(),
                Err(e) => rollback_on(e) || scope.is_local_rollback_only(),
            };
            if failed {
                sync.rollback(&ctx, enclosing.as_ref(), async {}).await;
                r
            } else {
                let (_, hooks) = sync
                    .commit(
                        &ctx,
                        enclosing.as_ref(),
                        definition.is_read_only(),
                        None,
                        || Ok(()),
                        async { Ok(()) },
                        async {},
                    )
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
