//! Driving a future poll by poll, to cut it after exactly `k` polls.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
struct FlagWaker {
    woken: AtomicBool,
    notify: Notify,
}

impl Wake for FlagWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }
}

/// Polls `fut` at most `polls` times, each time after it asked to be woken (so every poll can
/// make progress), with a waker of our own. `Some(output)` if it completed within them; `None`
/// if it is still pending after exactly `polls` polls (the caller then drops it: the cut).
///
/// Panics if the future does not wake up within 30 s after a poll (a hang).
pub async fn poll_at_most<F: Future>(mut fut: Pin<&mut F>, polls: usize) -> Option<F::Output> {
    let state = Arc::new(FlagWaker::default());
    let waker = Waker::from(state.clone());
    let mut cx = Context::from_waker(&waker);
    for i in 0..polls {
        if i > 0 {
            while !state.woken.swap(false, Ordering::SeqCst) {
                if tokio::time::timeout(Duration::from_secs(30), state.notify.notified())
                    .await
                    .is_err()
                {
                    panic!("the future was not woken within 30 s after poll {i}: it hangs");
                }
            }
        }
        state.woken.store(false, Ordering::SeqCst);
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return Some(out);
        }
    }
    None
}
