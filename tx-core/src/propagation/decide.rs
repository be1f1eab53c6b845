//! The propagation decision, in one place: per scope, join, begin, suspend, take a savepoint
//! or refuse, by the scope's propagation and whether its manager has a transaction here.

use std::future::Future;

use super::manager_ref::ManagerRef;
use super::new_transaction::new_transaction;
use super::outcome::RunInfo;
use super::participate::participate;
use super::savepoint::savepoint;
use super::trace::log_resume;
use super::without::without_transaction;
use crate::context::Context;
use crate::definition::{Propagation, TransactionDefinition};
use crate::error::TxError;
use crate::status::TransactionStatus;
use crate::transaction::SavepointCompletion;

/// Runs `body` in a scope with `definition`'s propagation on `manager`.
///
/// `rollback_on(&err)` says whether an `Err` of the body rolls the scope back (the rollback
/// rules); `Ok` commits unless something marked the scope rollback-only.
pub(crate) fn execute<'a, T, E, F, Fut, R>(
    manager: ManagerRef<'a>,
    definition: &'a TransactionDefinition,
    rollback_on: R,
    body: F,
) -> impl Future<Output = (Result<T, E>, RunInfo)> + 'a
where
    E: From<TxError> + 'a,
    T: 'a,
    F: FnOnce(TransactionStatus) -> Fut + 'a,
    Fut: Future<Output = Result<T, E>> + 'a,
    R: Fn(&E) -> bool + 'a,
{
    execute_attempt(manager, definition, rollback_on, body, 1)
}

/// [`execute`], as run number `attempt` (from 1) of a retried call.
pub(crate) async fn execute_attempt<T, E, F, Fut, R>(
    manager: ManagerRef<'_>,
    definition: &TransactionDefinition,
    rollback_on: R,
    body: F,
    attempt: u32,
) -> (Result<T, E>, RunInfo)
where
    E: From<TxError>,
    F: FnOnce(TransactionStatus) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Fn(&E) -> bool,
{
    let manager = match manager.resolve() {
        Ok(m) => m,
        Err(e) => return (Err(e.into()), RunInfo::default()),
    };
    let key = manager.key;
    let ctx = Context::current();
    let existing = ctx.bound_scope(key).cloned();

    // Inside a test transaction (feature `testing`), scopes that would begin or suspend a
    // transaction of its manager take savepoints of it instead.
    #[cfg(feature = "testing")]
    if let Some(redirect) =
        crate::test_redirect::redirect(key, definition.get_propagation(), existing.as_ref())
    {
        // Boxed, so that this path does not grow the future of every scope.
        let r = super::test_redirect::execute(redirect, ctx, key, definition, rollback_on, body);
        return (Box::pin(r).await, RunInfo::default());
    }

    // The propagation table, in one place: what each propagation does with and without a
    // transaction of this manager.
    match (definition.get_propagation(), existing) {
        (Propagation::Required | Propagation::Supports | Propagation::Mandatory, Some(owner)) => (
            participate(ctx, owner, definition, rollback_on, body).await,
            RunInfo::default(),
        ),
        (Propagation::Nested, Some(owner)) => (
            savepoint(
                ctx,
                key,
                owner,
                definition,
                SavepointCompletion::Nested,
                rollback_on,
                body,
            )
            .await,
            RunInfo::default(),
        ),
        (Propagation::RequiresNew, Some(suspended)) => {
            tracing::debug!(
                target: "tx",
                "Suspending current transaction [{}], creating new transaction with name [{}]",
                suspended.name(),
                definition.get_name()
            );
            let run = match manager.share() {
                Ok(m) => new_transaction(ctx, key, m, definition, rollback_on, body, attempt).await,
                Err(e) => (Err(e.into()), RunInfo::default()),
            };
            log_resume(&suspended);
            run
        }
        (Propagation::Required | Propagation::RequiresNew | Propagation::Nested, None) => {
            match manager.share() {
                Ok(m) => new_transaction(ctx, key, m, definition, rollback_on, body, attempt).await,
                Err(e) => (Err(e.into()), RunInfo::default()),
            }
        }
        (Propagation::NotSupported, Some(suspended)) => {
            tracing::debug!(
                target: "tx",
                "Suspending current transaction [{}] for non-transactional scope [{}]",
                suspended.name(),
                definition.get_name()
            );
            let result =
                without_transaction(ctx, &manager, Some(key), definition, rollback_on, body).await;
            log_resume(&suspended);
            (result, RunInfo::default())
        }
        (Propagation::Supports | Propagation::NotSupported | Propagation::Never, None) => (
            without_transaction(ctx, &manager, None, definition, rollback_on, body).await,
            RunInfo::default(),
        ),
        (Propagation::Mandatory, None) => (Err(TxError::NoTransaction.into()), RunInfo::default()),
        (Propagation::Never, Some(_)) => {
            (Err(TxError::ExistingTransaction.into()), RunInfo::default())
        }
    }
}
