//! Metrics (feature `metrics`, through the `metrics` facade): sagas started, completed,
//! compensated and stuck, by saga name, and step durations.

use std::time::Duration;

use crate::context::Direction;

/// One counter per saga event, labelled by saga name; nothing without the feature.
macro_rules! saga_counters {
    ($($event:ident => $metric:literal),+ $(,)?) => {
        $(
            #[cfg(feature = "metrics")]
            pub(crate) fn $event(saga: &str) {
                metrics::counter!($metric, "saga" => saga.to_owned()).increment(1);
            }

            #[cfg(not(feature = "metrics"))]
            pub(crate) fn $event(_: &str) {}
        )+
    };
}

saga_counters!(
    started => "tx_saga_started_total",
    completed => "tx_saga_completed_total",
    compensated => "tx_saga_compensated_total",
    stuck => "tx_saga_stuck_total",
);

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
pub(crate) fn step_finished(_: &str, _: &str, _: Direction, _: &'static str, _: Duration) {}
