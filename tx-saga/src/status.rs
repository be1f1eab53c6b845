//! Where a saga is: [`SagaStatus`], and the [`StuckSaga`] rows an operator looks at.

use std::fmt;
use std::time::Duration;

use crate::id::SagaId;

/// The state of one saga instance.
///
/// ```
/// use tx_saga::SagaStatus;
///
/// assert!(SagaStatus::Completed.is_final());
/// assert!(!SagaStatus::Compensating.is_final());
/// let stuck = SagaStatus::Stuck("compensation of `reserve_stock` failed: stock service down".into());
/// assert!(matches!(stuck, SagaStatus::Stuck(ref e) if e.contains("stock service")));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaStatus {
    /// Going forward: some steps remain.
    Running,
    /// A step failed for good: the completed steps are being compensated, in reverse order.
    Compensating,
    /// Every step completed.
    Completed,
    /// A step failed and every completed step was compensated.
    Compensated,
    /// A compensation failed past its limit (or the recorded saga cannot run, e.g. its state no
    /// longer deserializes): nothing runs until [`SagaEngine::resume`](crate::SagaEngine::resume)
    /// is called. Holds the last error.
    Stuck(String),
}

impl SagaStatus {
    /// True for `Completed` and `Compensated`: nothing will run any more.
    #[must_use]
    pub fn is_final(&self) -> bool {
        matches!(self, SagaStatus::Completed | SagaStatus::Compensated)
    }

    /// The status as stored (`running`, `compensating`, `completed`, `compensated`, `stuck`).
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            SagaStatus::Running => RUNNING,
            SagaStatus::Compensating => COMPENSATING,
            SagaStatus::Completed => COMPLETED,
            SagaStatus::Compensated => COMPENSATED,
            SagaStatus::Stuck(_) => STUCK,
        }
    }

    pub(crate) fn from_row(status: &str, last_error: Option<String>) -> Option<SagaStatus> {
        Some(match status {
            RUNNING => SagaStatus::Running,
            COMPENSATING => SagaStatus::Compensating,
            COMPLETED => SagaStatus::Completed,
            COMPENSATED => SagaStatus::Compensated,
            STUCK => SagaStatus::Stuck(last_error.unwrap_or_default()),
            _ => return None,
        })
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SagaStatus::Stuck(e) => write!(f, "stuck: {e}"),
            other => f.write_str(other.as_str()),
        }
    }
}

pub(crate) const RUNNING: &str = "running";
pub(crate) const COMPENSATING: &str = "compensating";
pub(crate) const COMPLETED: &str = "completed";
pub(crate) const COMPENSATED: &str = "compensated";
pub(crate) const STUCK: &str = "stuck";

/// A saga that needs a person, as listed by [`SagaEngine::stuck`](crate::SagaEngine::stuck).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StuckSaga {
    /// The saga instance.
    pub id: SagaId,
    /// Its registered name.
    pub name: String,
    /// The step it stopped at.
    pub step: String,
    /// True when it stopped while compensating (resuming goes on compensating).
    pub compensating: bool,
    /// Attempts made at that step.
    pub attempts: u32,
    /// The last error.
    pub error: String,
    /// How long it has been stuck.
    pub stuck_for: Duration,
}
