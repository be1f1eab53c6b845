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
//! This module only decides ([`redirect`]) and keeps the test transactions of the task; the
//! engine's savepoint scope runs the stand-ins ([`SavepointCompletion`]), and
//! [`crate::testing::rollback`] opens a test transaction. The engine asks at the start of every scope; outside a test body
//! that is one relaxed atomic load.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::definition::Propagation;
#[cfg(doc)]
use crate::error::TxError;
use crate::manager::ManagerKey;
use crate::transaction::{SavepointCompletion, Scope, ScopeKind};

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
pub(crate) struct ActiveGuard;

impl ActiveGuard {
    pub(crate) fn enter() -> ActiveGuard {
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
///
/// Inlined into every scope, so that outside a test body the check is one atomic load, not a
/// call.
#[inline]
pub(crate) fn redirect(
    key: ManagerKey,
    propagation: Propagation,
    existing: Option<&Arc<Scope>>,
) -> Option<Redirect> {
    if ACTIVE.load(Ordering::Relaxed) == 0 {
        return None;
    }
    redirect_in_test(key, propagation, existing?)
}

/// [`redirect`] while some test body runs.
fn redirect_in_test(
    key: ManagerKey,
    propagation: Propagation,
    existing: &Arc<Scope>,
) -> Option<Redirect> {
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

/// Runs `body` (the body of a test transaction whose scope is `root`, on manager `key`) with
/// that test transaction innermost for the task.
pub(crate) async fn in_test_transaction<F: Future>(
    key: ManagerKey,
    root: Arc<Scope>,
    body: F,
) -> F::Output {
    let frame = Arc::new(Frame {
        key,
        root,
        parent: FRAMES.try_with(Arc::clone).ok(),
    });
    FRAMES.scope(frame, body).await
}
