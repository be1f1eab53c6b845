//! The propagation engine (Spring's `AbstractPlatformTransactionManager`), written once for
//! every backend: decides per scope whether to join, begin, suspend, savepoint or refuse, runs
//! the body, and completes what the scope owns.

use std::borrow::Cow;
use std::future::Future;
use std::panic::{AssertUnwindSafe, resume_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::FutureExt;
use tracing::Instrument;

use crate::completion::Completion;
use crate::context::Context;
use crate::definition::{Isolation, Propagation, TransactionDefinition};
use crate::error::TxError;
use crate::manager::{ManagerKey, ShareManager, SharedManager};
use crate::observe::listener::{self, Callback};
use crate::observe::metrics as tx_metrics;
use crate::observe::span::{Fields, ScopeTrace};
use crate::observe::{self, Ending, RollbackCause};
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

    /// The backend as `db.system` (looked up only for an enabled span).
    fn db_system(&self) -> &'static str {
        let name = match *self.by {
            ManagerRef::Shared(m) => m.backend_name(),
            ManagerRef::Borrowed(m) => m.backend_name(),
            ManagerRef::Default | ManagerRef::Named(_) => {
                self.share().map_or("unknown", |m| m.backend_name())
            }
        };
        observe::db_system(name)
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
    /// The first such failure of the transaction, handled by a `Nested` scope or not.
    pub(crate) seen_retryable: Option<Retryable>,
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
            participate(ctx, owner, definition, rollback_on, body).await,
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
            let result =
                without_transaction(ctx, &manager, Some(key), definition, rollback_on, body).await;
            log_resume(&suspended);
            (result, RunInfo::default())
        }
        (Propagation::Supports | Propagation::NotSupported | Propagation::Never, None) => (
            without_transaction(ctx, &manager, None, definition, rollback_on, body).await,
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
struct ParticipantGuard<'a> {
    owner: Option<&'a Scope>,
    trace: &'a ScopeTrace,
}

impl Drop for ParticipantGuard<'_> {
    fn drop(&mut self) {
        if let Some(owner) = self.owner {
            owner.mark_joined_rollback_only();
            self.trace.close(None, Some(RollbackCause::Cancelled));
        }
    }
}

/// Required/Supports/Mandatory inside a transaction: run in it; a failure marks it
/// rollback-only for its owner.
async fn participate<T, E, F, Fut, R>(
    ctx: Context,
    owner: Arc<Scope>,
    definition: &TransactionDefinition,
    rollback_on: R,
    body: F,
) -> Result<T, E>
where
    F: FnOnce(TransactionStatus) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Fn(&E) -> bool,
{
    // The hot path: with no interested subscriber, one callsite check and no-op enters.
    let trace = ScopeTrace::open(false, || {
        let tx = owner.tx.as_deref();
        Fields {
            name: definition.get_name(),
            propagation: definition.get_propagation(),
            isolation: tx.map_or(Isolation::Default, |tx| tx.definition.get_isolation()),
            read_only: tx.is_some_and(|tx| tx.definition.is_read_only()),
            backend: tx.map_or("unknown", |tx| tx.db_system()),
            tx_id: tx.map(|tx| tx.id),
            scope_id: observe::next_id(),
            scope: "participant",
            attempt: tx.map_or(1, |tx| tx.attempt()),
        }
    });
    trace.in_scope(|| {
        tracing::debug!(target: "tx", "Participating in existing transaction [{}]", owner.name());
    });
    let status = TransactionStatus::participant(owner.clone());
    let mut guard = ParticipantGuard {
        owner: Some(&owner),
        trace: &trace,
    };
    // Two awaits rather than one wrapper: without a span the body is polled as before.
    let end = match trace.enabled_span() {
        None => {
            ctx.with_status(status.clone())
                .run(AssertUnwindSafe(body(status)).catch_unwind())
                .await
        }
        Some(span) => {
            ctx.with_status(status.clone())
                .run(AssertUnwindSafe(body(status)).catch_unwind())
                .instrument(span.clone())
                .await
        }
    };
    guard.owner = None;
    match end {
        Ok(Ok(v)) => {
            trace.close(None, None);
            Ok(v)
        }
        Ok(Err(e)) => {
            let marks = rollback_on(&e);
            if marks {
                trace.in_scope(|| {
                    tracing::debug!(
                        target: "tx",
                        "Participating transaction failed - marking existing transaction [{}] as rollback-only",
                        owner.name()
                    );
                });
                owner.mark_joined_rollback_only();
            }
            trace.close(None, marks.then_some(RollbackCause::Error));
            Err(e)
        }
        Err(panic) => {
            owner.mark_joined_rollback_only();
            trace.close(None, Some(RollbackCause::Panic));
            resume_unwind(panic)
        }
    }
}

/// Completes a cancelled new transaction: rolls back (unless COMMIT was already sent) and
/// finishes its hooks from where they stopped, in a spawned task (a destructor cannot wait).
struct CancelGuard {
    armed: Option<(Arc<Transaction>, Arc<SyncScope>, ScopeTrace)>,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let Some((tx, sync, trace)) = self.armed.take() else {
            return;
        };
        tracing::debug!(target: "tx", "Transactional call [{}] cancelled: rolling back", tx.name());
        let physical = tx.try_take_physical();
        let runtime = tx.runtime().cloned();
        let span = trace.span();
        let rolling_back = tx.clone();
        sync.spawn_finish_cancelled(
            runtime.as_ref(),
            &span,
            async move {
                listener::notify(Callback::BeforeRollback, || rolling_back.execution());
                if let Some(p) = physical
                    && let Err(e) = p.rollback().await
                {
                    tracing::warn!(target: "tx", "rollback of cancelled transaction failed: {e}");
                }
            },
            move |completion| {
                let ending = match completion {
                    Completion::Committed => Ending::COMMITTED,
                    Completion::Unknown => Ending::UNKNOWN,
                    Completion::RolledBack => Ending::rolled_back(RollbackCause::Cancelled),
                };
                notify_after(&tx, ending, None);
                finish_transaction(&tx, &trace, ending);
            },
        );
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

/// The listeners' `after_commit` or `after_rollback` for a transaction that ended so
/// (`failure`: the error of a commit whose outcome is unknown).
fn notify_after(tx: &Transaction, ending: Ending, failure: Option<&TxError>) {
    match ending.cause {
        Some(cause) => listener::notify(Callback::AfterRollback(cause), || tx.execution()),
        None if ending.completion == Completion::Unknown && failure.is_none() => {
            let cancelled = TxError::CommitOutcomeUnknown(
                "the call was cancelled while COMMIT was in flight".into(),
            );
            listener::notify(Callback::AfterCommit(Some(&cancelled)), || tx.execution());
        }
        None => listener::notify(Callback::AfterCommit(failure), || tx.execution()),
    }
}

/// Reports a completed transaction: the log line, its span's outcome, the metrics.
fn finish_transaction(tx: &Transaction, trace: &ScopeTrace, ending: Ending) {
    // Recorded first, so that the line shows them in its span's fields.
    trace.close(Some(ending.completion), ending.cause);
    tracing::debug!(target: "tx", "Completed transaction [{}]: {ending}", tx.name());
    tx_metrics::transaction_completed(tx.definition.name_cow(), ending, trace.elapsed());
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
    let tx = Arc::new(Transaction::new(
        manager,
        definition.clone(),
        key,
        ctx.bindings(),
        attempt,
    ));
    // Timed also without a span when the duration histogram wants it.
    let trace = ScopeTrace::open(cfg!(feature = "metrics"), || Fields {
        name: tx.name(),
        propagation: tx.definition.get_propagation(),
        isolation: tx.definition.get_isolation(),
        read_only: tx.definition.is_read_only(),
        backend: tx.db_system(),
        tx_id: Some(tx.id),
        scope_id: tx.id,
        scope: "new_transaction",
        attempt,
    });
    // Built where it is awaited (a wrapper would copy the whole future), wrapped only for a
    // span.
    match trace.enabled_span().cloned() {
        None => run_transaction(ctx, key, tx, trace, rollback_on, body).await,
        Some(span) => {
            run_transaction(ctx, key, tx, trace, rollback_on, body)
                .instrument(span)
                .await
        }
    }
}

/// The body and completion of [`new_transaction`], in its span.
async fn run_transaction<T, E, F, Fut, R>(
    ctx: Context,
    key: ManagerKey,
    tx: Arc<Transaction>,
    trace: ScopeTrace,
    rollback_on: R,
    body: F,
) -> (Result<T, E>, RunInfo)
where
    E: From<TxError>,
    F: FnOnce(TransactionStatus) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Fn(&E) -> bool,
{
    log_new(&tx.definition);
    listener::notify(Callback::BeforeBegin, || tx.execution());
    let scope = Arc::new(Scope::new(
        ScopeKind::NewTransaction,
        Some(tx.clone()),
        tx.definition.name_cow().clone(),
    ));
    let sync = Arc::new(SyncScope::default());
    let status = TransactionStatus::owner(scope.clone());
    let tx_ctx = ctx
        .bind(key, Some(scope.clone()), None)
        .with_scope(status.clone(), sync.clone());
    listener::notify(Callback::AfterBegin(None), || tx.execution());

    let mut cancel = CancelGuard {
        armed: Some((tx.clone(), sync.clone(), trace)),
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
    // Decided when the body ended: a body that computed past the deadline without
    // awaiting must not commit, while its own error returned in time stays its error.
    let late = tx.past_deadline();

    let (result, ending) =
        complete_transaction(&tx, &scope, &sync, &tx_ctx, end, late, &rollback_on).await;
    let Some((_, _, trace)) = cancel.armed.take() else {
        unreachable!("disarmed only here")
    };
    scope.set_completed();
    finish_transaction(&tx, &trace, ending);
    let info = RunInfo {
        owned_transaction: true,
        rolled_back: ending.completion == Completion::RolledBack,
        retryable: tx.take_retryable(),
        seen_retryable: tx.take_seen_retryable(),
    };
    match result {
        Ok(r) => (r, info),
        Err(panic) => resume_unwind(panic),
    }
}

/// Commits or rolls back a transaction this scope began, per how its body ended (`late`:
/// past the deadline), and tells the listeners. `Err` carries a panic to resume once
/// everything is cleaned up.
#[allow(clippy::type_complexity)]
async fn complete_transaction<T, E, R>(
    tx: &Arc<Transaction>,
    scope: &Scope,
    sync: &SyncScope,
    tx_ctx: &Context,
    end: BodyEnd<T, E>,
    late: bool,
    rollback_on: &R,
) -> (Result<Result<T, E>, Box<dyn std::any::Any + Send>>, Ending)
where
    E: From<TxError>,
    R: Fn(&E) -> bool,
{
    let enclosing = tx.enclosing.as_ref();
    let rollback = || async {
        tracing::debug!(target: "tx", "Initiating transaction rollback [{}]", tx.name());
        listener::notify(Callback::BeforeRollback, || tx.execution());
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
    // What the call returns, and why it must roll back (`None`: try to commit).
    let (outcome, cause) = match end {
        BodyEnd::Panicked(panic) => {
            tracing::debug!(target: "tx", "Transactional body of [{}] panicked", tx.name());
            (Err(panic), Some(RollbackCause::Panic))
        }
        BodyEnd::TimedOut => {
            tracing::debug!(target: "tx", "Transaction [{}] timed out", tx.name());
            (
                Ok(Err(TxError::Timeout.into())),
                Some(RollbackCause::Timeout),
            )
        }
        BodyEnd::Returned(_) if late => {
            // Also a body that failed after the deadline failed because of it (a statement
            // cut by the server's statement timeout, or refused by the engine).
            tracing::debug!(target: "tx", "Transaction [{}] ended past its deadline: rolling back", tx.name());
            (
                Ok(Err(TxError::Timeout.into())),
                Some(RollbackCause::Timeout),
            )
        }
        BodyEnd::Returned(Ok(v)) => {
            let marked = scope.is_local_rollback_only();
            if marked {
                tracing::debug!(
                    target: "tx",
                    "Transactional code has requested rollback of [{}]",
                    tx.name()
                );
            }
            (Ok(Ok(v)), marked.then_some(RollbackCause::RollbackOnly))
        }
        BodyEnd::Returned(Err(e)) => {
            let cause = if rollback_on(&e) {
                Some(RollbackCause::Error)
            } else if scope.is_local_rollback_only() {
                Some(RollbackCause::RollbackOnly)
            } else {
                None
            };
            (Ok(Err(e)), cause)
        }
    };
    let (outcome, cause) = match cause {
        None if tx.is_global_rollback_only() => {
            tracing::debug!(
                target: "tx",
                "Global transaction [{}] is marked as rollback-only but transactional code requested commit",
                tx.name()
            );
            (
                Ok(Err(TxError::UnexpectedRollback.into())),
                Some(RollbackCause::RollbackOnly),
            )
        }
        cause => (outcome, cause),
    };
    if let Some(cause) = cause {
        sync.rollback(tx_ctx, enclosing, rollback()).await;
        let ending = Ending::rolled_back(cause);
        notify_after(tx, ending, None);
        return (outcome, ending);
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
    // Whether COMMIT was attempted (a failure then is the commit's, not a hook's or check's).
    let committing = AtomicBool::new(false);
    let commit_physical = async {
        tracing::debug!(target: "tx", "Initiating transaction commit [{}]", tx.name());
        committing.store(true, Ordering::Relaxed);
        listener::notify(Callback::BeforeCommit, || tx.execution());
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
        Ok(()) => {
            notify_after(tx, Ending::COMMITTED, None);
            (outcome, Ending::COMMITTED)
        }
        Err(e) => {
            if e.is_retryable() {
                tx.note_retryable(e.sqlstate());
            }
            let ending = match completion {
                Completion::Unknown => Ending::UNKNOWN,
                _ if committing.load(Ordering::Relaxed) => {
                    Ending::rolled_back(RollbackCause::CommitFailed)
                }
                _ => Ending::rolled_back(match e {
                    TxError::Timeout => RollbackCause::Timeout,
                    TxError::UnexpectedRollback => RollbackCause::RollbackOnly,
                    _ => RollbackCause::BeforeCommitFailed,
                }),
            };
            if completion == Completion::RolledBack {
                tracing::debug!(target: "tx", "Commit of [{}] failed: {e}", tx.name());
            }
            notify_after(tx, ending, Some(&e));
            (Ok(Err(e.into())), ending)
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
struct SavepointGuard<'a> {
    armed: Option<(Arc<Transaction>, u64, Option<Arc<SyncScope>>)>,
    /// Whether the savepoint is still open (its ROLLBACK TO / RELEASE has not returned).
    open: AtomicBool,
    /// Whether the listeners got `before_commit` or `before_rollback` already.
    resolving: AtomicBool,
    definition: &'a TransactionDefinition,
    scope_id: u64,
    trace: &'a ScopeTrace,
}

impl Drop for SavepointGuard<'_> {
    fn drop(&mut self) {
        if let Some((tx, id, sync)) = self.armed.take() {
            if self.open.load(Ordering::Relaxed) {
                tx.abandon_savepoint(id);
            }
            let exec = || tx.savepoint_execution(self.definition, self.scope_id);
            if !self.resolving.load(Ordering::Relaxed) {
                listener::notify(Callback::BeforeRollback, exec);
            }
            listener::notify(Callback::AfterRollback(RollbackCause::Cancelled), exec);
            self.trace
                .close(Some(Completion::RolledBack), Some(RollbackCause::Cancelled));
            if let Some(sync) = sync {
                sync.spawn_finish_cancelled(tx.runtime(), &self.trace.span(), async {}, |_| {});
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
    let tx = owner.tx.clone().expect("a bound scope has a transaction");
    let scope_id = observe::next_id();
    let trace = ScopeTrace::open(false, || Fields {
        name: definition.get_name(),
        propagation: definition.get_propagation(),
        isolation: tx.definition.get_isolation(),
        read_only: tx.definition.is_read_only(),
        backend: tx.db_system(),
        tx_id: Some(tx.id),
        scope_id,
        scope: "savepoint",
        attempt: tx.attempt(),
    });
    let run = SavepointRun {
        ctx,
        key,
        completion,
        tx,
        scope_id,
        definition,
        trace: &trace,
    };
    match trace.enabled_span().cloned() {
        None => run_savepoint(run, rollback_on, body).await,
        Some(span) => run_savepoint(run, rollback_on, body).instrument(span).await,
    }
}

/// What [`run_savepoint`] runs in.
struct SavepointRun<'a> {
    ctx: Context,
    key: ManagerKey,
    completion: SavepointCompletion,
    tx: Arc<Transaction>,
    scope_id: u64,
    definition: &'a TransactionDefinition,
    trace: &'a ScopeTrace,
}

/// The body and completion of [`savepoint`], in its span.
async fn run_savepoint<T, E, F, Fut, R>(
    run: SavepointRun<'_>,
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
    let SavepointRun {
        ctx,
        key,
        completion,
        tx,
        scope_id,
        definition,
        trace,
    } = run;
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
    let exec = || tx.savepoint_execution(definition, scope_id);
    listener::notify(Callback::BeforeBegin, exec);
    let id = match tx
        .push_savepoint(ctx.bound_frame(key), name_of(definition))
        .await
    {
        Ok(id) => id,
        Err(e) => {
            listener::notify(Callback::AfterBegin(Some(&e)), exec);
            return Err(e.into());
        }
    };
    listener::notify(Callback::AfterBegin(None), exec);
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
        resolving: AtomicBool::new(false),
        definition,
        scope_id,
        trace,
    };
    let end = BodyEnd::from_caught(
        sp_ctx
            .clone()
            .run(AssertUnwindSafe(body(status)).catch_unwind())
            .await,
    );

    // A participant inside that failed marked this scope; that mark belongs to the
    // savepoint and is undone with it (Spring resets it on rollback to savepoint).
    let marked_inside = scope.is_joined_rollback_only();
    let marked = scope.is_local_rollback_only() || marked_inside;
    let cause = match &end {
        BodyEnd::Panicked(_) => Some(RollbackCause::Panic),
        BodyEnd::TimedOut => Some(RollbackCause::Timeout),
        BodyEnd::Returned(Err(e)) if rollback_on(e) => Some(if tx.past_deadline() {
            RollbackCause::Timeout
        } else {
            RollbackCause::Error
        }),
        BodyEnd::Returned(_) => marked.then_some(RollbackCause::RollbackOnly),
    };
    // ROLLBACK TO or RELEASE; a stand-in releases with a fallback that keeps the test
    // transaction usable, and one without a transaction keeps its work either way.
    let rollback = cause.is_some();
    let (tx_ref, open, resolving) = (&tx, &guard.open, &guard.resolving);
    let end_savepoint = move |rollback: bool| async move {
        if !resolving.swap(true, Ordering::Relaxed) {
            let callback = if rollback {
                Callback::BeforeRollback
            } else {
                Callback::BeforeCommit
            };
            listener::notify(callback, exec);
        }
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
    let ending = match (cause, &unresolved, &refused) {
        (Some(cause), _, _) => Ending::rolled_back(cause),
        (None, Some(_), _) => Ending::rolled_back(RollbackCause::CommitFailed),
        (None, None, Some(_)) => Ending::rolled_back(RollbackCause::BeforeCommitFailed),
        (None, None, None) => Ending::COMMITTED,
    };
    match ending.cause {
        Some(cause) => listener::notify(Callback::AfterRollback(cause), exec),
        None => listener::notify(Callback::AfterCommit(None), exec),
    }
    trace.close(Some(ending.completion), ending.cause);
    tracing::debug!(
        target: "tx",
        "Completed nested transaction [{}] in [{}]: {}",
        definition.get_name(),
        tx.name(),
        match ending.cause {
            None => "savepoint released".to_owned(),
            Some(cause) => format!("rolled back to savepoint ({cause})"),
        }
    );
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

/// Completes the hooks of a cancelled scope without a transaction (when it owns them).
struct NoTxCancelGuard<'a> {
    armed: bool,
    sync: Option<(Arc<SyncScope>, Option<tokio::runtime::Handle>)>,
    trace: &'a ScopeTrace,
}

impl Drop for NoTxCancelGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.trace
            .close(Some(Completion::RolledBack), Some(RollbackCause::Cancelled));
        if let Some((sync, runtime)) = self.sync.take() {
            sync.spawn_finish_cancelled(runtime.as_ref(), &self.trace.span(), async {}, |_| {});
        }
    }
}

/// Supports/NotSupported/Never without a transaction: statements run in autocommit. Such a
/// scope still collects hooks and, when it owns them, runs them at its end: as committed if it
/// ended `Ok` and unmarked, else as rolled back. `suspend` is the manager whose transaction
/// NotSupported suspends.
async fn without_transaction<T, E, F, Fut, R>(
    ctx: Context,
    manager: &Resolved<'_, '_>,
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
    let trace = ScopeTrace::open(false, || Fields {
        name: definition.get_name(),
        propagation: definition.get_propagation(),
        isolation: Isolation::Default,
        read_only: false,
        backend: manager.db_system(),
        tx_id: None,
        scope_id: observe::next_id(),
        scope: "no_transaction",
        attempt: 1,
    });
    match trace.enabled_span().cloned() {
        None => run_without(ctx, suspend, definition, &trace, rollback_on, body).await,
        Some(span) => {
            run_without(ctx, suspend, definition, &trace, rollback_on, body)
                .instrument(span)
                .await
        }
    }
}

/// The body and hooks of [`without_transaction`], in its span.
async fn run_without<T, E, F, Fut, R>(
    ctx: Context,
    suspend: Option<ManagerKey>,
    definition: &TransactionDefinition,
    trace: &ScopeTrace,
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
    // A scope without a transaction inside another such scope registers into that one's
    // list.
    let (sync, owns_sync) = match (suspend, ctx.sync()) {
        (None, Some(outer)) => (outer.clone(), false),
        _ => (Arc::new(SyncScope::default()), true),
    };
    let ctx = match suspend {
        Some(key) => ctx.bind(key, None, None),
        None => ctx,
    }
    .with_scope(status.clone(), sync.clone());

    let mut guard = NoTxCancelGuard {
        armed: true,
        sync: owns_sync.then(|| (sync.clone(), tokio::runtime::Handle::try_current().ok())),
        trace,
    };
    let end = ctx
        .clone()
        .run(AssertUnwindSafe(body(status)).catch_unwind())
        .await;
    scope.set_completed();
    let cause = match &end {
        Err(_) => Some(RollbackCause::Panic),
        Ok(Err(e)) if rollback_on(e) => Some(RollbackCause::Error),
        Ok(_) => scope
            .is_local_rollback_only()
            .then_some(RollbackCause::RollbackOnly),
    };
    if !owns_sync {
        guard.armed = false;
        trace.close(Some(completion_of(cause)), cause);
        return match end {
            Ok(r) => r,
            Err(panic) => resume_unwind(panic),
        };
    }
    // Its hooks run after it, outside it, with the suspended transactions still known.
    let enclosing = ctx.bindings();
    let Some(cause) = cause else {
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
        // Armed until the hooks completed: a caller that goes away in any phase of them
        // leaves the rest of the sequence to a spawned task (as for a transaction).
        guard.armed = false;
        return match (end, hooks) {
            (Ok(r), Ok(())) => {
                trace.close(Some(Completion::Committed), None);
                r
            }
            (Ok(_), Err(e)) => {
                trace.close(
                    Some(Completion::RolledBack),
                    Some(RollbackCause::BeforeCommitFailed),
                );
                Err(e.into())
            }
            (Err(_), _) => unreachable!("a panic has a cause"),
        };
    };
    sync.rollback(&ctx, enclosing.as_ref(), async {}).await;
    guard.armed = false;
    trace.close(Some(Completion::RolledBack), Some(cause));
    match end {
        Ok(r) => r,
        Err(panic) => resume_unwind(panic),
    }
}

fn completion_of(cause: Option<RollbackCause>) -> Completion {
    match cause {
        None => Completion::Committed,
        Some(_) => Completion::RolledBack,
    }
}

fn name_of(definition: &TransactionDefinition) -> Cow<'static, str> {
    definition.name_cow().clone()
}
