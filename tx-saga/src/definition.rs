//! [`Saga`]: a named sequence of steps, each a forward action and its compensation, and the
//! per-step [`StepOptions`].

use std::any::TypeId;
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::{Direction, StepContext, idempotency_key};
use crate::error::StepError;
use crate::id::SagaId;

/// Limits of one step: its timeout, how often it is tried, and the backoff between tries.
///
/// ```
/// use std::time::Duration;
/// use tx_saga::StepOptions;
///
/// let options = StepOptions::default()
///     .timeout(Duration::from_secs(5))
///     .max_attempts(5)
///     .compensation_max_attempts(20)
///     .backoff(Duration::from_millis(50), Duration::from_secs(2));
/// assert_eq!(options.get_timeout(), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct StepOptions {
    timeout: Duration,
    max_attempts: u32,
    compensation_max_attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
}

impl Default for StepOptions {
    /// Timeout 30 s; 3 forward attempts; 10 compensation attempts; backoff from 100 ms, at
    /// most 30 s.
    fn default() -> Self {
        StepOptions {
            timeout: Duration::from_secs(30),
            max_attempts: 3,
            compensation_max_attempts: 10,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
        }
    }
}

impl StepOptions {
    fn edit(mut self, f: impl FnOnce(&mut StepOptions)) -> Self {
        f(&mut self);
        self
    }

    /// How long one attempt may run (forward or compensation) before it is cut off and counts
    /// as a failed, retryable attempt. Its transaction is rolled back. While the step runs, its
    /// worker's lease is extended to cover it.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.edit(|o| o.timeout = timeout)
    }

    /// How many times the forward action is tried (at least 1) before a retryable failure
    /// counts as final and compensation starts.
    pub fn max_attempts(self, attempts: u32) -> Self {
        self.edit(|o| o.max_attempts = attempts)
    }

    /// How many times the compensation is tried (at least 1) before the saga is left `Stuck`.
    pub fn compensation_max_attempts(self, attempts: u32) -> Self {
        self.edit(|o| o.compensation_max_attempts = attempts)
    }

    /// The backoff before attempt n+1: `base * 2^(n-1)`, at most `max`, times a random factor
    /// in [0.5, 1).
    pub fn backoff(self, base: Duration, max: Duration) -> Self {
        self.edit(|o| (o.backoff_base, o.backoff_max) = (base, max))
    }

    /// The timeout of one attempt.
    #[must_use]
    pub fn get_timeout(&self) -> Duration {
        self.timeout
    }

    /// The attempt limit in `direction`.
    #[must_use]
    pub fn get_max_attempts(&self, direction: Direction) -> u32 {
        match direction {
            Direction::Forward => self.max_attempts,
            Direction::Compensate => self.compensation_max_attempts,
        }
    }

    /// The delay before the attempt after `failed` failed attempts.
    pub(crate) fn backoff_after(&self, failed: u32) -> Duration {
        let exp = failed.saturating_sub(1).min(30);
        let raw = self
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max);
        raw.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    fn check(&self, step: &str) -> Result<(), String> {
        if self.timeout.is_zero() {
            return Err(format!("step `{step}`: timeout must be positive"));
        }
        if self.max_attempts == 0 || self.compensation_max_attempts == 0 {
            return Err(format!(
                "step `{step}`: max_attempts and compensation_max_attempts must be at least 1"
            ));
        }
        if self.backoff_base > self.backoff_max {
            return Err(format!(
                "step `{step}`: backoff base {:?} is above its maximum {:?}",
                self.backoff_base, self.backoff_max
            ));
        }
        Ok(())
    }
}

/// A forward action or compensation of a step: `|ctx: StepContext<S>| async move { .. }`,
/// returning the saga's next state. Implemented by every closure of that form that is
/// `Clone + Send + Sync + 'static` and whose future is `Send + 'static`; each call runs on its
/// own clone of the closure.
pub trait StepAction<S, Fut>:
    FnOnce(StepContext<S>) -> Fut + Clone + Send + Sync + 'static
{
    /// Runs the action on `ctx`, its future boxed.
    fn boxed(self, ctx: StepContext<S>) -> BoxFuture<'static, Result<S, StepError>>;
}

impl<S, Fut, F> StepAction<S, Fut> for F
where
    F: FnOnce(StepContext<S>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<S, StepError>> + Send + 'static,
{
    fn boxed(self, ctx: StepContext<S>) -> BoxFuture<'static, Result<S, StepError>> {
        Box::pin(self(ctx))
    }
}

/// A type-erased forward action or compensation.
type StepFn<S> =
    Arc<dyn Fn(StepContext<S>) -> BoxFuture<'static, Result<S, StepError>> + Send + Sync>;

struct StepDef<S> {
    name: Arc<str>,
    forward: StepFn<S>,
    compensate: StepFn<S>,
    options: StepOptions,
}

/// A saga definition: a name and a sequence of steps, each a forward action and the
/// compensation that undoes it. Register it with
/// [`SagaEngine::register`](crate::SagaEngine::register).
///
/// Both closures have the form `|ctx: StepContext<S>| async move { ... }` ([`StepAction`]) and
/// return the saga's next state as `Result<S, StepError>`. Each call gets its own clone of the
/// closure (what it captures must be `Clone`: pools, clients, `Arc`s), so captured values can be
/// moved into the `async move` block.
///
/// Each attempt runs in a transaction on the engine's database that also records the step's
/// completion: what the step writes through that `TxPool` (or `#[transactional]` code on it)
/// commits together with the saga's new position, exactly once. Calls to anything else (other
/// databases, HTTP services, brokers) are at least once: key them on
/// [`StepContext::idempotency_key`].
///
/// When a forward action fails for good, the compensations of the steps that completed run in
/// reverse order; the failed step itself is not compensated (its local writes were rolled
/// back; a remote call that failed must have had no effect, or be undone by the step before it
/// returns the error).
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use std::time::Duration;
/// use tx_saga::{Saga, StepContext, StepError, StepOptions};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct Order { item: i64, reserved: bool }
///
/// let saga = Saga::<Order>::named("place_order")
///     .step(
///         "reserve_stock",
///         |ctx: StepContext<Order>| async move {
///             let mut o = ctx.into_state();
///             o.reserved = true;
///             Ok(o)
///         },
///         |ctx: StepContext<Order>| async move {
///             let mut o = ctx.into_state();
///             o.reserved = false;
///             Ok(o)
///         },
///     )
///     .step_with(
///         "charge",
///         StepOptions::default().timeout(Duration::from_secs(5)).max_attempts(5),
///         |ctx: StepContext<Order>| async move { Err(StepError::Fail("card declined".into())) },
///         |ctx: StepContext<Order>| async move { Ok(ctx.into_state()) },
///     );
/// assert_eq!(saga.name(), "place_order");
/// assert_eq!(saga.len(), 2);
/// ```
#[must_use = "a saga does nothing until it is registered with a SagaEngine"]
pub struct Saga<S> {
    name: Arc<str>,
    steps: Vec<StepDef<S>>,
    problems: Vec<String>,
}

impl<S> fmt::Debug for Saga<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Saga")
            .field("name", &self.name)
            .field(
                "steps",
                &self.steps.iter().map(|s| &*s.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<S> Saga<S>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    /// An empty saga named `name`: the name under which it is registered, started and
    /// persisted (keep it stable across deployments).
    pub fn named(name: impl Into<Cow<'static, str>>) -> Saga<S> {
        let name: Cow<'static, str> = name.into();
        let mut problems = Vec::new();
        if name.trim().is_empty() || name.len() > 200 {
            problems.push(format!("saga name {name:?} must be 1 to 200 characters"));
        }
        Saga {
            name: Arc::from(&*name),
            steps: Vec::new(),
            problems,
        }
    }

    /// Appends a step with the default [`StepOptions`].
    pub fn step<FFut, CFut>(
        self,
        name: impl Into<Cow<'static, str>>,
        forward: impl StepAction<S, FFut>,
        compensate: impl StepAction<S, CFut>,
    ) -> Saga<S> {
        self.step_with(name, StepOptions::default(), forward, compensate)
    }

    /// Appends a step with its own timeout, attempt limits and backoff.
    pub fn step_with<FFut, CFut>(
        mut self,
        name: impl Into<Cow<'static, str>>,
        options: StepOptions,
        forward: impl StepAction<S, FFut>,
        compensate: impl StepAction<S, CFut>,
    ) -> Saga<S> {
        let name: Cow<'static, str> = name.into();
        if name.trim().is_empty() || name.len() > 200 {
            self.problems.push(format!(
                "saga `{}`: step name {name:?} must be 1 to 200 characters",
                self.name
            ));
        }
        if self.steps.iter().any(|s| *s.name == *name) {
            self.problems.push(format!(
                "saga `{}`: two steps are named `{name}`; step names must be unique (they key idempotency)",
                self.name
            ));
        }
        if let Err(e) = options.check(&name) {
            self.problems.push(format!("saga `{}`: {e}", self.name));
        }
        self.steps.push(StepDef {
            name: Arc::from(&*name),
            forward: erase(forward),
            compensate: erase(compensate),
            options,
        });
        self
    }

    /// The saga's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of steps.
    #[must_use]
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// True when no step was added.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

fn erase<S, Fut>(f: impl StepAction<S, Fut>) -> StepFn<S> {
    Arc::new(move |ctx| f.clone().boxed(ctx))
}

/// Why an attempt produced no next state.
pub(crate) enum AttemptError {
    /// The step returned an error.
    Step(StepError),
    /// The recorded state does not deserialize into the saga's type, or the returned state does
    /// not serialize: no attempt can succeed until a person fixes it.
    Corrupt(String),
}

/// A registered saga with its state type erased, as the worker drives it.
pub(crate) trait ErasedSaga: Send + Sync {
    fn name(&self) -> &Arc<str>;
    fn len(&self) -> usize;
    fn step_name(&self, index: usize) -> &Arc<str>;
    fn options(&self, index: usize) -> &StepOptions;
    fn state_type(&self) -> (TypeId, &'static str);
    fn problems(&self) -> &[String];
    /// Starts `attempt`; its future yields the next state (JSON).
    fn attempt(&self, attempt: Attempt<'_>) -> BoxFuture<'static, Result<String, AttemptError>>;
}

/// One attempt of step `index` in `direction` of saga `saga_id`, on its recorded `state`
/// (JSON); `number` counts from 1.
pub(crate) struct Attempt<'a> {
    pub(crate) index: usize,
    pub(crate) direction: Direction,
    pub(crate) state: &'a str,
    pub(crate) saga_id: SagaId,
    pub(crate) number: u32,
}

impl<S> ErasedSaga for Saga<S>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn len(&self) -> usize {
        self.steps.len()
    }

    fn step_name(&self, index: usize) -> &Arc<str> {
        &self.steps[index].name
    }

    fn options(&self, index: usize) -> &StepOptions {
        &self.steps[index].options
    }

    fn state_type(&self) -> (TypeId, &'static str) {
        (TypeId::of::<S>(), std::any::type_name::<S>())
    }

    fn problems(&self) -> &[String] {
        &self.problems
    }

    fn attempt(&self, attempt: Attempt<'_>) -> BoxFuture<'static, Result<String, AttemptError>> {
        let Attempt {
            index,
            direction,
            state,
            saga_id,
            number: attempt,
        } = attempt;
        let def = &self.steps[index];
        let state: S = match serde_json::from_str(state) {
            Ok(s) => s,
            Err(e) => {
                let msg = format!(
                    "the recorded state of saga `{}` does not deserialize as {}: {e}",
                    self.name,
                    std::any::type_name::<S>()
                );
                return Box::pin(async move { Err(AttemptError::Corrupt(msg)) });
            }
        };
        let ctx = StepContext {
            state,
            saga_id,
            saga: self.name.clone(),
            step: def.name.clone(),
            direction,
            attempt,
            key: idempotency_key(saga_id, &def.name, direction),
        };
        let f = match direction {
            Direction::Forward => &def.forward,
            Direction::Compensate => &def.compensate,
        };
        let fut = f(ctx);
        Box::pin(async move {
            let next = fut.await.map_err(AttemptError::Step)?;
            serde_json::to_string(&next).map_err(|e| {
                AttemptError::Corrupt(format!(
                    "the state returned by the step does not serialize as JSON: {e}"
                ))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let o = StepOptions::default().backoff(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..50 {
            let first = o.backoff_after(1);
            assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(100));
            let third = o.backoff_after(3);
            assert!(third >= Duration::from_millis(200) && third < Duration::from_millis(400));
            assert!(o.backoff_after(40) < Duration::from_secs(1));
        }
    }

    #[test]
    fn bad_definitions_are_reported() {
        let s = Saga::<u32>::named("")
            .step(
                "a",
                |c: StepContext<u32>| async move { Ok(c.into_state()) },
                |c: StepContext<u32>| async move { Ok(c.into_state()) },
            )
            .step_with(
                "a",
                StepOptions::default().max_attempts(0),
                |c: StepContext<u32>| async move { Ok(c.into_state()) },
                |c: StepContext<u32>| async move { Ok(c.into_state()) },
            );
        let problems = ErasedSaga::problems(&s).join("\n");
        assert!(problems.contains("saga name"), "{problems}");
        assert!(problems.contains("two steps are named `a`"), "{problems}");
        assert!(problems.contains("at least 1"), "{problems}");
    }
}
