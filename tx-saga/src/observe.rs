//! Metrics (feature `metrics`, through the `metrics` facade): sagas started, completed,
//! compensated and stuck, by saga name, and step durations.

use std::time::Duration;

use crate::context::Direction;

#[cfg(feature = "metrics")]
pub(crate) fn started(saga: &str) {
    metrics::counter!("tx_saga_started_total", "saga" => saga.to_owned()).increment(1);
}

#[cfg(feature = "metrics")]
pub(crate) fn completed(saga: &str) {
    metrics::counter!("tx_saga_completed_total", "saga" => saga.to_owned()).increment(1);
}

#[cfg(feature = "metrics")]
pub(crate) fn compensated(saga: &str) {
    metrics::counter!("tx_saga_compensated_total", "saga" => saga.to_owned()).increment(1);
}

#[cfg(feature = "metrics")]
pub(crate) fn stuck(saga: &str) {
    metrics::counter!("tx_saga_stuck_total", "saga" => saga.to_owned()).increment(1);
}

#[cfg(feature = "metrics")]
pub(crate) fn step_finished(
    saga: &str,
    step: &str,
    direction: Direction,
    outcome: &'static str,
    took: Duration,
) {
    metrics::histogram!(
        "tx_saga_step_duration_seconds",
        "saga" => saga.to_owned(),
        "step" => step.to_owned(),
        "direction" => direction.as_str(),
        "outcome" => outcome,
    )
    .record(took.as_secs_f64());
}

#[cfg(not(feature = "metrics"))]
pub(crate) fn started(_: &str) {}
#[cfg(not(feature = "metrics"))]
pub(crate) fn completed(_: &str) {}
#[cfg(not(feature = "metrics"))]
pub(crate) fn compensated(_: &str) {}
#[cfg(not(feature = "metrics"))]
pub(crate) fn stuck(_: &str) {}
#[cfg(not(feature = "metrics"))]
pub(crate) fn step_finished(_: &str, _: &str, _: Direction, _: &'static str, _: Duration) {}
