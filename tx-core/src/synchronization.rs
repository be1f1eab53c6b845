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
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;

use crate::completion::Completion;
use crate::context::{self, Context};
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

/// Object-safe view of a [`TransactionSynchronization`].
pub(crate) trait DynSynchronization: Send + Sync {
    fn before_commit(&self, read_only: bool) -> BoxFuture<'_, Result<(), BoxError>>;
    fn before_completion(&self) -> BoxFuture<'_, ()>;
    fn after_commit(&self) -> BoxFuture<'_, ()>;
    fn after_completion(&self, completion: Completion) -> BoxFuture<'_, ()>;
}

impl<S: TransactionSynchronization> DynSynchronization for S {
    fn before_commit(&self, read_only: bool) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(TransactionSynchronization::before_commit(self, read_only))
    }
    fn before_completion(&self) -> BoxFuture<'_, ()> {
        Box::pin(TransactionSynchronization::before_completion(self))
    }
    fn after_commit(&self) -> BoxFuture<'_, ()> {
        Box::pin(TransactionSynchronization::after_commit(self))
    }
    fn after_completion(&self, completion: Completion) -> BoxFuture<'_, ()> {
        Box::pin(TransactionSynchronization::after_completion(
            self, completion,
        ))
    }
}

type Hook = Arc<dyn DynSynchronization>;

/// How far a scope's completion sequence got; a scope dropped mid-way (a cancelled call)
/// finishes from there, so every hook still sees exactly one `after_completion`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Stage {
    Open,
    BeforeCommit,
    BeforeCompletion,
    RollbackSent,
    CommitSent,
    Committed,
    Finished,
}

/// The hooks registered with one synchronization owner, and how far its completion got.
pub(crate) struct SyncScope {
    hooks: Mutex<Vec<Hook>>,
    stage: AtomicU8,
}

impl Default for SyncScope {
    fn default() -> Self {
        SyncScope {
            hooks: Mutex::default(),
            stage: AtomicU8::new(Stage::Open as u8),
        }
    }
}

impl SyncScope {
    fn hooks(&self) -> std::sync::MutexGuard<'_, Vec<Hook>> {
        self.hooks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, hook: Hook) {
        self.hooks().push(hook);
    }

    /// The `i`-th hook; the list may grow while a phase runs (a `before_commit` hook may
    /// register another).
    fn get(&self, i: usize) -> Option<Hook> {
        self.hooks().get(i).cloned()
    }

    fn stage(&self) -> Stage {
        match self.stage.load(Ordering::Relaxed) {
            0 => Stage::Open,
            1 => Stage::BeforeCommit,
            2 => Stage::BeforeCompletion,
            3 => Stage::RollbackSent,
            4 => Stage::CommitSent,
            5 => Stage::Committed,
            _ => Stage::Finished,
        }
    }

    fn set_stage(&self, stage: Stage) {
        self.stage.store(stage as u8, Ordering::Relaxed);
    }

    /// Hands the hooks of a released savepoint to the enclosing owner, in order.
    pub(crate) fn hand_over_to(&self, parent: &SyncScope) {
        let hooks = std::mem::take(&mut *self.hooks());
        parent.hooks().extend(hooks);
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

    async fn before_completion(&self) {
        let mut i = 0;
        while let Some(hook) = self.get(i) {
            if let Err(panic) = AssertUnwindSafe(hook.before_completion())
                .catch_unwind()
                .await
            {
                log_panic("before_completion", &*panic);
            }
            i += 1;
        }
    }

    async fn after_commit(&self) {
        let mut i = 0;
        while let Some(hook) = self.get(i) {
            if let Err(panic) = AssertUnwindSafe(hook.after_commit()).catch_unwind().await {
                log_panic("after_commit", &*panic);
            }
            i += 1;
        }
    }

    async fn after_completion(&self, completion: Completion) {
        let mut i = 0;
        while let Some(hook) = self.get(i) {
            if let Err(panic) = AssertUnwindSafe(hook.after_completion(completion))
                .catch_unwind()
                .await
            {
                log_panic("after_completion", &*panic);
            }
            i += 1;
        }
    }

    /// The commit sequence around `commit` (the physical COMMIT, or nothing for a scope
    /// without a transaction). The phases before COMMIT run in `tx_ctx` (statements still go
    /// into the transaction); those after it run outside every transaction.
    ///
    /// Returns how it ended, and the error when it did not commit.
    pub(crate) async fn commit<F, R>(
        &self,
        tx_ctx: &Context,
        read_only: bool,
        commit: F,
        rollback: R,
    ) -> (Completion, Result<(), TxError>)
    where
        F: Future<Output = Result<(), TxError>>,
        R: Future<Output = ()>,
    {
        self.set_stage(Stage::BeforeCommit);
        if let Err(e) = tx_ctx.clone().run(self.before_commit(read_only)).await {
            tracing::debug!(target: "tx", "before_commit synchronization failed, rolling back: {e}");
            self.rollback(tx_ctx, rollback).await;
            return (Completion::RolledBack, Err(e));
        }
        self.set_stage(Stage::BeforeCompletion);
        tx_ctx.clone().run(self.before_completion()).await;
        self.set_stage(Stage::CommitSent);
        let (completion, result) = match commit.await {
            Ok(()) => {
                self.set_stage(Stage::Committed);
                Context::default().run(self.after_commit()).await;
                (Completion::Committed, Ok(()))
            }
            Err(e @ TxError::CommitOutcomeUnknown(_)) => (Completion::Unknown, Err(e)),
            Err(e) => (Completion::RolledBack, Err(e)),
        };
        self.set_stage(Stage::Finished);
        Context::default()
            .run(self.after_completion(completion))
            .await;
        (completion, result)
    }

    /// The rollback sequence around `rollback` (the physical ROLLBACK or ROLLBACK TO).
    pub(crate) async fn rollback(&self, tx_ctx: &Context, rollback: impl Future<Output = ()>) {
        if self.stage() < Stage::BeforeCompletion {
            self.set_stage(Stage::BeforeCompletion);
            tx_ctx.clone().run(self.before_completion()).await;
        }
        self.set_stage(Stage::RollbackSent);
        rollback.await;
        self.set_stage(Stage::Finished);
        Context::default()
            .run(self.after_completion(Completion::RolledBack))
            .await;
    }

    /// Finishes the sequence of a scope dropped before it completed (a cancelled call), from
    /// where it stopped: before COMMIT was sent it rolls back (`rollback`); with COMMIT in
    /// flight the outcome is unknown; after it, committed.
    pub(crate) async fn finish_cancelled(&self, rollback: impl Future<Output = ()>) {
        let completion = match self.stage() {
            Stage::Open | Stage::BeforeCommit | Stage::BeforeCompletion => {
                self.rollback(&Context::default(), rollback).await;
                return;
            }
            Stage::RollbackSent => Completion::RolledBack,
            Stage::CommitSent => Completion::Unknown,
            Stage::Committed => Completion::Committed,
            Stage::Finished => return,
        };
        self.set_stage(Stage::Finished);
        Context::default()
            .run(self.after_completion(completion))
            .await;
    }

    /// Spawns [`finish_cancelled`](Self::finish_cancelled) (a destructor cannot wait); without
    /// a runtime, `rollback` is dropped, which drops the physical transaction and so rolls it back.
    pub(crate) fn spawn_finish_cancelled(
        self: Arc<Self>,
        rollback: impl Future<Output = ()> + Send + 'static,
    ) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { self.finish_cancelled(rollback).await });
            }
            Err(_) => tracing::warn!(
                target: "tx",
                "transactional scope dropped outside a tokio runtime: rolled back, hooks not run"
            ),
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
