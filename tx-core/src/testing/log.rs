//! An ordered log of strings that tests write what ran into, shared by its clones.

use std::sync::{Arc, Mutex};

/// The operations a [`RecordingManager`](super::RecordingManager) saw, in order, shared by its
/// clones.
pub type OperationLog = Arc<Mutex<Vec<String>>>;

/// An ordered log shared by its clones: hooks, listeners and handlers push what they saw, and
/// the test takes it out to compare with what it expects.
///
/// ```
/// use tx_core::testing::Log;
/// let log = Log::default();
/// let hook = log.clone();
/// hook.push("after_commit");
/// hook.push(format!("completed {}", 1));
/// assert_eq!(log.take(), ["after_commit", "completed 1"]);
/// assert!(log.take().is_empty());
/// ```
#[derive(Clone, Debug, Default)]
pub struct Log(OperationLog);

impl Log {
    /// Appends `entry`.
    pub fn push(&self, entry: impl Into<String>) {
        push(&self.0, entry);
    }

    /// The entries so far, emptying the log.
    #[must_use]
    pub fn take(&self) -> Vec<String> {
        take(&self.0)
    }
}

/// Appends `entry` to `log`, also after a panic while it was held (a failing hook must not
/// hide what ran before it).
pub(super) fn push(log: &OperationLog, entry: impl Into<String>) {
    log.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(entry.into());
}

/// Empties `log`, returning what it held.
pub(super) fn take(log: &OperationLog) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner()))
}
