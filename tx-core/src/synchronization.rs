//! Transaction synchronization: the hooks, where they register, and the one place that says
//! in which order their phases run around COMMIT and ROLLBACK.
//!
//! Commit: every `before_commit`, every `before_completion`, COMMIT, every `after_commit`,
//! every `after_completion(Committed)`. Rollback: every `before_completion`, ROLLBACK, every
//! `after_completion(RolledBack)`. Each phase runs over all hooks in registration order.
//! `before_commit` may veto the commit; later phases cannot undo anything, so their failures
//! and panics are logged and the next hook still runs.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::FutureExt;
use tokio::time::Instant;
use tracing::Instrument;

use crate::completion::Completion;
use crate::context::{self, Binding, Context as TxContext};
use crate::error::{BoxError, TxError};
use crate::manager::BoxFuture;

/// Callbacks around the completion of the current transaction (Spring's
/// `TransactionSynchronization`). Every method is optional; write them as `async fn`.
///
/// Registered with [`register_synchronization`] inside a transactional scope, a hook runs when
/// the transaction that owns the physical work completes (for a `Nested` savepoint that rolls
/// back: right then, as rolled back).
///
/// ```
/// use tx_core::{BoxError, Completion, TransactionSynchronization};
///
/// struct Outbox;
///
/// impl TransactionSynchronization for Outbox {
///     async fn before_commit(&self, read_only: bool) -> Result<(), BoxError> {
///         // e.g. flush pending writes; an Err here rolls the transaction back
///         let _ = read_only;
///         Ok(())
///     }
///     async fn after_commit(&self) {
///         // e.g. publish the message, now that the order is really there
///     }
///     async fn after_completion(&self, completion: Completion) {
///         let _ = completion;
///     }
/// }
/// ```
pub trait TransactionSynchronization: Send + Sync + 'static {
    /// Before COMMIT, inside the transaction (statements still run in it).
    ///
    /// # Errors
    ///
    /// An `Err` (or a panic) vetoes the commit: the transaction rolls back, the hooks after
    /// this one get no `before_commit`, and the committing call returns
    /// [`TxError::BeforeCommit`] carrying the error.
    ///
    /// # Cancel safety
    ///
    /// When the transactional call is dropped while this runs, this future is dropped with
    /// it, the transaction rolls back (never commits) and every hook still gets
    /// `after_completion(RolledBack)`, from a spawned task.
    fn before_commit(&self, read_only: bool) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = read_only;
        async { Ok(()) }
    }

    /// Before COMMIT or ROLLBACK, after every `before_commit`.
    ///
    /// # Errors
    ///
    /// None: it cannot change the outcome. A panic is caught and logged (target `"tx"`), and
    /// the next hook runs.
    ///
    /// # Cancel safety
    ///
    /// As for `before_commit`: dropped with a cancelled call, which then rolls back.
    fn before_completion(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// After a successful COMMIT, outside the transaction.
    ///
    /// # Errors
    ///
    /// None: the commit cannot be undone. A panic is caught and logged (target `"tx"`), and
    /// the next hook runs.
    ///
    /// # Cancel safety
    ///
    /// When the call is dropped after COMMIT succeeded, the hooks whose `after_commit` had
    /// not run yet do not get it; every hook still gets `after_completion(Committed)`. Keep
    /// work that must happen in `after_completion`, or in an outbox row written before the
    /// commit.
    fn after_commit(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// After COMMIT or ROLLBACK, with the outcome ([`Completion::Unknown`] when the
    /// connection was lost while COMMIT was in flight).
    ///
    /// # Errors
    ///
    /// None: the outcome stands. A panic is caught and logged (target `"tx"`), and the next
    /// hook runs.
    ///
    /// # Cancel safety
    ///
    /// Runs once per hook, also for a cancelled call (then from a spawned task, with the
    /// outcome the call reached). A hook interrupted while running it is not called again.
    fn after_completion(&self, completion: Completion) -> impl Future<Output = ()> + Send {
        let _ = completion;
        async {}
    }
}

/// A phase that runs over every hook and that another task finishes when its caller goes
/// away (see [`SyncScope::finish_cancelled`]).
#[derive(Clone, Copy)]
pub(crate) enum Phase {
    BeforeCompletion,
    AfterCommit,
    AfterCompletion(Completion),
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::BeforeCompletion => "before_completion",
            Phase::AfterCommit => "after_commit",
            Phase::AfterCompletion(_) => "after_completion",
        }
    }
}

/// Object-safe view of a [`TransactionSynchronization`].
pub(crate) trait DynSynchronization: Send + Sync {
    fn before_commit(&self, read_only: bool) -> BoxFuture<'_, Result<(), BoxError>>;
    /// The hook's call in `phase`, owning the hook (it may be finished by another task), its
    /// panics caught and logged.
    fn call(self: Arc<Self>, phase: Phase) -> BoxFuture<'static, ()>;
}

impl<S: TransactionSynchronization> DynSynchronization for S {
    fn before_commit(&self, read_only: bool) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(TransactionSynchronization::before_commit(self, read_only))
    }
    fn call(self: Arc<Self>, phase: Phase) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let run = async {
                match phase {
                    Phase::BeforeCompletion => {
                        TransactionSynchronization::before_completion(&*self).await
                    }
                    Phase::AfterCommit => TransactionSynchronization::after_commit(&*self).await,
                    Phase::AfterCompletion(c) => {
                        TransactionSynchronization::after_completion(&*self, c).await
                    }
                }
            };
            if let Err(panic) = AssertUnwindSafe(run).catch_unwind().await {
                log_panic(phase.name(), &*panic);
            }
        })
    }
}

type Hook = Arc<dyn DynSynchronization>;

/// Registration order across every hook list of the process: a released savepoint's hooks are
/// merged into the enclosing list by it, so each phase still runs in registration order when
/// a sibling scope registered into the enclosing list in between (`join!`).
static NEXT_HOOK: AtomicU64 = AtomicU64::new(0);

/// A registered hook and its place in the registration order.
struct Registered {
    seq: u64,
    hook: Hook,
}

/// How far a scope's completion sequence got; a scope dropped mid-way (a cancelled call)
/// finishes from there, so every hook still sees exactly one `after_commit` after a commit
/// and exactly one `after_completion`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Stage {
    Open,
    BeforeCommit,
    BeforeCompletion,
    RollbackSent,
    CommitSent,
    AfterCommit,
    AfterCompletion,
    Finished,
}

/// The hooks registered with one synchronization owner, and how far its completion got.
pub(crate) struct SyncScope {
    /// In registration order.
    hooks: Mutex<Vec<Registered>>,
    stage: AtomicU8,
    /// In a resumable phase: the index of the next hook to call.
    next: AtomicUsize,
    /// What `after_completion` reports.
    completion: AtomicU8,
    /// In a resumable phase: the hook call in progress. It lives here, not in the caller's
    /// future, so that a caller dropped mid-call leaves it for the task that finishes the
    /// sequence: the call completes once, neither cut short nor repeated.
    running: Mutex<Option<BoxFuture<'static, ()>>>,
}

impl Default for SyncScope {
    fn default() -> Self {
        SyncScope {
            hooks: Mutex::default(),
            stage: AtomicU8::new(Stage::Open as u8),
            next: AtomicUsize::new(0),
            completion: AtomicU8::new(Completion::RolledBack as u8),
            running: Mutex::new(None),
        }
    }
}

/// Completes the hook call in progress of a [`SyncScope`], if any.
struct InProgress<'a>(&'a SyncScope);

impl Future for InProgress<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut running = self.0.running();
        match running.as_mut().map(|call| call.as_mut().poll(cx)) {
            None => Poll::Ready(()),
            Some(Poll::Ready(())) => {
                *running = None;
                Poll::Ready(())
            }
            Some(Poll::Pending) => Poll::Pending,
        }
    }
}

impl SyncScope {
    fn hooks(&self) -> std::sync::MutexGuard<'_, Vec<Registered>> {
        self.hooks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Option<BoxFuture<'static, ()>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, hook: Hook) {
        let mut hooks = self.hooks();
        // Numbered under the list's lock, so a list is always in order.
        let seq = NEXT_HOOK.fetch_add(1, Ordering::Relaxed);
        hooks.push(Registered { seq, hook });
    }

    /// The `i`-th hook; the list may grow while a phase runs (a `before_commit` hook may
    /// register another).
    fn get(&self, i: usize) -> Option<Hook> {
        self.hooks().get(i).map(|r| r.hook.clone())
    }

    fn stage(&self) -> Stage {
        match self.stage.load(Ordering::Relaxed) {
            0 => Stage::Open,
            1 => Stage::BeforeCommit,
            2 => Stage::BeforeCompletion,
            3 => Stage::RollbackSent,
            4 => Stage::CommitSent,
            5 => Stage::AfterCommit,
            6 => Stage::AfterCompletion,
            _ => Stage::Finished,
        }
    }

    fn set_stage(&self, stage: Stage) {
        self.stage.store(stage as u8, Ordering::Relaxed);
    }

    fn completion(&self) -> Completion {
        match self.completion.load(Ordering::Relaxed) {
            c if c == Completion::Committed as u8 => Completion::Committed,
            c if c == Completion::Unknown as u8 => Completion::Unknown,
            _ => Completion::RolledBack,
        }
    }

    /// Hands the hooks of a released savepoint to the enclosing owner, merged into its list
    /// by registration order (a concurrent sibling may have registered there meanwhile).
    ///
    /// A phase of the parent in progress is never reordered: it runs only after the body that
    /// released the savepoint, or inside a hook, after every hook it has already called was
    /// registered.
    pub(crate) fn hand_over_to(&self, parent: &SyncScope) {
        let hooks = std::mem::take(&mut *self.hooks());
        if !hooks.is_empty() {
            let mut list = parent.hooks();
            list.extend(hooks);
            // Both parts are sorted: the stable sort is a merge.
            list.sort_by_key(|r| r.seq);
        }
        self.set_stage(Stage::Finished);
    }

    /// Runs `before_commit` of every hook, stopping at the first failure.
    async fn before_commit(&self, read_only: bool) -> Result<(), TxError> {
        let mut i = 0;
        while let Some(hook) = self.get(i) {
            match AssertUnwindSafe(hook.before_commit(read_only))
                .catch_unwind()
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(TxError::BeforeCommit(e)),
                Err(panic) => return Err(TxError::BeforeCommit(panic_message(&*panic).into())),
            }
            i += 1;
        }
        Ok(())
    }

    fn begin_phase(&self, stage: Stage) {
        self.next.store(0, Ordering::Relaxed);
        self.set_stage(stage);
    }

    /// Runs the current resumable phase over the hooks not yet called, first finishing a
    /// call in progress. Later phases cannot undo anything: a hook's panic is logged and the
    /// next hook still runs.
    async fn drive(&self) {
        let phase = match self.stage() {
            Stage::BeforeCompletion => Phase::BeforeCompletion,
            Stage::AfterCommit => Phase::AfterCommit,
            Stage::AfterCompletion => Phase::AfterCompletion(self.completion()),
            _ => return,
        };
        loop {
            InProgress(self).await;
            let i = self.next.load(Ordering::Relaxed);
            let Some(hook) = self.get(i) else {
                return;
            };
            self.next.store(i + 1, Ordering::Relaxed);
            *self.running() = Some(hook.call(phase));
        }
    }

    /// The context hooks run in once their scope completed: outside every transaction, still
    /// knowing which transactions this task holds (a single-writer backend fails fast there).
    fn after_context(&self, enclosing: Option<&Arc<Binding>>) -> TxContext {
        if self.hooks().is_empty() {
            TxContext::default()
        } else {
            TxContext::suspended(enclosing)
        }
    }

    /// Every `after_completion(completion)`, then the sequence is finished.
    async fn complete(&self, enclosing: Option<&Arc<Binding>>, completion: Completion) {
        self.completion.store(completion as u8, Ordering::Relaxed);
        self.begin_phase(Stage::AfterCompletion);
        self.after_context(enclosing).run(self.drive()).await;
        self.set_stage(Stage::Finished);
    }

    /// The commit sequence around `commit` (the physical COMMIT, or nothing for a scope
    /// without a transaction). The phases before COMMIT run in `tx_ctx` (statements still go
    /// into the transaction), `before_commit` bounded by `deadline`; `check` then decides
    /// whether COMMIT may still go out (a hook may have marked the transaction, or run past
    /// its deadline). The phases after it run outside the transaction (`enclosing`: the
    /// bindings of the scopes around it).
    ///
    /// Returns how it ended, and the error when it did not commit.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn commit<C, F, R>(
        &self,
        tx_ctx: &TxContext,
        enclosing: Option<&Arc<Binding>>,
        read_only: bool,
        deadline: Option<Instant>,
        check: C,
        commit: F,
        rollback: R,
    ) -> (Completion, Result<(), TxError>)
    where
        C: FnOnce() -> Result<(), TxError>,
        F: Future<Output = Result<(), TxError>>,
        R: Future<Output = ()>,
    {
        self.set_stage(Stage::BeforeCommit);
        let before = tx_ctx.clone().run(self.before_commit(read_only));
        let before = match deadline {
            Some(d) => tokio::time::timeout_at(d, before)
                .await
                .unwrap_or(Err(TxError::Timeout)),
            None => before.await,
        };
        let checked = match before {
            // A hook that failed past the deadline failed because of it.
            Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => Err(TxError::Timeout),
            Err(e) => Err(e),
            Ok(()) => {
                self.begin_phase(Stage::BeforeCompletion);
                tx_ctx.clone().run(self.drive()).await;
                check()
            }
        };
        if let Err(e) = checked {
            tracing::debug!(target: "tx", "not committing, rolling back: {e}");
            self.rollback(tx_ctx, enclosing, rollback).await;
            return (Completion::RolledBack, Err(e));
        }
        self.set_stage(Stage::CommitSent);
        let (completion, result) = match commit.await {
            Ok(()) => {
                self.begin_phase(Stage::AfterCommit);
                self.after_context(enclosing).run(self.drive()).await;
                (Completion::Committed, Ok(()))
            }
            Err(e @ TxError::CommitOutcomeUnknown(_)) => (Completion::Unknown, Err(e)),
            Err(e) => (Completion::RolledBack, Err(e)),
        };
        self.complete(enclosing, completion).await;
        (completion, result)
    }

    /// The rollback sequence around `rollback` (the physical ROLLBACK or ROLLBACK TO).
    pub(crate) async fn rollback(
        &self,
        tx_ctx: &TxContext,
        enclosing: Option<&Arc<Binding>>,
        rollback: impl Future<Output = ()>,
    ) {
        if self.stage() < Stage::BeforeCompletion {
            self.begin_phase(Stage::BeforeCompletion);
        }
        if self.stage() == Stage::BeforeCompletion {
            tx_ctx.clone().run(self.drive()).await;
        }
        self.set_stage(Stage::RollbackSent);
        rollback.await;
        self.complete(enclosing, Completion::RolledBack).await;
    }

    /// Finishes the sequence of a scope dropped before it completed (a cancelled call), from
    /// where it stopped, a hook call in progress included: before COMMIT was sent it rolls back
    /// (`rollback`); with COMMIT in flight the outcome is unknown; after it, the remaining
    /// `after_commit` calls run, then every `after_completion(Committed)`.
    ///
    /// Returns the outcome the sequence reached.
    pub(crate) async fn finish_cancelled(&self, rollback: impl Future<Output = ()>) -> Completion {
        let ctx = TxContext::default();
        match self.stage() {
            Stage::Open | Stage::BeforeCommit | Stage::BeforeCompletion => {
                self.rollback(&ctx, None, rollback).await;
            }
            Stage::RollbackSent => self.complete(None, Completion::RolledBack).await,
            Stage::CommitSent => self.complete(None, Completion::Unknown).await,
            Stage::AfterCommit => {
                ctx.run(self.drive()).await;
                self.complete(None, Completion::Committed).await;
            }
            Stage::AfterCompletion => {
                ctx.run(self.drive()).await;
                self.set_stage(Stage::Finished);
            }
            Stage::Finished => {}
        }
        self.completion()
    }

    /// Spawns [`finish_cancelled`](Self::finish_cancelled) (a destructor cannot wait) on the
    /// current runtime, or outside any on `runtime` (the one the scope began on), in `span`
    /// (the cancelled scope's), then calls `done` with the outcome. Without either runtime,
    /// `rollback` is dropped, which drops the physical transaction and so rolls it back.
    pub(crate) fn spawn_finish_cancelled(
        self: Arc<Self>,
        runtime: Option<&tokio::runtime::Handle>,
        span: &tracing::Span,
        rollback: impl Future<Output = ()> + Send + 'static,
        done: impl FnOnce(Completion) + Send + 'static,
    ) {
        let finish =
            async move { done(self.finish_cancelled(rollback).await) }.instrument(span.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(finish);
            }
            Err(_) => match runtime {
                Some(rt) => {
                    rt.spawn(finish);
                }
                None => {
                    tracing::warn!(
                        target: "tx",
                        "transactional scope dropped outside a tokio runtime: rolled back, hooks not run"
                    );
                    let dropped = std::panic::catch_unwind(AssertUnwindSafe(move || drop(finish)));
                    if dropped.is_err() {
                        tracing::warn!(target: "tx", "dropping a cancelled scope outside a tokio runtime panicked");
                    }
                }
            },
        }
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_owned()
    }
}

fn log_panic(phase: &str, panic: &(dyn std::any::Any + Send)) {
    tracing::error!(
        target: "tx",
        "{phase} synchronization {}; ignored, the transaction outcome stands",
        panic_message(panic)
    );
}

/// Registers `sync` with the current transactional scope.
///
/// Fails with [`TxError::NoTransaction`] outside every transactional scope.
///
/// ```
/// use tx_core::{TransactionSynchronization, TxError};
/// struct Nothing;
/// impl TransactionSynchronization for Nothing {}
/// assert!(matches!(tx_core::register_synchronization(Nothing), Err(TxError::NoTransaction)));
/// ```
pub fn register_synchronization(sync: impl TransactionSynchronization) -> Result<(), TxError> {
    context::current_sync()?.push(Arc::new(sync));
    Ok(())
}

struct OnCompletion<F>(Mutex<Option<F>>);

impl<F> OnCompletion<F> {
    fn take(&self) -> Option<F> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

struct AfterCommit(OnCompletion<BoxFuture<'static, ()>>);

impl TransactionSynchronization for AfterCommit {
    async fn after_commit(&self) {
        if let Some(fut) = self.0.take() {
            fut.await;
        }
    }
}

struct AfterRollback(OnCompletion<BoxFuture<'static, ()>>);

impl TransactionSynchronization for AfterRollback {
    async fn after_completion(&self, completion: Completion) {
        if completion == Completion::RolledBack
            && let Some(fut) = self.0.take()
        {
            fut.await;
        }
    }
}

type CompletionFn = Box<dyn FnOnce(Completion) -> BoxFuture<'static, ()> + Send>;

struct AfterCompletion(OnCompletion<CompletionFn>);

impl TransactionSynchronization for AfterCompletion {
    async fn after_completion(&self, completion: Completion) {
        if let Some(f) = self.0.take() {
            f(completion).await;
        }
    }
}

/// Runs `fut` after the current transaction commits (never if it rolls back).
///
/// ```
/// use tx_core::TxError;
/// // Outside every transactional scope the registration fails.
/// assert!(matches!(tx_core::after_commit(async {}), Err(TxError::NoTransaction)));
/// ```
pub fn after_commit(fut: impl Future<Output = ()> + Send + 'static) -> Result<(), TxError> {
    register_synchronization(AfterCommit(OnCompletion(Mutex::new(Some(Box::pin(fut))))))
}

/// Runs `fut` after the current transaction rolls back (never if it commits).
///
/// ```
/// assert!(tx_core::after_rollback(async {}).is_err());
/// ```
pub fn after_rollback(fut: impl Future<Output = ()> + Send + 'static) -> Result<(), TxError> {
    register_synchronization(AfterRollback(OnCompletion(Mutex::new(Some(Box::pin(fut))))))
}

/// Runs `f(completion)` after the current transaction completes, either way.
///
/// ```
/// use tx_core::Completion;
/// assert!(tx_core::after_completion(|c: Completion| async move { let _ = c; }).is_err());
/// ```
pub fn after_completion<F, Fut>(f: F) -> Result<(), TxError>
where
    F: FnOnce(Completion) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let f: CompletionFn = Box::new(move |c| Box::pin(f(c)));
    register_synchronization(AfterCompletion(OnCompletion(Mutex::new(Some(f)))))
}
