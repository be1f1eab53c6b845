//! [`StepContext`]: what a step's forward action or compensation is given.

use std::fmt;
use std::sync::Arc;

use crate::id::SagaId;

/// Which way a saga is going when a step runs.
///
/// ```
/// use tx_saga::Direction;
/// assert_eq!(Direction::Compensate.as_str(), "compensate");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The step's forward action.
    Forward,
    /// The step's compensation (undoing a completed forward action).
    Compensate,
}

impl Direction {
    /// `"forward"` or `"compensate"`, as used in idempotency keys, spans and metrics.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Compensate => "compensate",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The input of one attempt of a step: the saga's state as recorded after the previous step,
/// and who is running.
///
/// A forward action or compensation receives it by value and returns the saga's next state
/// (`Ok(ctx.into_state())` when nothing changes).
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tx_saga::{Saga, StepContext, StepError};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct Order { id: u64, charged: bool }
///
/// let saga = Saga::<Order>::named("order").step(
///     "charge",
///     |ctx: StepContext<Order>| async move {
///         // A remote call de-duplicates on the key: the same for every attempt of this
///         // step in this saga, after crashes too.
///         let key = ctx.idempotency_key().to_owned();
///         let _ = (key, ctx.attempt(), ctx.saga_id());
///         let mut order = ctx.into_state();
///         order.charged = true;
///         Ok(order)
///     },
///     |ctx: StepContext<Order>| async move {
///         let mut order = ctx.into_state();
///         order.charged = false;
///         Ok::<_, StepError>(order)
///     },
/// );
/// # let _ = saga;
/// ```
#[derive(Debug)]
pub struct StepContext<S> {
    pub(crate) saga_id: SagaId,
    pub(crate) saga: Arc<str>,
    pub(crate) step: Arc<str>,
    pub(crate) direction: Direction,
    pub(crate) attempt: u32,
    pub(crate) state: S,
    pub(crate) key: String,
}

impl<S> StepContext<S> {
    /// The saga's state as recorded after the previous step.
    #[must_use]
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The state, by value, to change and return.
    #[must_use]
    pub fn into_state(self) -> S {
        self.state
    }

    /// The saga instance this step belongs to.
    #[must_use]
    pub fn saga_id(&self) -> SagaId {
        self.saga_id
    }

    /// The saga's registered name.
    #[must_use]
    pub fn saga_name(&self) -> &str {
        &self.saga
    }

    /// This step's name.
    #[must_use]
    pub fn step_name(&self) -> &str {
        &self.step
    }

    /// Whether this is the forward action or the compensation.
    #[must_use]
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Which attempt this is, from 1: failed attempts recorded so far for this step in this
    /// direction, plus one. An attempt cut short by a crash of its worker is not recorded, so
    /// the attempt after a crash may carry the same number.
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// A key that is the same for every attempt of this step in this direction of this saga,
    /// on every worker and after every crash, and different for any other step, direction or
    /// saga: `"<saga id>:<step name>:<forward|compensate>"`. Give it to a remote service as
    /// its de-duplication key (an `Idempotency-Key` header, a unique column), so that a call
    /// repeated after a crash takes effect once.
    #[must_use]
    pub fn idempotency_key(&self) -> &str {
        &self.key
    }
}

/// The idempotency key of a step (see [`StepContext::idempotency_key`]).
pub(crate) fn idempotency_key(id: SagaId, step: &str, direction: Direction) -> String {
    format!("{id}:{step}:{direction}")
}
