//! What a failed attempt leads to: a retry after a backoff, the start of the compensation, or
//! a stuck saga that needs a person.

use std::time::Duration;

use super::attempt::Failure;
use super::lease::{Position, Record, Shared, Transition, fenced};
use crate::backend::SagaBackend;
use crate::context::Direction;
use crate::observe;
use crate::status::{COMPENSATED, COMPENSATING, RUNNING, STUCK};

impl<DB: SagaBackend> Shared<DB> {
    /// Records a failed attempt; true when the worker goes on with the saga (compensation
    /// starts at once), false when it leaves it (backoff, stuck, lease lost).
    pub(super) async fn failed(
        &self,
        rec: &mut Record,
        index: usize,
        direction: Direction,
        failure: Failure,
    ) -> bool {
        let failed = rec.at.attempt + 1;
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
                let status = if rec.at.backward {
                    COMPENSATING
                } else {
                    RUNNING
                };
                let t = Transition::stay(rec, status, failed, error, delay);
                self.write_logged(rec, &t).await;
                false
            }
            (Direction::Forward, Failure::Retry(msg) | Failure::Fail(msg)) => {
                let error = format!("step `{step}` failed (attempt {failed} of {max}): {msg}");
                let done = rec.at.step;
                tracing::warn!(target: "tx_saga", error = %error, steps_to_compensate = done, "step failed for good; compensating");
                let t = Transition {
                    status: if done == 0 { COMPENSATED } else { COMPENSATING },
                    to: Position {
                        backward: true,
                        step: done,
                        state: rec.at.state.clone(),
                        attempt: 0,
                        last_error: Some(error),
                    },
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
                rec.at = t.to;
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

    pub(super) async fn finish_failed(&self, rec: &mut Record, failure: Failure, failed: i64) {
        let msg = match failure {
            Failure::Retry(m) | Failure::Fail(m) | Failure::Corrupt(m) => m,
        };
        self.stuck(rec, failed, msg).await;
    }

    async fn stuck(&self, rec: &Record, failed: i64, error: String) {
        tracing::error!(target: "tx_saga", saga_id = %rec.id, error = %error, "saga is stuck: it needs a person (SagaEngine::resume once fixed)");
        let t = Transition::stay(rec, STUCK, failed, error, Duration::ZERO);
        if self.write_logged(rec, &t).await {
            observe::stuck(rec.saga.name());
        }
    }

    async fn write_logged(&self, rec: &Record, t: &Transition) -> bool {
        fenced(
            rec,
            self.write(rec, t).await,
            "lease lost before the failure could be recorded",
            "recording the failure failed; the saga is retried once its lease expires",
        )
    }
}
