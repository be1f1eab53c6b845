//! Cancelled calls: dropping a call mid-way, and waiting for the completion the engine then
//! finishes in a spawned task.

use std::future::Future;
use std::time::Duration;

use tx_core::testing::RecordingManager;

/// Polls `call` for `ms` milliseconds, then drops it; it must still be running by then.
pub async fn cancel_after(ms: u64, call: impl Future) {
    assert!(
        tokio::time::timeout(Duration::from_millis(ms), call)
            .await
            .is_err()
    );
}

/// Empties `m`'s log until the cancelled call's ROLLBACK is in it, then lets the spawned
/// completion finish.
pub async fn drain_until_rollback(m: &RecordingManager) {
    while !m.take().iter().any(|e| e == "ROLLBACK") {
        tokio::task::yield_now().await;
    }
    tokio::task::yield_now().await;
}

/// Waits, up to 100 `pause`s, until `m`'s log has an entry starting with `prefix` (left in
/// the log).
pub async fn wait_for_entry<P: Future>(m: &RecordingManager, prefix: &str, pause: impl Fn() -> P) {
    for _ in 0..100 {
        if m.log()
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.starts_with(prefix))
        {
            break;
        }
        pause().await;
    }
}
