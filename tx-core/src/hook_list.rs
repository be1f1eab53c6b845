//! The hook list of one synchronization owner (Spring's `TransactionSynchronizationUtils`):
//! hooks in registration order, one runner per phase, and how far the completion sequence got,
//! so that a sequence cut short by a cancelled caller can be finished from there. In which order
//! the phases run around COMMIT is the engine's ([`crate::propagation`]).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::FutureExt;

use crate::completion::Completion;
use crate::error::{BoxError, TxError};
use crate::manager::BoxFuture;
use crate::synchronization::{TransactionSynchronization, panic_message};

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
        caught(phase, async move {
            match phase {
                Phase::BeforeCompletion => {
                    TransactionSynchronization::before_completion(&*self).await;
                }
                Phase::AfterCommit => TransactionSynchronization::after_commit(&*self).await,
                Phase::AfterCompletion(c) => {
                    TransactionSynchronization::after_completion(&*self, c).await;
                }
            }
        })
    }
}

/// `run`, a hook's call in `phase`, boxed with its panic caught and logged.
pub(crate) fn caught(
    phase: Phase,
    run: impl Future<Output = ()> + Send + 'static,
) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        if let Err(panic) = AssertUnwindSafe(run).catch_unwind().await {
            log_panic(phase.name(), &*panic);
        }
    })
}

/// The call of a hook that does nothing in a phase: a future of size zero, so that boxing it
/// allocates nothing.
pub(crate) struct Skipped;

impl Future for Skipped {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

/// `before_commit` of a hook that has none: accepts at once, and boxing it allocates nothing.
pub(crate) struct Accepted;

impl Future for Accepted {
    type Output = Result<(), BoxError>;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(()))
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
pub(crate) enum Stage {
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

    pub(crate) fn push(&self, hook: Hook) {
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

    pub(crate) fn stage(&self) -> Stage {
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

    pub(crate) fn set_stage(&self, stage: Stage) {
        self.stage.store(stage as u8, Ordering::Relaxed);
    }

    /// Whether no hook registered here.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.hooks().is_empty()
    }

    /// Sets what `after_completion` reports.
    #[inline]
    pub(crate) fn set_completion(&self, completion: Completion) {
        self.completion.store(completion as u8, Ordering::Relaxed);
    }

    pub(crate) fn completion(&self) -> Completion {
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
    pub(crate) async fn before_commit(&self, read_only: bool) -> Result<(), TxError> {
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

    pub(crate) fn begin_phase(&self, stage: Stage) {
        self.next.store(0, Ordering::Relaxed);
        self.set_stage(stage);
    }

    /// Runs the current resumable phase over the hooks not yet called, first finishing a
    /// call in progress. Later phases cannot undo anything: a hook's panic is logged and the
    /// next hook still runs.
    pub(crate) async fn drive(&self) {
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
}

fn log_panic(phase: &str, panic: &(dyn std::any::Any + Send)) {
    tracing::error!(
        target: "tx",
        "{phase} synchronization {}; ignored, the transaction outcome stands",
        panic_message(panic)
    );
}
