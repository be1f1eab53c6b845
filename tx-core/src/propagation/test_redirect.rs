//! Entering a scope the way a test transaction redirected it: on a savepoint of the test
//! transaction, which keeps a stand-in transaction's deadline.

use super::savepoint::SavepointScope;
use crate::context::Context;
use crate::definition::TransactionDefinition;
use crate::error::TxError;
use crate::manager::ManagerKey;
use crate::test_redirect::Redirect;
use crate::transaction::SavepointCompletion;

/// Enters a scope the way [`redirect`](crate::test_redirect::redirect) decided.
pub(super) async fn enter<'a>(
    redirect: Redirect,
    ctx: Context,
    key: ManagerKey,
    definition: &'a TransactionDefinition,
) -> Result<SavepointScope<'a>, TxError> {
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
            SavepointScope::enter(ctx, key, owner, definition, completion).await
        }
        Redirect::Fail => Err(TxError::NoTransaction),
    }
}
