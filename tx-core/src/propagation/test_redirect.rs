//! Entering a scope the way a test transaction redirected it: on a savepoint of the test
//! transaction, which keeps a stand-in transaction's deadline.

use super::savepoint::SavepointEntry;
use crate::context::Context;
use crate::definition::TransactionDefinition;
use crate::error::TxError;
use crate::manager::ManagerKey;
use crate::test_redirect::Redirect;
use crate::transaction::SavepointCompletion;

/// Enters a scope the way [`redirect`](crate::test_redirect::redirect) decided.
pub(super) fn enter<'a>(
    redirect: Redirect,
    ctx: Context,
    key: ManagerKey,
    definition: &'a TransactionDefinition,
) -> Result<SavepointEntry<'a>, TxError> {
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
            Ok(SavepointEntry::new(ctx, key, owner, definition, completion))
        }
        Redirect::Fail => Err(TxError::NoTransaction),
    }
}
