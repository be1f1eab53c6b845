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
pub(crate) struct ScopeTrace {
    span: Span,
    /// Taken when the span is enabled, or when `timed` asked for it (metrics).
    start: Option<Instant>,
}

impl ScopeTrace {
    /// Opens the span (`Span::none()` when no subscriber wants it; `fields` is then not
    /// called). `timed`: take the start time even without a span.
    #[inline]
    pub(crate) fn open<'a>(timed: bool, fields: impl FnOnce() -> Fields<'a>) -> ScopeTrace {
        let span = if tracing::span_enabled!(target: "tx", tracing::Level::INFO) {
            let f = fields();
            tracing::info_span!(
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
            )
        } else {
            Span::none()
        };
        let start = (timed || !span.is_none()).then(Instant::now);
        ScopeTrace { span, start }
    }

    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Time since the scope began, when it was taken.
    pub(crate) fn elapsed(&self) -> Option<Duration> {
        self.start.map(|s| s.elapsed())
    }

    /// Records how the scope ended (`completion`: `None` for a participant).
    pub(crate) fn close(&self, completion: Option<Completion>, cause: Option<RollbackCause>) {
        if self.span.is_none() {
            return;
        }
        if let Some(c) = completion {
            self.span.record("outcome", outcome_label(c));
        }
        if let Some(cause) = cause {
            self.span.record("cause", cause.as_str());
        }
        if let Some(d) = self.elapsed() {
            self.span.record("duration_ms", d.as_secs_f64() * 1000.0);
        }
    }
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
