//! Helpers shared by tx-core's engine tests; the managers themselves are
//! `tx_core::testing::{NoopManager, RecordingManager}`.

#![allow(dead_code)] // each test binary uses part of it

mod cancel;
mod phases;

#[allow(unused_imports)] // as above
pub use cancel::{cancel_after, drain_until_rollback, wait_for_entry};
#[allow(unused_imports)] // as above
pub use phases::{Blocker, Phases, around_commit, blocked_in, phases_of};

use std::time::Duration;
pub use tx_core::testing::RecordingManager;

use tx_core::{TransactionTemplate, TxError};

/// A template on `m` with the default definition.
pub fn t(m: &RecordingManager) -> TransactionTemplate {
    TransactionTemplate::new(m.clone())
}

/// A body that sends `sql`, then waits a minute: past any deadline, or until it is dropped.
pub async fn stmt_then_wait(m: &RecordingManager, sql: &str) -> Result<(), TxError> {
    m.stmt(sql).await?;
    tokio::time::sleep(Duration::from_secs(60)).await;
    Ok(())
}

/// Owned copies of `entries`, to compare with a log.
pub fn strings(entries: &[&str]) -> Vec<String> {
    entries.iter().map(|e| e.to_string()).collect()
}

/// What a call that must succeed sent: `body` runs in a transaction of the default definition
/// on a new recording manager.
pub async fn committed<T>(
    body: impl AsyncFnOnce(&RecordingManager) -> Result<T, TxError>,
) -> Vec<String> {
    let m = RecordingManager::default();
    if let Err(e) = t(&m).execute(|_| body(&m)).await {
        panic!("the call failed: {e:?}");
    }
    m.take()
}
