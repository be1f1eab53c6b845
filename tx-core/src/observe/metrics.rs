//! Transaction metrics through the `metrics` facade (feature `metrics`; without it every
//! function here is empty). No exporter is built in: the application installs a recorder
//! (e.g. `metrics-exporter-prometheus`) and the engine reports to it.
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `tx_transactions_total` | counter | `name`, `outcome` | transactions completed: `committed`, `rolled_back`, `unknown` |
//! | `tx_rollbacks_total` | counter | `name`, `cause` | rollbacks by [`RollbackCause`] |
//! | `tx_timeouts_total` | counter | `name` | transactions rolled back at their deadline |
//! | `tx_retries_total` | counter | `name` | re-runs of a retried call (`retry = n`) |
//! | `tx_transaction_duration_seconds` | histogram | `name` | from the scope's start to the end of its completion, hooks included |
//! | `tx_connection_hold_seconds` | histogram | `name` | from a successful `BEGIN` to the connection's return to the pool |
//!
//! Only transactions count (a scope that began one): joined calls, savepoints and scopes
//! without a transaction do not.
//!
//! [`RollbackCause`]: crate::RollbackCause

use std::borrow::Cow;
use std::time::Duration;

use super::Ending;
#[cfg(feature = "metrics")]
use super::RollbackCause;

/// A completed transaction.
#[allow(clippy::ptr_arg)] // cloning the `Cow` keeps a static name unallocated
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn transaction_completed(
    name: &Cow<'static, str>,
    ending: Ending,
    duration: Option<Duration>,
) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("tx_transactions_total", "name" => name.clone(), "outcome" => super::outcome_label(ending.completion))
            .increment(1);
        if let Some(cause) = ending.cause {
            metrics::counter!("tx_rollbacks_total", "name" => name.clone(), "cause" => cause.as_str())
                .increment(1);
            if cause == RollbackCause::Timeout {
                metrics::counter!("tx_timeouts_total", "name" => name.clone()).increment(1);
            }
        }
        if let Some(d) = duration {
            metrics::histogram!("tx_transaction_duration_seconds", "name" => name.clone())
                .record(d.as_secs_f64());
        }
    }
}

/// A retried call is re-run.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn retried(name: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("tx_retries_total", "name" => name.to_owned()).increment(1);
}

/// Measures how long a transaction holds its connection: started when `BEGIN` succeeded,
/// recorded when dropped (after `COMMIT`/`ROLLBACK` returned the connection, or with the
/// dropped physical transaction). Empty without the `metrics` feature.
#[derive(Default)]
pub(crate) struct HoldTimer {
    #[cfg(feature = "metrics")]
    started: Option<(std::time::Instant, Cow<'static, str>)>,
}

impl HoldTimer {
    #[allow(clippy::ptr_arg)] // cloning the `Cow` keeps a static name unallocated
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn start(name: &Cow<'static, str>) -> HoldTimer {
        HoldTimer {
            #[cfg(feature = "metrics")]
            started: Some((std::time::Instant::now(), name.clone())),
        }
    }

    /// Records the hold now: the connection is back.
    pub(crate) fn stop(self) {}
}

#[cfg(feature = "metrics")]
impl Drop for HoldTimer {
    fn drop(&mut self) {
        if let Some((since, name)) = self.started.take() {
            metrics::histogram!("tx_connection_hold_seconds", "name" => name)
                .record(since.elapsed().as_secs_f64());
        }
    }
}

/// Registers the descriptions (help texts and units) of the engine's metrics with the
/// installed recorder: call it once after installing one (an exporter then prints them, e.g.
/// as Prometheus `# HELP` lines). The metrics are reported whether or not it is called.
///
/// ```
/// tx_core::describe_metrics(); // no recorder installed: nothing happens
/// ```
#[cfg(feature = "metrics")]
pub fn describe_metrics() {
    use metrics::Unit;
    metrics::describe_counter!(
        "tx_transactions_total",
        "Transactions completed, by name and outcome (committed, rolled_back, unknown)"
    );
    metrics::describe_counter!(
        "tx_rollbacks_total",
        "Transaction rollbacks, by name and cause (error, rollback_only, timeout, panic, cancelled, before_commit_failed, commit_failed)"
    );
    metrics::describe_counter!(
        "tx_timeouts_total",
        "Transactions rolled back at their deadline, by name"
    );
    metrics::describe_counter!(
        "tx_retries_total",
        "Re-runs of retried transactional calls after a serialization failure or deadlock, by name"
    );
    metrics::describe_histogram!(
        "tx_transaction_duration_seconds",
        Unit::Seconds,
        "Transaction duration, from the scope's start to the end of its completion, by name"
    );
    metrics::describe_histogram!(
        "tx_connection_hold_seconds",
        Unit::Seconds,
        "How long a transaction held its connection, from BEGIN to the connection's return, by name"
    );
}
