//! The hook the suites of this binary register to see the phases run: it writes each
//! callback down as `LABEL:phase`.

use std::sync::{Arc, Mutex};

use tx_sqlx::{BoxError, Completion, TransactionSynchronization};

/// What the hooks wrote down, in order.
pub type Log = Arc<Mutex<Vec<String>>>;

/// Appends `entry` to `log` (also after a panicking hook poisoned it).
pub fn push(log: &Log, entry: String) {
    log.lock().unwrap_or_else(|p| p.into_inner()).push(entry);
}

/// A synchronization recording each callback as `LABEL:phase`; optionally vetoing the commit
/// or panicking in `after_commit`.
#[derive(Default)]
pub struct Recorder {
    pub label: &'static str,
    pub log: Log,
    /// `before_commit` fails with "veto from before_commit".
    pub veto: bool,
    /// `after_commit` panics.
    pub panic_after_commit: bool,
}

impl Recorder {
    /// A recorder writing to `log` under `label`, vetoing nothing, never panicking.
    pub fn new(label: &'static str, log: &Log) -> Recorder {
        let log = log.clone();
        Recorder {
            label,
            log,
            ..Recorder::default()
        }
    }

    fn record(&self, phase: &str) {
        push(&self.log, format!("{}:{phase}", self.label));
    }
}

impl TransactionSynchronization for Recorder {
    async fn before_commit(&self, _read_only: bool) -> Result<(), BoxError> {
        self.record("before_commit");
        if self.veto {
            return Err("veto from before_commit".into());
        }
        Ok(())
    }

    async fn before_completion(&self) {
        self.record("before_completion");
    }

    async fn after_commit(&self) {
        self.record("after_commit");
        if self.panic_after_commit {
            panic!("after_commit hook panics on purpose");
        }
    }

    async fn after_completion(&self, completion: Completion) {
        self.record(match completion {
            Completion::Committed => "after_completion(committed)",
            Completion::RolledBack => "after_completion(rolled_back)",
            Completion::Unknown => "after_completion(unknown)",
        });
    }
}
