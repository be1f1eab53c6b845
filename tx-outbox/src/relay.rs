//! [`Relay`]: delivers committed outbox messages to a [`Sink`], at least once, in order per
//! key, with several relays on one outbox.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use tracing::Instrument;
use tx_sqlx::TxError;

use crate::message::{Envelope, from_millis};
use crate::outbox::{Outbox, OutboxDatabase};
use crate::sink::Sink;
use crate::store::{Dialect, Failure, Listener, PendingRow, Store, Window};

/// Most windows of a batch's size one round reads while looking for sendable messages.
const WINDOWS: usize = 8;

/// How soon `run` looks again at work it could not send yet.
const RECHECK: Duration = Duration::from_millis(100);

/// Delivers an outbox's committed messages to a [`Sink`].
///
/// Each round ([`run_once`](Relay::run_once)) leases some partitions of the outbox (messages
/// are spread over 32 partitions by key), reads their eligible messages in publication
/// order, sends them, records the outcome and releases the leases. So:
///
/// * **at least once**: a message is marked delivered (or deleted) only after the sink
///   acknowledged it; a relay that dies in between leaves it pending and it is sent again
///   once the lease expires;
/// * **in order per key**: a partition is worked on by one relay at a time, a key's next
///   message is sent only after the previous one was acknowledged, and a message that failed
///   holds back the rest of its key (and only its key) until it is delivered or parked;
/// * **failures** are retried with jittered exponential backoff; after `max_attempts` the
///   message is parked as failed ([`Outbox::failed`], [`Outbox::retry_failed`]).
///
/// Run as many relays (tasks or processes) as you like on one outbox.
///
/// ```no_run
/// use std::time::Duration;
/// use tx_outbox::{Outbox, Relay};
/// # async fn run(outbox: Outbox<sqlx::Postgres>, sink: impl tx_outbox::Sink) -> Result<(), tx_sqlx::TxError> {
/// let relay = Relay::new(outbox, sink)
///     .batch(200)
///     .lease(Duration::from_secs(30))
///     .max_attempts(10);
/// relay.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
/// # Ok(()) }
/// ```
pub struct Relay<DB: OutboxDatabase, S: Sink> {
    outbox: Outbox<DB>,
    sink: Arc<S>,
    name: String,
    batch: usize,
    lease: Duration,
    max_attempts: u32,
    backoff_min: Duration,
    backoff_max: Duration,
    poll: Duration,
    delete: bool,
    notify: bool,
    rounds: AtomicU64,
}

/// What one [`Relay::run_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayReport {
    /// Messages the sink acknowledged (and that are now marked delivered or deleted).
    pub delivered: usize,
    /// Messages whose send failed and that will be retried.
    pub retrying: usize,
    /// Messages parked as failed in this round.
    pub parked: usize,
    /// True when the round read a full batch: more work is probably waiting.
    pub full: bool,
    /// True when due messages are pending that this round could not send yet (an older
    /// transaction is still running, or a key is held back): worth another look soon.
    pub waiting: bool,
}

impl<DB: OutboxDatabase, S: Sink> std::fmt::Debug for Relay<DB, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.name)
            .field("outbox", &self.outbox)
            .field("batch", &self.batch)
            .field("lease", &self.lease)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl<DB: OutboxDatabase, S: Sink> Relay<DB, S> {
    /// A relay from `outbox` to `sink` with defaults: batches of 100, 30 s leases, 10
    /// attempts, backoff from 200 ms to 60 s, polling every second (PostgreSQL is woken by
    /// `NOTIFY` at once; polling is its fallback), delivered messages marked, not deleted.
    #[must_use]
    pub fn new(outbox: Outbox<DB>, sink: S) -> Self {
        Relay {
            outbox,
            sink: Arc::new(sink),
            name: format!("{}-{}", std::process::id(), fastrand::u32(..)),
            batch: 100,
            lease: Duration::from_secs(30),
            max_attempts: 10,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            delete: false,
            notify: true,
            rounds: AtomicU64::new(0),
        }
    }

    /// Most messages read and sent per round (at least 1).
    #[must_use]
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// How long a relay's hold on its partitions lasts if it dies mid-round (at least
    /// 100 ms). A round stops sending at half of it, so a live relay never outlives its lease.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(100));
        self
    }

    /// Failed sends after which a message is parked as failed (at least 1).
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The retry delay after the first failure and its cap; it doubles per failure, with
    /// jitter (each delay is 50-100% of the nominal one).
    #[must_use]
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }

    /// How often [`run`](Self::run) looks for work when nothing woke it.
    #[must_use]
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll = every.max(Duration::from_millis(1));
        self
    }

    /// PostgreSQL: whether [`run`](Self::run) listens for the `NOTIFY` that `publish` sends
    /// (default true). Turn it off behind a pooler that cannot `LISTEN` (PgBouncer in
    /// transaction mode); the relay then polls.
    #[must_use]
    pub fn wake_on_notify(mut self, listen: bool) -> Self {
        self.notify = listen;
        self
    }

    /// Delete delivered messages instead of marking them delivered.
    #[must_use]
    pub fn delete_delivered(mut self, delete: bool) -> Self {
        self.delete = delete;
        self
    }

    /// A name for logs and leases (default: process id and a random number). Two live relays
    /// must not share one.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The sink.
    #[must_use]
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Delivers until `shutdown` completes, then returns after finishing the round in
    /// progress. Between rounds it waits for a `NOTIFY` (PostgreSQL) or the poll interval;
    /// a full batch is followed by the next round at once.
    ///
    /// # Errors
    /// Only when the very first round fails (a missing table, a wrong database): a
    /// misconfigured relay stops at once. Later failures (the database or the broker
    /// restarting) are logged and retried with backoff, forever.
    ///
    /// # Cancel safety
    /// Dropping the future mid-round leaves that round's partitions leased until the lease
    /// expires and its sent-but-unrecorded messages pending: they are sent again (at least
    /// once). Nothing is lost.
    pub async fn run(&self, shutdown: impl Future) -> Result<(), TxError> {
        let mut shutdown = pin!(shutdown);
        let store = self.outbox.store.clone();
        let mut listener: Option<Box<dyn Listener>> = None;
        let mut listener_retry = tokio::time::Instant::now();
        let mut first = true;
        let mut errors: u32 = 0;
        loop {
            if self.notify
                && store.dialect() == Dialect::Postgres
                && listener.is_none()
                && tokio::time::Instant::now() >= listener_retry
            {
                match store.listener().await {
                    Ok(l) => listener = l,
                    Err(e) => {
                        tracing::warn!(target: "tx_outbox", relay = %self.name, error = %e,
                            "cannot LISTEN for new messages; polling");
                        listener_retry = tokio::time::Instant::now() + Duration::from_secs(5);
                    }
                }
            }
            let round = self.run_once().await;
            let mut wait = self.poll;
            match round {
                Ok(report) => {
                    errors = 0;
                    first = false;
                    if report.full {
                        wait = Duration::ZERO;
                    } else if report.retrying > 0 {
                        wait = wait.min(self.backoff_min);
                    } else if report.waiting {
                        // A NOTIFY for this work may already have been used up.
                        wait = wait.min(RECHECK);
                    }
                }
                Err(e) if first => return Err(e),
                Err(e) => {
                    errors = errors.saturating_add(1);
                    wait = backoff(self.backoff_min, self.backoff_max, errors);
                    tracing::warn!(target: "tx_outbox", relay = %self.name, error = %e,
                        retry_in = ?wait, "relay round failed");
                }
            }
            if shutdown.as_mut().now_or_never().is_some() {
                return Ok(());
            }
            if wait.is_zero() {
                continue;
            }
            let woken = async {
                match listener.as_mut() {
                    Some(l) => l.wait().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                () = woken => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One round: lease partitions with work, send up to one batch, record the outcome,
    /// release the leases.
    ///
    /// # Errors
    /// The database's errors (the round's leases are released on a best-effort basis, and
    /// expire anyway). Send failures are not errors: they are counted in the report.
    ///
    /// # Cancel safety
    /// As for [`run`](Self::run): cancelling mid-round may re-send, never loses.
    pub async fn run_once(&self) -> Result<RelayReport, TxError> {
        let store = &self.outbox.store;
        let mut work = store.partitions_with_work().await?;
        if work.is_empty() {
            return Ok(RelayReport::default());
        }
        fastrand::shuffle(&mut work);
        // Take about half of the free partitions with work: other relays get the rest.
        work.truncate(work.len().div_ceil(2));
        let round = self.rounds.fetch_add(1, Ordering::Relaxed);
        let token = format!("{}#{round}", self.name);
        let parts = store.claim(&token, &work, self.lease).await?;
        if parts.is_empty() {
            // Taken by other relays meanwhile, or (MySQL) busy with publishers.
            return Ok(RelayReport {
                waiting: true,
                ..RelayReport::default()
            });
        }
        let span = tracing::info_span!(target: "tx_outbox", "tx_outbox.batch",
            relay = %self.name, table = %store.table(), partitions = parts.len(),
            messages = tracing::field::Empty, delivered = tracing::field::Empty,
            failed = tracing::field::Empty);
        let mut result = self
            .deliver(store.as_ref(), &token)
            .instrument(span.clone())
            .await;
        if let Err(e) = store.release(&token).await {
            tracing::debug!(target: "tx_outbox", error = %e, "releasing leases failed; they expire");
        }
        if let Ok(r) = &mut result {
            r.waiting = r.delivered + r.retrying + r.parked == 0;
            span.record("delivered", r.delivered);
            span.record("failed", r.retrying + r.parked);
        }
        result
    }

    /// Up to a batch of messages that may be sent now, in publication order, walking the
    /// leased partitions' pending rows: a row that may not be sent yet (a retry not due, a
    /// transaction that can still commit before it) holds back the rest of its key, and
    /// further windows leave the held-back keys out, so they cannot crowd out the others.
    /// Also whether more eligible work is probably waiting.
    async fn eligible(
        &self,
        store: &dyn Store,
        token: &str,
    ) -> Result<(Vec<PendingRow>, bool), TxError> {
        let mut taken = Vec::new();
        let mut held: Vec<String> = Vec::new();
        let mut after = 0;
        for _ in 0..WINDOWS {
            let window = Window {
                token,
                after,
                skip: &held,
                limit: self.batch,
            };
            let rows = store.fetch(window).await?;
            let window_full = rows.len() >= self.batch;
            for (row, ready) in rows {
                after = row.id;
                if let Some(k) = &row.key {
                    if held.contains(k) {
                        continue;
                    }
                    if !ready {
                        held.push(k.clone());
                        continue;
                    }
                } else if !ready {
                    continue;
                }
                taken.push(row);
                if taken.len() >= self.batch {
                    return Ok((taken, true));
                }
            }
            if !window_full {
                return Ok((taken, false));
            }
        }
        Ok((taken, true))
    }

    async fn deliver(&self, store: &dyn Store, token: &str) -> Result<RelayReport, TxError> {
        let (rows, more) = self.eligible(store, token).await?;
        tracing::Span::current().record("messages", rows.len());
        let mut report = RelayReport {
            full: more,
            ..RelayReport::default()
        };
        if rows.is_empty() {
            return Ok(report);
        }
        let deadline = tokio::time::Instant::now() + self.lease / 2;
        let (envelopes, unreadable) = envelopes(&rows);
        // Per-key queues in publication order; a message without a key is its own queue.
        let mut queues: Vec<Vec<usize>> = Vec::new();
        let mut by_key: HashMap<&str, usize> = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            if unreadable.contains_key(&i) {
                continue;
            }
            match row.key.as_deref() {
                Some(k) => {
                    let q = *by_key.entry(k).or_insert_with(|| {
                        queues.push(Vec::new());
                        queues.len() - 1
                    });
                    queues[q].push(i);
                }
                None => queues.push(vec![i]),
            }
        }
        let mut delivered: Vec<i64> = Vec::new();
        let mut failures: Vec<(usize, String)> = unreadable.into_iter().collect();
        let mut blocked = vec![false; queues.len()];
        let depth = queues.iter().map(Vec::len).max().unwrap_or(0);
        for level in 0..depth {
            let wave: Vec<(usize, usize)> = queues
                .iter()
                .enumerate()
                .filter(|(q, queue)| !blocked[*q] && queue.len() > level)
                .map(|(q, queue)| (q, queue[level]))
                .collect();
            if wave.is_empty() {
                break;
            }
            let batch: Vec<Envelope> = wave.iter().map(|&(_, i)| envelopes[i].clone()).collect();
            // Past the deadline every message of the wave counts as failed (no results).
            let results = tokio::time::timeout_at(deadline, self.sink.send(&batch))
                .await
                .unwrap_or_default();
            for (n, &(q, i)) in wave.iter().enumerate() {
                match results.get(n) {
                    Some(Ok(())) => delivered.push(rows[i].id),
                    Some(Err(e)) => {
                        blocked[q] = true;
                        failures.push((i, e.to_string()));
                    }
                    None => {
                        blocked[q] = true;
                        let why = if results.is_empty() {
                            "send timed out (half the relay's lease)".to_owned()
                        } else {
                            format!(
                                "the sink reported {} results for {} messages",
                                results.len(),
                                wave.len()
                            )
                        };
                        failures.push((i, why));
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        store.mark_delivered(&delivered, self.delete).await?;
        report.delivered = delivered.len();
        #[cfg(feature = "metrics")]
        crate::metrics::delivered(store.table(), &rows, &delivered);
        for (i, error) in failures {
            let row = &rows[i];
            let attempts = row.attempts.saturating_add(1);
            let park = u32::try_from(attempts).unwrap_or(u32::MAX) >= self.max_attempts;
            let delay = backoff(self.backoff_min, self.backoff_max, attempts.unsigned_abs());
            let failure = Failure {
                attempts,
                park,
                retry_in: delay,
                error: &error,
            };
            store.mark_failed(row.id, failure).await?;
            if park {
                report.parked += 1;
                tracing::warn!(target: "tx_outbox", message_id = %row.message_id, topic = %row.topic,
                    attempts, error = %error, "message parked as failed");
            } else {
                report.retrying += 1;
                tracing::debug!(target: "tx_outbox", message_id = %row.message_id, attempts,
                    retry_in = ?delay, error = %error, "send failed; will retry");
            }
            #[cfg(feature = "metrics")]
            crate::metrics::failed(store.table(), park);
        }
        Ok(report)
    }
}

/// The envelopes of `rows` (by index); rows that cannot be turned into one (a stored id or
/// header list written by hand and not readable) with the reason.
fn envelopes(rows: &[PendingRow]) -> (Vec<Envelope>, HashMap<usize, String>) {
    let mut bad = HashMap::new();
    let envs = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let id = r
                .message_id
                .parse()
                .unwrap_or_else(|e: crate::message::InvalidMessageId| {
                    bad.insert(i, e.to_string());
                    crate::MessageId::new()
                });
            let headers: Vec<(String, String)> =
                serde_json::from_str(&r.headers).unwrap_or_else(|e| {
                    bad.insert(i, format!("unreadable headers: {e}"));
                    Vec::new()
                });
            Envelope {
                id,
                topic: r.topic.clone(),
                key: r.key.clone(),
                headers,
                payload: r.payload.clone(),
                attempt: u32::try_from(r.attempts).unwrap_or(0),
                created_at: from_millis(r.created_ms),
            }
        })
        .collect();
    (envs, bad)
}

/// `min * 2^(n-1)`, capped at `max`, then 50-100% of it.
pub(crate) fn backoff(min: Duration, max: Duration, n: u32) -> Duration {
    let exp = n.saturating_sub(1).min(30);
    let nominal = min.saturating_mul(1u32 << exp).min(max);
    nominal.mul_f64(0.5 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..100 {
            let d1 = backoff(min, max, 1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= min, "{d1:?}");
            let d3 = backoff(min, max, 3);
            assert!(
                d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400),
                "{d3:?}"
            );
            let d20 = backoff(min, max, 20);
            assert!(d20 >= max / 2 && d20 <= max, "{d20:?}");
        }
    }
}
