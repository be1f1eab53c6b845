//! A call dropped outside every runtime, for tests of what its `Drop` does there.

use std::future::Future;

use tokio::runtime::{Handle, Runtime};
use tokio::sync::oneshot;

/// What a call started by [`drop_outside_runtime`] signals once it has reached the point the
/// test wants it dropped at.
#[derive(Debug)]
pub struct Started(oneshot::Sender<()>);

impl Started {
    /// Signals that the call has started, then never completes: the call stays in flight
    /// until it is dropped.
    pub async fn park(self) {
        // The receiver is gone only if the test already stopped waiting for the signal.
        let _ = self.0.send(());
        std::future::pending::<()>().await;
    }
}

/// Polls the call that `start` builds on `rt` until it [parks](Started::park), then drops
/// it on this thread, outside every runtime.
///
/// A transactional future dropped there must not panic (its `Drop` has no runtime to spawn
/// on): the rollback and the hooks of what it began run on the runtime it began on. Check
/// them on `rt` after this returns.
///
/// # Panics
///
/// When called inside a runtime, when the call completes without parking, or when it drops
/// its [`Started`] without parking.
///
/// ```
/// use tx_core::testing::{RecordingManager, drop_outside_runtime};
/// use tx_core::{TransactionTemplate, TxError};
///
/// let rt = tokio::runtime::Runtime::new().unwrap();
/// let db = RecordingManager::default();
/// let template = TransactionTemplate::new(db.clone());
/// drop_outside_runtime(&rt, |started| {
///     template.execute(|_| async {
///         db.stmt("INSERT").await?;
///         started.park().await;
///         Ok::<_, TxError>(())
///     })
/// });
/// // The rollback runs on `rt`, in the background: wait for it, but not forever.
/// let rolled_back = async {
///     while db.log().lock().unwrap().last().map(String::as_str) != Some("ROLLBACK") {
///         tokio::task::yield_now().await;
///     }
/// };
/// rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(10), rolled_back).await })
///     .expect("the rollback ran within 10 s");
/// assert_eq!(db.take(), ["BEGIN Default", "STMT INSERT", "ROLLBACK"]);
/// ```
pub fn drop_outside_runtime<F, Fut>(rt: &Runtime, start: F)
where
    F: FnOnce(Started) -> Fut,
    Fut: Future,
{
    let (started, parked) = oneshot::channel();
    let mut call = Box::pin(start(Started(started)));
    rt.block_on(async {
        tokio::select! {
            _ = &mut call => panic!("the call completed instead of parking"),
            parked = parked => parked.expect("the call dropped its `Started` without parking"),
        }
    });
    assert!(
        Handle::try_current().is_err(),
        "drop_outside_runtime is called inside a runtime"
    );
    drop(call);
}
