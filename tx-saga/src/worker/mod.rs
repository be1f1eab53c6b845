//! The worker: claims due sagas under a lease and drives each one step at a time, each step in
//! a transaction that also records its completion.
//!
//! Bottom-up: `lease` (the claimed rows and their fenced writes), `attempt` (one step in
//! its transaction), `failure` (retry, compensate or stick after a failed attempt), and here
//! the poll loop and the drive of one saga.

mod attempt;
mod failure;
mod lease;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use tokio::task::JoinSet;
use tracing::Instrument;
use tx_sqlx::TxError;

use attempt::{Failure, Run};
use lease::{Record, Shared};

use crate::backend::SagaBackend;
use crate::context::Direction;
use crate::observe;
use crate::registry::Registry;
use crate::sql::Sql;
use crate::status::{COMPENSATED, COMPLETED};

/// One running worker.
pub(crate) struct Worker<DB: SagaBackend> {
    shared: Arc<Shared<DB>>,
}

impl<DB: SagaBackend> Worker<DB> {
    pub fn new(registry: Arc<Registry<DB>>, sql: Arc<Sql>) -> Self {
        let id = format!("{:x}-{:08x}", std::process::id(), fastrand::u32(..));
        Worker {
            shared: Arc::new(Shared {
                registry,
                sql,
                id,
                claims: AtomicU64::new(0),
                stopping: AtomicBool::new(false),
            }),
        }
    }

    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), TxError> {
        let shared = self.shared;
        let inner = &shared.registry;
        let concurrency = inner.concurrency;
        tracing::info!(target: "tx_saga", worker = %shared.id, table = %inner.table, "saga worker started");
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            while let Some(done) = tasks.try_join_next() {
                report_join(done);
            }
            let wake = inner.wake.notified();
            let mut wake = std::pin::pin!(wake);
            wake.as_mut().enable();
            let free = concurrency - tasks.len();
            let mut more = false;
            if free > 0 {
                match shared.claim(free).await {
                    Ok(records) => {
                        more = records.len() == free;
                        for rec in records {
                            let s = shared.clone();
                            tasks.spawn(async move { s.drive(rec).await });
                        }
                    }
                    Err(e) => tracing::warn!(
                        target: "tx_saga", worker = %shared.id, error = %e,
                        "claiming due sagas failed; trying again at the next poll"
                    ),
                }
            }
            let full = tasks.len() >= concurrency;
            if more && !full {
                continue;
            }
            tokio::select! {
                () = &mut shutdown => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => report_join(done),
                () = tokio::time::sleep(inner.poll_interval), if !full => {}
                () = &mut wake, if !full => {}
            }
        }
        shared.stopping.store(true, Ordering::SeqCst);
        tracing::info!(target: "tx_saga", worker = %shared.id, in_flight = tasks.len(), "saga worker stopping");
        while let Some(done) = tasks.join_next().await {
            report_join(done);
        }
        Ok(())
    }
}

fn report_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(target: "tx_saga", error = %e, "a saga task of the worker failed");
    }
}

impl<DB: SagaBackend> Shared<DB> {
    /// Drives one claimed saga until it is final, waits for a backoff, is stuck, loses its
    /// lease, or the worker stops.
    async fn drive(&self, mut rec: Record) {
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                self.release(&rec).await;
                return;
            }
            let len = rec.saga.len() as i64;
            let (index, direction) = if rec.at.backward {
                (rec.at.step - 1, Direction::Compensate)
            } else {
                (rec.at.step, Direction::Forward)
            };
            if index < 0 || index >= len {
                let msg = format!(
                    "the recorded position (step {}, {}) does not exist in saga `{}`, which has \
                     {len} steps: was the definition changed while it ran?",
                    rec.at.step,
                    direction,
                    rec.saga.name()
                );
                self.finish_failed(&mut rec, Failure::Corrupt(msg), 0).await;
                return;
            }
            let index = index as usize;
            let options = rec.saga.options(index).clone();
            // The step's transaction may run this long before its deadline rolls it back; the
            // lease must outlast it.
            let budget = options.get_timeout() + self.slack();
            let hold = self.hold_for(&*rec.saga, index);
            if Instant::now() + budget >= rec.lease_deadline && !self.renew(&mut rec, hold).await {
                return;
            }
            let step_name = rec.saga.step_name(index).clone();
            let attempt = u32::try_from(rec.at.attempt + 1).unwrap_or(u32::MAX);
            let span = tracing::info_span!(
                target: "tx_saga",
                "saga_step",
                saga_id = %rec.id,
                saga = %rec.saga.name(),
                step = %step_name,
                direction = %direction,
                attempt,
                outcome = tracing::field::Empty,
            );
            let started = Instant::now();
            let result = self
                .attempt(
                    &rec,
                    index,
                    direction,
                    attempt,
                    budget,
                    options.get_timeout(),
                )
                .instrument(span.clone())
                .await;
            let elapsed = started.elapsed();
            let _enter = span.enter();
            match result {
                Ok((next, before)) => {
                    span.record("outcome", "ok");
                    observe::step_finished(rec.saga.name(), &step_name, direction, "ok", elapsed);
                    tracing::debug!(target: "tx_saga", "step recorded");
                    let final_status = next.status;
                    rec.at = next.to;
                    if let Some(hold) = next.hold {
                        rec.lease_deadline = before + hold;
                    }
                    match final_status {
                        COMPLETED => {
                            observe::completed(rec.saga.name());
                            tracing::info!(target: "tx_saga", "saga completed");
                            return;
                        }
                        COMPENSATED => {
                            observe::compensated(rec.saga.name());
                            tracing::info!(target: "tx_saga", "saga compensated");
                            return;
                        }
                        _ => {}
                    }
                }
                Err(Run::LeaseLost) => {
                    span.record("outcome", "lease_lost");
                    tracing::warn!(
                        target: "tx_saga",
                        "the lease on this saga was lost (another worker took it over); its step was rolled back"
                    );
                    return;
                }
                Err(Run::Tx(TxError::CommitOutcomeUnknown(e))) => {
                    span.record("outcome", "commit_unknown");
                    tracing::warn!(
                        target: "tx_saga", error = %e,
                        "the commit of this step may or may not have happened; the saga is resumed from what was recorded once its lease expires"
                    );
                    return;
                }
                Err(Run::Tx(e)) => {
                    span.record("outcome", "retry");
                    observe::step_finished(
                        rec.saga.name(),
                        &step_name,
                        direction,
                        "error",
                        elapsed,
                    );
                    let msg = format!("the step's transaction failed: {e}");
                    if !self
                        .failed(&mut rec, index, direction, Failure::Retry(msg))
                        .await
                    {
                        return;
                    }
                }
                Err(Run::Attempt(failure)) => {
                    let outcome = match failure {
                        Failure::Retry(_) => "retry",
                        Failure::Fail(_) => "fail",
                        Failure::Corrupt(_) => "corrupt",
                    };
                    span.record("outcome", outcome);
                    observe::step_finished(
                        rec.saga.name(),
                        &step_name,
                        direction,
                        outcome,
                        elapsed,
                    );
                    if !self.failed(&mut rec, index, direction, failure).await {
                        return;
                    }
                }
            }
        }
    }
}
