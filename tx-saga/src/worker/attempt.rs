//! One attempt of a step: the step's future and the record of its completion, in one
//! transaction, and how an attempt that recorded nothing ended.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tx_sqlx::TxError;

use super::lease::{Position, Record, Shared, Transition};
use crate::backend::SagaBackend;
use crate::context::Direction;
use crate::definition::{Attempt, AttemptError};
use crate::error::StepError;
use crate::status::{COMPENSATED, COMPENSATING, COMPLETED, RUNNING};

/// How an attempt ended without a recorded next state.
pub(super) enum Failure {
    /// Worth another attempt (a `StepError::Retry`, a panic, a timeout, a failed commit).
    Retry(String),
    /// A `StepError::Fail`.
    Fail(String),
    /// Cannot run until a person fixes it.
    Corrupt(String),
}

/// What the step's transaction returned as its error.
pub(super) enum Run {
    Attempt(Failure),
    LeaseLost,
    Tx(TxError),
}

impl From<TxError> for Run {
    fn from(e: TxError) -> Run {
        Run::Tx(e)
    }
}

impl<DB: SagaBackend> Shared<DB> {
    /// One attempt of step `index`: the step's future and the record of its completion, in one
    /// transaction. On success, the transition written and the instant before it was sent.
    pub(super) async fn attempt(
        &self,
        rec: &Record,
        index: usize,
        direction: Direction,
        attempt: u32,
        budget: Duration,
        timeout: Duration,
    ) -> Result<(Transition, Instant), Run> {
        let fut = rec.saga.attempt(Attempt {
            index,
            direction,
            state: &rec.at.state,
            saga_id: rec.id,
            number: attempt,
        });
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
                    let (backward, step) = match direction {
                        Direction::Forward => (false, rec.at.step + 1),
                        Direction::Compensate => (true, rec.at.step - 1),
                    };
                    // Final after the last step forward, or once the first step is compensated.
                    let done = if backward { step == 0 } else { step == len };
                    let next = Transition {
                        status: match (backward, done) {
                            (false, true) => COMPLETED,
                            (false, false) => RUNNING,
                            (true, true) => COMPENSATED,
                            (true, false) => COMPENSATING,
                        },
                        to: Position {
                            backward,
                            step,
                            state,
                            attempt: 0,
                            // Going back keeps the failure that started the compensation.
                            last_error: if backward {
                                rec.at.last_error.clone()
                            } else {
                                None
                            },
                        },
                        hold: (!done).then(|| self.hold_at(&*rec.saga, backward, step)),
                        delay: Duration::ZERO,
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
