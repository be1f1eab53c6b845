//! The worker: claims due sagas under a lease and drives each one step at a time, each step in
//! a transaction that also records its completion.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::task::JoinSet;
use tracing::Instrument;
use tx_sqlx::TxError;

use crate::backend::SagaBackend;
use crate::backend::private::{Cell, Claim, Col, Value};
use crate::context::Direction;
use crate::definition::{AttemptError, ErasedSaga};
use crate::engine::SagaEngine;
use crate::error::StepError;
use crate::id::SagaId;
use crate::observe;
use crate::sql::Sql;
use crate::status::{COMPENSATED, COMPENSATING, COMPLETED, RUNNING, STUCK};

const CLAIM_COLS: &[Col] = &[
    Col::Text,
    Col::Text,
    Col::Text,
    Col::I64,
    Col::I64,
    Col::Text,
    Col::I64,
    Col::Text,
];

/// One running worker.
pub(crate) struct Worker<DB: SagaBackend> {
    shared: Arc<Shared<DB>>,
}

struct Shared<DB: SagaBackend> {
    engine: SagaEngine<DB>,
    sql: Arc<Sql>,
    /// This worker's part of every lease token.
    id: String,
    claims: AtomicU64,
    stopping: AtomicBool,
}

/// A claimed saga, as this worker knows it.
struct Record {
    id: SagaId,
    saga: Arc<dyn ErasedSaga>,
    backward: bool,
    /// Forward: the number of completed steps (the next step to run). Backward: the number of
    /// steps still to compensate (the next compensation is of step `step - 1`).
    step: i64,
    state: String,
    /// Failed attempts recorded for the current step and direction.
    attempt: i64,
    last_error: Option<String>,
    token: Arc<str>,
    /// Our lease surely holds until then (measured from before the statement that set it).
    lease_deadline: Instant,
}

/// A change of a claimed saga, written fenced by its lease token.
struct Transition {
    status: &'static str,
    backward: bool,
    step: i64,
    state: String,
    attempt: i64,
    last_error: Option<String>,
    /// Keep the lease for this long (the worker goes on with the saga), or hand the saga back.
    hold: Option<Duration>,
    /// When the saga is due again (backoff).
    delay: Duration,
}

/// How an attempt ended without a recorded next state.
enum Failure {
    /// Worth another attempt (a `StepError::Retry`, a panic, a timeout, a failed commit).
    Retry(String),
    /// A `StepError::Fail`.
    Fail(String),
    /// Cannot run until a person fixes it.
    Corrupt(String),
}

/// What the step's transaction returned as its error.
enum Run {
    Attempt(Failure),
    LeaseLost,
    Tx(TxError),
}

impl From<TxError> for Run {
    fn from(e: TxError) -> Run {
        Run::Tx(e)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

impl<DB: SagaBackend> Worker<DB> {
    pub fn new(engine: SagaEngine<DB>, sql: Arc<Sql>) -> Self {
        let id = format!("{:x}-{:08x}", std::process::id(), fastrand::u32(..));
        Worker {
            shared: Arc::new(Shared {
                engine,
                sql,
                id,
                claims: AtomicU64::new(0),
                stopping: AtomicBool::new(false),
            }),
        }
    }

    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), TxError> {
        let shared = self.shared;
        let inner = &shared.engine.inner;
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
    fn db(&self) -> &tx_sqlx::TxPool<DB> {
        &self.engine.inner.db
    }

    fn lease(&self) -> Duration {
        self.engine.inner.lease
    }

    /// Time for the bookkeeping and commit of a step beyond its own timeout.
    fn slack(&self) -> Duration {
        (self.lease() / 2).min(Duration::from_secs(5))
    }

    /// The lease a worker holds while step `index` runs: the engine's lease, or longer for a
    /// step whose timeout (plus bookkeeping) would outlast it.
    fn hold_for(&self, saga: &dyn ErasedSaga, index: usize) -> Duration {
        let budget = saga.options(index).get_timeout() + self.slack();
        self.lease().max(budget + self.slack())
    }

    /// The lease to hold after moving to `step` (forward: the next step to run; backward: the
    /// number of steps left to compensate).
    fn hold_at(&self, saga: &dyn ErasedSaga, backward: bool, step: i64) -> Duration {
        let index = if backward { step - 1 } else { step };
        if index >= 0 && (index as usize) < saga.len() {
            self.hold_for(saga, index as usize)
        } else {
            self.lease()
        }
    }

    /// Claims up to `limit` due sagas under a fresh lease token.
    async fn claim(&self, limit: usize) -> Result<Vec<Record>, TxError> {
        let n = self.claims.fetch_add(1, Ordering::Relaxed);
        let token: Arc<str> = Arc::from(format!("{}-{n}", self.id));
        let lease_ms = millis(self.lease());
        let names: Vec<Value> = self
            .engine
            .inner
            .sagas
            .keys()
            .map(|k| Value::Text(k.to_string()))
            .collect();
        let before = Instant::now();
        let rows = match self.sql.claim_style {
            Claim::UpdateReturning => {
                let mut args = vec![Value::Text(token.to_string()), Value::I64(lease_ms)];
                args.extend(names);
                args.push(Value::I64(limit as i64));
                DB::saga_fetch(self.db(), self.sql.claim.clone(), args, CLAIM_COLS).await?
            }
            Claim::SelectThenUpdate => {
                let db = self.db().clone();
                let sql = self.sql.clone();
                let token = token.clone();
                DB::saga_template(&db)
                    .name("tx_saga claim")
                    .execute(move |_| {
                        let (db, sql, token) = (db.clone(), sql.clone(), token.clone());
                        let mut args: Vec<Value> = names
                            .iter()
                            .map(|v| match v {
                                Value::Text(s) => Value::Text(s.clone()),
                                _ => Value::NullText,
                            })
                            .collect();
                        args.push(Value::I64(limit as i64));
                        async move {
                            let mut rows =
                                DB::saga_fetch(&db, sql.claim.clone(), args, CLAIM_COLS).await?;
                            if rows.is_empty() {
                                return Ok::<_, TxError>(rows);
                            }
                            let mut upd =
                                vec![Value::Text(token.to_string()), Value::I64(lease_ms)];
                            for row in &mut rows {
                                let id = row[0].text().unwrap_or_default();
                                upd.push(Value::Text(id.clone()));
                                row[0] = Cell::Text(Some(id));
                            }
                            DB::saga_execute(&db, sql.claim_update(rows.len()), upd).await?;
                            Ok(rows)
                        }
                    })
                    .await?
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for mut row in rows {
            let id_text = row[0].text().unwrap_or_default();
            let name = row[1].text().unwrap_or_default();
            let Ok(id) = id_text.parse::<SagaId>() else {
                tracing::error!(target: "tx_saga", id = %id_text, "skipping a saga row with a malformed id");
                continue;
            };
            let Some(saga) = self.engine.saga(&name).cloned() else {
                continue;
            };
            out.push(Record {
                id,
                saga,
                backward: row[3].i64() == 1,
                step: row[4].i64(),
                state: row[5].text().unwrap_or_default(),
                attempt: row[6].i64(),
                last_error: row[7].text(),
                token: token.clone(),
                lease_deadline: before + self.lease(),
            });
        }
        Ok(out)
    }

    /// Writes `t` for `rec`, fenced by its lease token; false when the lease was lost.
    async fn write(&self, rec: &Record, t: &Transition) -> Result<bool, TxError> {
        let args = vec![
            Value::Text(t.status.to_owned()),
            Value::I64(i64::from(t.backward)),
            Value::I64(t.step),
            Value::Text(t.state.clone()),
            Value::I64(t.attempt),
            t.last_error.clone().map_or(Value::NullText, Value::Text),
            if t.hold.is_some() {
                Value::Text(rec.token.to_string())
            } else {
                Value::NullText
            },
            t.hold.map_or(Value::NullI64, |h| Value::I64(millis(h))),
            Value::I64(millis(t.delay)),
            Value::Text(rec.id.to_string()),
            Value::Text(rec.token.to_string()),
        ];
        Ok(DB::saga_execute(self.db(), self.sql.write.clone(), args).await? == 1)
    }

    /// Drives one claimed saga until it is final, waits for a backoff, is stuck, loses its
    /// lease, or the worker stops.
    async fn drive(&self, mut rec: Record) {
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                self.release(&rec).await;
                return;
            }
            let len = rec.saga.len() as i64;
            let (index, direction) = if rec.backward {
                (rec.step - 1, Direction::Compensate)
            } else {
                (rec.step, Direction::Forward)
            };
            if index < 0 || index >= len {
                let msg = format!(
                    "the recorded position (step {}, {}) does not exist in saga `{}`, which has \
                     {len} steps: was the definition changed while it ran?",
                    rec.step,
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
            let attempt = u32::try_from(rec.attempt + 1).unwrap_or(u32::MAX);
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
                    rec.backward = next.backward;
                    rec.step = next.step;
                    rec.state = next.state;
                    rec.attempt = 0;
                    rec.last_error = next.last_error;
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

    /// One attempt of step `index`: the step's future and the record of its completion, in one
    /// transaction. On success, the transition written and the instant before it was sent.
    async fn attempt(
        &self,
        rec: &Record,
        index: usize,
        direction: Direction,
        attempt: u32,
        budget: Duration,
        timeout: Duration,
    ) -> Result<(Transition, Instant), Run> {
        let fut = rec
            .saga
            .attempt(index, direction, &rec.state, rec.id, attempt);
        let len = rec.saga.len() as i64;
        let mut once = Some(fut);
        DB::saga_template(self.db())
            .timeout(budget)
            .name("tx_saga step")
            .execute(|_status| {
                let fut = once.take();
                async move {
                    let Some(fut) = fut else {
                        return Err(Run::Tx(TxError::InvalidArgument {
                            message: "a saga step's transaction ran its body twice".into(),
                        }));
                    };
                    let state =
                        match tokio::time::timeout(timeout, AssertUnwindSafe(fut).catch_unwind())
                            .await
                        {
                            Err(_) => {
                                return Err(Run::Attempt(Failure::Retry(format!(
                                    "timed out after {timeout:?}"
                                ))));
                            }
                            Ok(Err(panic)) => {
                                return Err(Run::Attempt(Failure::Retry(format!(
                                    "panicked: {}",
                                    panic_message(&*panic)
                                ))));
                            }
                            Ok(Ok(Err(AttemptError::Step(StepError::Retry(e))))) => {
                                return Err(Run::Attempt(Failure::Retry(e.to_string())));
                            }
                            Ok(Ok(Err(AttemptError::Step(StepError::Fail(e))))) => {
                                return Err(Run::Attempt(Failure::Fail(e.to_string())));
                            }
                            Ok(Ok(Err(AttemptError::Corrupt(msg)))) => {
                                return Err(Run::Attempt(Failure::Corrupt(msg)));
                            }
                            Ok(Ok(Ok(state))) => state,
                        };
                    let next = match direction {
                        Direction::Forward if rec.step + 1 == len => Transition {
                            status: COMPLETED,
                            backward: false,
                            step: len,
                            state,
                            attempt: 0,
                            last_error: None,
                            hold: None,
                            delay: Duration::ZERO,
                        },
                        Direction::Forward => Transition {
                            status: RUNNING,
                            backward: false,
                            step: rec.step + 1,
                            state,
                            attempt: 0,
                            last_error: None,
                            hold: Some(self.hold_at(&*rec.saga, false, rec.step + 1)),
                            delay: Duration::ZERO,
                        },
                        Direction::Compensate => Transition {
                            status: if rec.step == 1 {
                                COMPENSATED
                            } else {
                                COMPENSATING
                            },
                            backward: true,
                            step: rec.step - 1,
                            state,
                            attempt: 0,
                            // Keeps the failure that started the compensation.
                            last_error: rec.last_error.clone(),
                            hold: (rec.step != 1)
                                .then(|| self.hold_at(&*rec.saga, true, rec.step - 1)),
                            delay: Duration::ZERO,
                        },
                    };
                    let before = Instant::now();
                    if !self.write(rec, &next).await? {
                        return Err(Run::LeaseLost);
                    }
                    Ok((next, before))
                }
            })
            .await
    }

    /// Records a failed attempt; true when the worker goes on with the saga (compensation
    /// starts at once), false when it leaves it (backoff, stuck, lease lost).
    async fn failed(
        &self,
        rec: &mut Record,
        index: usize,
        direction: Direction,
        failure: Failure,
    ) -> bool {
        let failed = rec.attempt + 1;
        let options = rec.saga.options(index);
        let max = i64::from(options.get_max_attempts(direction));
        let step = rec.saga.step_name(index).clone();
        match (direction, failure) {
            // A forward step is retried on a retryable failure; a compensation on any failure
            // (it must succeed eventually), each up to its limit.
            (Direction::Forward, Failure::Retry(msg))
            | (Direction::Compensate, Failure::Retry(msg) | Failure::Fail(msg))
                if failed < max =>
            {
                let delay = options.backoff_after(u32::try_from(failed).unwrap_or(u32::MAX));
                let error =
                    format!("step `{step}` ({direction}, attempt {failed} of {max}): {msg}");
                tracing::warn!(target: "tx_saga", error = %error, retry_in = ?delay, "step failed; it will be retried");
                let t = Transition {
                    status: if rec.backward { COMPENSATING } else { RUNNING },
                    backward: rec.backward,
                    step: rec.step,
                    state: rec.state.clone(),
                    attempt: failed,
                    last_error: Some(error),
                    hold: None,
                    delay,
                };
                self.write_logged(rec, &t).await;
                false
            }
            (Direction::Forward, Failure::Retry(msg) | Failure::Fail(msg)) => {
                let error = format!("step `{step}` failed (attempt {failed} of {max}): {msg}");
                let done = rec.step;
                tracing::warn!(target: "tx_saga", error = %error, steps_to_compensate = done, "step failed for good; compensating");
                let t = Transition {
                    status: if done == 0 { COMPENSATED } else { COMPENSATING },
                    backward: true,
                    step: done,
                    state: rec.state.clone(),
                    attempt: 0,
                    last_error: Some(error),
                    hold: (done != 0).then(|| self.hold_at(&*rec.saga, true, done)),
                    delay: Duration::ZERO,
                };
                if !self.write_logged(rec, &t).await {
                    return false;
                }
                if done == 0 {
                    observe::compensated(rec.saga.name());
                    tracing::info!(target: "tx_saga", "saga compensated (no step had completed)");
                    return false;
                }
                rec.backward = true;
                rec.attempt = 0;
                rec.last_error = t.last_error;
                true
            }
            (Direction::Compensate, Failure::Retry(msg) | Failure::Fail(msg)) => {
                let error = format!(
                    "compensation of step `{step}` failed (attempt {failed} of {max}): {msg}"
                );
                self.stuck(rec, failed, error).await;
                false
            }
            (_, Failure::Corrupt(msg)) => {
                self.finish_failed(rec, Failure::Corrupt(msg), failed).await;
                false
            }
        }
    }

    async fn finish_failed(&self, rec: &mut Record, failure: Failure, failed: i64) {
        let msg = match failure {
            Failure::Retry(m) | Failure::Fail(m) | Failure::Corrupt(m) => m,
        };
        self.stuck(rec, failed, msg).await;
    }

    async fn stuck(&self, rec: &Record, failed: i64, error: String) {
        tracing::error!(target: "tx_saga", saga_id = %rec.id, error = %error, "saga is stuck: it needs a person (SagaEngine::resume once fixed)");
        let t = Transition {
            status: STUCK,
            backward: rec.backward,
            step: rec.step,
            state: rec.state.clone(),
            attempt: failed,
            last_error: Some(error),
            hold: None,
            delay: Duration::ZERO,
        };
        if self.write_logged(rec, &t).await {
            observe::stuck(rec.saga.name());
        }
    }

    async fn write_logged(&self, rec: &Record, t: &Transition) -> bool {
        match self.write(rec, t).await {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(target: "tx_saga", saga_id = %rec.id, "lease lost before the failure could be recorded");
                false
            }
            Err(e) => {
                tracing::warn!(target: "tx_saga", saga_id = %rec.id, error = %e, "recording the failure failed; the saga is retried once its lease expires");
                false
            }
        }
    }

    /// Extends the lease to `hold` before a step that might outlast it; false when it is
    /// lost.
    async fn renew(&self, rec: &mut Record, hold: Duration) -> bool {
        let before = Instant::now();
        let args = vec![
            Value::I64(millis(hold)),
            Value::Text(rec.id.to_string()),
            Value::Text(rec.token.to_string()),
        ];
        match DB::saga_execute(self.db(), self.sql.renew.clone(), args).await {
            Ok(1) => {
                rec.lease_deadline = before + hold;
                true
            }
            Ok(_) => {
                tracing::warn!(target: "tx_saga", saga_id = %rec.id, "lease lost before the next step");
                false
            }
            Err(e) => {
                tracing::warn!(target: "tx_saga", saga_id = %rec.id, error = %e, "renewing the lease failed");
                false
            }
        }
    }

    /// Hands a saga back (due at once) when the worker stops.
    async fn release(&self, rec: &Record) {
        let args = vec![
            Value::Text(rec.id.to_string()),
            Value::Text(rec.token.to_string()),
        ];
        if let Err(e) = DB::saga_execute(self.db(), self.sql.release.clone(), args).await {
            tracing::warn!(target: "tx_saga", saga_id = %rec.id, error = %e, "releasing the saga failed; it is resumed once its lease expires");
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}
