//! A synchronization that logs each of its phases into a recording manager's log, so the log
//! shows the hooks between the operations the engine sends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tx_core::testing::RecordingManager;
use tx_core::{BoxError, Completion, TransactionSynchronization};

/// `{hook}:{phase}` for each of `phases`, each for every one of `hooks` in order: what
/// [`Phases`] hooks registered in that order log.
pub fn phases_of(hooks: &[&str], phases: &[&str]) -> Vec<String> {
    phases
        .iter()
        .flat_map(|phase| hooks.iter().map(move |hook| format!("{hook}:{phase}")))
        .collect()
}

/// What [`Phases`] hooks registered in the order of `hooks` log around the `COMMIT` of their
/// transaction.
pub fn around_commit(hooks: &[&str]) -> Vec<String> {
    [
        phases_of(hooks, &["before_commit", "before_completion"]),
        vec!["COMMIT".to_owned()],
        phases_of(hooks, &["after_commit", "after_completion(Committed)"]),
    ]
    .concat()
}

/// Logs `{name}:{phase}` for each phase, `{name}:after_completion({completion:?})` last.
pub struct Phases {
    /// What its entries start with.
    pub name: &'static str,
    /// Whose log it writes into.
    pub log: RecordingManager,
    /// How long its before_commit takes.
    pub slow_before_commit: Option<Duration>,
    /// What its before_commit fails with.
    pub veto: Option<&'static str>,
    /// The phase it stops in, until [`Blocker::release`].
    pub blocks_in: Option<Blocked>,
}

/// Where a [`Phases`] hook stops: it tells `started` when that phase begins, then waits.
pub struct Blocked {
    phase: &'static str,
    started: Mutex<Option<oneshot::Sender<()>>>,
    release: Arc<Notify>,
}

/// The test's side of a [`Blocked`] phase.
pub struct Blocker {
    /// Resolves when the hook reached its phase.
    pub started: oneshot::Receiver<()>,
    release: Arc<Notify>,
}

impl Blocker {
    /// Lets the hook finish its phase (logged as `{name}:{phase} done`).
    pub fn release(&self) {
        self.release.notify_one();
    }
}

/// A hook that stops in `phase`, and what waits for it and releases it.
pub fn blocked_in(phase: &'static str) -> (Blocked, Blocker) {
    let (tx, started) = oneshot::channel();
    let release = Arc::new(Notify::new());
    let blocked = Blocked {
        phase,
        started: Mutex::new(Some(tx)),
        release: release.clone(),
    };
    (blocked, Blocker { started, release })
}

impl Phases {
    /// A hook named `name` that logs into `m`'s log.
    pub fn new(name: &'static str, m: &RecordingManager) -> Phases {
        Phases {
            name,
            log: m.clone(),
            slow_before_commit: None,
            veto: None,
            blocks_in: None,
        }
    }

    /// Logs `phase` (with `detail` after it), and stops there if it is the blocked one.
    async fn phase(&self, phase: &str, detail: &str) {
        let entry = format!("{}:{phase}{detail}", self.name);
        self.log.push(entry.clone());
        if let Some(b) = self.blocks_in.as_ref().filter(|b| b.phase == phase) {
            let _ = b.started.lock().unwrap().take().map(|s| s.send(()));
            b.release.notified().await;
            self.log.push(format!("{entry} done"));
        }
    }
}

impl TransactionSynchronization for Phases {
    async fn before_commit(&self, _: bool) -> Result<(), BoxError> {
        self.phase("before_commit", "").await;
        if let Some(d) = self.slow_before_commit {
            tokio::time::sleep(d).await;
        }
        match self.veto {
            Some(veto) => Err(veto.into()),
            None => Ok(()),
        }
    }
    async fn before_completion(&self) {
        self.phase("before_completion", "").await;
    }
    async fn after_commit(&self) {
        self.phase("after_commit", "").await;
    }
    async fn after_completion(&self, c: Completion) {
        self.phase("after_completion", &format!("({c:?})")).await;
    }
}
