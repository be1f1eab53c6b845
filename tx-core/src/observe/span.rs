//! The `tx` span of a transactional scope: its fields, and what is recorded when it closes.
//!
//! Fields (set when the scope begins):
//!
//! | field | value |
//! |---|---|
//! | `name` | the scope's name (for `#[transactional]`, the function's path by default) |
//! | `propagation` | what the scope asked for: `Required`, `RequiresNew`, `Nested`, ... |
//! | `isolation`, `read_only` | the settings of the transaction it runs in (a participant's and a savepoint's are their owner's) |
//! | `db.system` | `postgresql`, `mysql` or `sqlite` (another backend's own name) |
//! | `tx_id` | the transaction it runs in (unique in the process); absent without a transaction |
//! | `scope_id` | this scope (equal to `tx_id` for the scope that began the transaction) |
//! | `scope` | `new_transaction`, `participant`, `savepoint` or `no_transaction` |
//! | `attempt` | which run of a retried call, from 1 |
//!
//! Recorded when it ends: `outcome` (`committed`, `rolled_back`, `unknown`; not for a
//! participant, whose owner decides), `cause` of a rollback (see
//! [`RollbackCause`](super::RollbackCause); for a participant, why it marked the transaction
//! rollback-only) and `duration_ms`.

use std::time::{Duration, Instant};

use tracing::Span;
use tracing::field::Empty;

use super::RollbackCause;
use super::outcome_label;
use crate::completion::Completion;
use crate::definition::{Isolation, Propagation};

/// The fields of a scope's span, computed only when the span is enabled.
pub(crate) struct Fields<'a> {
    pub(crate) name: &'a str,
    pub(crate) propagation: Propagation,
    pub(crate) isolation: Isolation,
    pub(crate) read_only: bool,
    /// Already mapped to `db.system`.
    pub(crate) backend: &'static str,
    pub(crate) tx_id: Option<u64>,
    pub(crate) scope_id: u64,
    pub(crate) scope: &'static str,
    pub(crate) attempt: u32,
}

/// The span of one scope and when it started.
///
/// Without an interested subscriber the span is absent (`None`, nothing allocated, nothing
/// entered): a joined call then pays a callsite check and a few branches.
#[derive(Default)]
pub(crate) struct ScopeTrace {
    /// Only with an interested subscriber: a participant's trace is then one null pointer.
    traced: Option<Box<Traced>>,
    /// The start of a scope timed without a span (the duration histogram).
    #[cfg(feature = "metrics")]
    timed: Option<Instant>,
}

struct Traced {
    span: Span,
    start: Instant,
}

impl ScopeTrace {
    /// Opens the span when a subscriber wants it (`fields` is only called then). `timed`:
    /// take the start time even without a span.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn open<'a>(timed: bool, fields: impl FnOnce() -> Fields<'a>) -> ScopeTrace {
        let traced = if tracing::span_enabled!(target: "tx", tracing::Level::INFO) {
            open_span(fields())
        } else {
            None
        };
        ScopeTrace {
            #[cfg(feature = "metrics")]
            timed: (timed && traced.is_none()).then(Instant::now),
            traced,
        }
    }

    /// The span (`Span::none()` when disabled).
    pub(crate) fn span(&self) -> Span {
        match &self.traced {
            Some(t) => t.span.clone(),
            None => Span::none(),
        }
    }

    /// Runs `f` in the span.
    #[inline]
    pub(crate) fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.traced {
            None => f(),
            Some(t) => t.span.in_scope(f),
        }
    }

    /// The span, when enabled.
    #[inline]
    pub(crate) fn enabled_span(&self) -> Option<&Span> {
        self.traced.as_ref().map(|t| &t.span)
    }

    /// Time since the scope began, when it was taken.
    pub(crate) fn elapsed(&self) -> Option<Duration> {
        if let Some(t) = &self.traced {
            return Some(t.start.elapsed());
        }
        #[cfg(feature = "metrics")]
        if let Some(start) = self.timed {
            return Some(start.elapsed());
        }
        None
    }

    /// Records how the scope ended (`completion`: `None` for a participant).
    #[inline]
    pub(crate) fn close(&self, completion: Option<Completion>, cause: Option<RollbackCause>) {
        if let Some(t) = &self.traced {
            t.record_end(completion, cause);
        }
    }
}

impl Traced {
    #[cold]
    fn record_end(&self, completion: Option<Completion>, cause: Option<RollbackCause>) {
        if let Some(c) = completion {
            self.span.record("outcome", outcome_label(c));
        }
        if let Some(cause) = cause {
            self.span.record("cause", cause.as_str());
        }
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        self.span.record("duration_ms", ms);
    }
}

#[cold]
fn open_span(f: Fields<'_>) -> Option<Box<Traced>> {
    let span = tracing::info_span!(
        target: "tx",
        "tx",
        name = f.name,
        propagation = propagation_label(f.propagation),
        isolation = isolation_label(f.isolation),
        read_only = f.read_only,
        db.system = f.backend,
        tx_id = f.tx_id,
        scope_id = f.scope_id,
        scope = f.scope,
        attempt = f.attempt,
        outcome = Empty,
        cause = Empty,
        duration_ms = Empty,
    );
    // Enabled as a callsite, yet a filter on its fields may still have turned it down.
    (!span.is_disabled()).then(|| {
        Box::new(Traced {
            span,
            start: Instant::now(),
        })
    })
}

fn propagation_label(p: Propagation) -> &'static str {
    match p {
        Propagation::Required => "Required",
        Propagation::RequiresNew => "RequiresNew",
        Propagation::Nested => "Nested",
        Propagation::Supports => "Supports",
        Propagation::NotSupported => "NotSupported",
        Propagation::Mandatory => "Mandatory",
        Propagation::Never => "Never",
    }
}

fn isolation_label(i: Isolation) -> &'static str {
    match i {
        Isolation::Default => "Default",
        Isolation::ReadUncommitted => "ReadUncommitted",
        Isolation::ReadCommitted => "ReadCommitted",
        Isolation::RepeatableRead => "RepeatableRead",
        Isolation::Serializable => "Serializable",
    }
}
