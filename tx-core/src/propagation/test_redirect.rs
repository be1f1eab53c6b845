//! Running a scope the way a test transaction redirected it: on a savepoint of the test
//! transaction, which keeps a stand-in transaction's deadline.

use std::future::Future;

use crate::context::Context;
use crate::definition::TransactionDefinition;
use crate::error::TxError;
use crate::manager::ManagerKey;
use crate::propagation::savepoint::savepoint;
use crate::status::TransactionStatus;
use crate::test_redirect::Redirect;
use crate::transaction::SavepointCompletion;

/// Runs a scope the way [`redirect`] decided.
pub(crate) async fn execute<T, E, F, Fut, R>(
    redirect: Redirect,
    ctx: Context,
    key: ManagerKey,
    definition: &TransactionDefinition,
    rollback_on: R,
    body: F,
) -> Result<T, E>
where
    E: From<TxError>,
    F: FnOnce(TransactionStatus) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Fn(&E) -> bool,
{
    match redirect {
        Redirect::Savepoint { owner, completion } => {
            tracing::debug!(
                target: "tx",
                "Test transaction: savepoint in [{}] for {} scope [{}]",
                owner.name(),
                match completion {
                    SavepointCompletion::WithoutTransaction { .. } => "non-transactional",
                    _ => "new transaction",
                },
                definition.get_name()
            );
            let timeout = match completion {
                SavepointCompletion::NewTransaction => definition.get_timeout(),
                _ => None,
            };
            let Some(timeout) = timeout else {
                return savepoint(ctx, key, owner, definition, completion, rollback_on, body).await;
            };
            // The stand-in of a transaction keeps its deadline: past it, it rolls back.
            let bounded = move |status: TransactionStatus| async move {
                match tokio::time::timeout(timeout, body(status.clone())).await {
                    Ok(r) => r,
                    Err(_) => {
                        status.set_rollback_only();
                        Err(TxError::Timeout.into())
                    }
                }
            };
            savepoint(
                ctx,
                key,
                owner,
                definition,
                completion,
                rollback_on,
                bounded,
            )
            .await
        }
        Redirect::Fail => Err(TxError::NoTransaction.into()),
    }
}
