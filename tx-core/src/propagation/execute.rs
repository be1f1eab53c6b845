//! The engine's only generic code: runs the body of a scope [`Entered`] entered, in the
//! scope's context, span and deadline, and hands the scope how it ended. Everything that
//! decides, begins, completes or reports is in the scope, compiled once.

use std::future::Future;
use std::panic::{AssertUnwindSafe, resume_unwind};

use futures_util::FutureExt;
use tracing::Instrument;

use super::decide::{Entered, Entry};
use super::manager_ref::ManagerRef;
use super::outcome::{BodyEnd, Finish, RunInfo};
use crate::definition::TransactionDefinition;
use crate::error::TxError;
use crate::status::TransactionStatus;

/// Runs `body` in a scope with `definition`'s propagation on `manager`.
///
/// `rollback_on(&err)` says whether an `Err` of the body rolls the scope back (the rollback
/// rules); `Ok` commits unless something marked the scope rollback-only. `attempt`: for a
/// retried call, the run's number (from 1) and where it reports what the retry loop needs.
pub(crate) async fn run<T, E, Fut>(
    manager: ManagerRef<'_>,
    definition: &TransactionDefinition,
    rollback_on: impl Fn(&E) -> bool,
    body: impl FnOnce(TransactionStatus) -> Fut,
    attempt: Option<(u32, &mut RunInfo)>,
) -> Result<T, E>
where
    E: From<TxError>,
    Fut: Future<Output = Result<T, E>>,
{
    let (number, report) = match attempt {
        Some((number, report)) => (number, Some(report)),
        None => (1, None),
    };
    let mut scope = match Entered::enter(manager, definition, number) {
        Ok(Entry::Entered(scope)) => scope,
        Ok(Entry::Savepoint(entry)) => match Entered::savepoint(entry).await {
            Ok(scope) => scope,
            Err(e) => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    let (ctx, status) = scope.body();
    let run = ctx.run(AssertUnwindSafe(body(status)).catch_unwind());
    // One await per shape, so that without a span or deadline the body is polled as it is.
    let caught = match (scope.deadline(), scope.span().cloned()) {
        (None, None) => Ok(run.await),
        (None, Some(span)) => Ok(run.instrument(span).await),
        (Some(at), None) => tokio::time::timeout_at(at, run).await,
        (Some(at), Some(span)) => tokio::time::timeout_at(at, run).instrument(span).await,
    };
    let returned = match caught {
        Ok(Ok(returned)) => Ok(returned),
        Ok(Err(panic)) => Err(BodyEnd::Panicked(panic)),
        Err(_) => scope
            .timed_out()
            .map(|e| Err(e.into()))
            .ok_or(BodyEnd::TimedOut),
    };
    let (end, value) = match returned {
        Ok(Ok(v)) => (BodyEnd::Ok, Some(Ok(v))),
        Ok(Err(e)) => (
            BodyEnd::Err {
                rolls_back: rollback_on(&e),
            },
            Some(Err(e)),
        ),
        Err(end) => (end, None),
    };
    // A participant completes without a future of its own.
    let finish = match scope.complete_joined(end) {
        Ok(finish) => finish,
        Err(end) => scope.complete(end, report).await,
    };
    match (finish, value) {
        (Finish::Keep, Some(value)) => value,
        (Finish::Fail(e), _) => Err(e.into()),
        (Finish::Resume(panic), _) => resume_unwind(panic),
        (Finish::Keep, None) => unreachable!("a body that returned nothing is never kept"),
    }
}
