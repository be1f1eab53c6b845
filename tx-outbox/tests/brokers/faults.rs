//! Sink wrappers that inject faults: a slow sink (so faults land mid-batch) and a flaky one.

use std::time::Duration;

use tx_outbox::{Envelope, Sink, SinkError};

/// Waits before each send (so faults land mid-batch).
pub struct Slow<S>(pub S, pub Duration);

impl<S: Sink> Sink for Slow<S> {
    async fn send(&self, batch: &[Envelope]) -> Vec<Result<(), SinkError>> {
        tokio::time::sleep(self.1).await;
        self.0.send(batch).await
    }
}

/// Fails `before`% of messages without sending them and reports `after`% of the sent ones
/// as failed (a lost acknowledgement).
pub struct Flaky<S> {
    pub inner: S,
    pub before: u8,
    pub after: u8,
}

impl<S: Sink> Sink for Flaky<S> {
    async fn send(&self, batch: &[Envelope]) -> Vec<Result<(), SinkError>> {
        let keep: Vec<bool> = batch
            .iter()
            .map(|_| fastrand::u8(0..100) >= self.before)
            .collect();
        let to_send: Vec<Envelope> = batch
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(m, _)| m.clone())
            .collect();
        let mut sent = self.inner.send(&to_send).await.into_iter();
        keep.iter()
            .map(|k| {
                if !k {
                    return Err(SinkError::new("injected: not sent"));
                }
                let r = sent
                    .next()
                    .unwrap_or_else(|| Err(SinkError::new("missing result")));
                if r.is_ok() && fastrand::u8(0..100) < self.after {
                    return Err(SinkError::new("injected: acknowledgement lost"));
                }
                r
            })
            .collect()
    }
}
