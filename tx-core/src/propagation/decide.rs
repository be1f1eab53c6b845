//! The propagation decision, in one place: per scope, join, begin, suspend, take a savepoint
//! or refuse, by the scope's propagation and whether its manager has a transaction here; and
//! the scope that decision entered, which completes itself once told how its body ended.

use std::sync::Arc;

use super::manager_ref::ManagerRef;
use super::new_transaction::NewTransaction;
use super::outcome::{BodyEnd, Finish, RunInfo};
use super::owned::Owned;
use super::participate::Join;
use super::savepoint::{SavepointEntry, SavepointScope};
use super::trace::{log_resume, log_suspend};
use super::without::WithoutScope;
use crate::context::Context;
use crate::definition::{Propagation, TransactionDefinition};
use crate::error::TxError;
use crate::status::TransactionStatus;
use crate::transaction::{SavepointCompletion, Scope};

/// A scope whose body is about to run, of the kind the propagation asked for. It knows
/// nothing of the body's types: [`complete`](Entered::complete) is told how the body ended.
/// Dropped before it completed (the call was cancelled), it completes as cancelled.
pub(super) struct Entered<'a> {
    driver: Driver<'a>,
    /// The transaction a RequiresNew or NotSupported scope suspended, resumed after it.
    suspended: Option<Arc<Scope>>,
}

/// What deciding on a scope entered: the scope, or a savepoint scope that is entered once
/// its savepoint is taken ([`Entered::savepoint`], the one entry that awaits).
pub(super) enum Entry<'a> {
    Entered(Entered<'a>),
    Savepoint(SavepointEntry<'a>),
}

enum Driver<'a> {
    Join(Join),
    New(NewTransaction),
    Savepoint(SavepointScope<'a>),
    Without(WithoutScope<'a>),
}

impl Driver<'_> {
    /// What a scope that decides an outcome holds (not a participant).
    fn owned(&self) -> &Owned {
        match self {
            Driver::New(s) => s.owned(),
            Driver::Savepoint(s) => s.owned(),
            Driver::Without(s) => s.owned(),
            Driver::Join(_) => unreachable!("a participant decides no outcome"),
        }
    }
}

impl<'a> Entered<'a> {
    /// Enters a scope with `definition`'s propagation on `manager` (`attempt`: which run of a
    /// retried call, from 1), or refuses to. Synchronous: only a savepoint must await, and
    /// it is handed back to be entered by [`savepoint`](Self::savepoint).
    pub(super) fn enter(
        manager: ManagerRef<'_>,
        definition: &'a TransactionDefinition,
        attempt: u32,
    ) -> Result<Entry<'a>, TxError> {
        let manager = manager.resolve()?;
        let key = manager.key;
        let ctx = Context::current();
        let existing = ctx.bound_scope(key).cloned();

        // Inside a test transaction (feature `testing`), scopes that would begin or suspend a
        // transaction of its manager take savepoints of it instead.
        #[cfg(feature = "testing")]
        if let Some(redirect) =
            crate::test_redirect::redirect(key, definition.get_propagation(), existing.as_ref())
        {
            let entry = super::test_redirect::enter(redirect, ctx, key, definition)?;
            return Ok(Entry::Savepoint(entry));
        }

        // The propagation table, in one place: what each propagation does with and without a
        // transaction of this manager.
        let entered = match (definition.get_propagation(), existing) {
            (
                Propagation::Required | Propagation::Supports | Propagation::Mandatory,
                Some(owner),
            ) => Entered::new(Driver::Join(Join::enter(ctx, owner, definition)), None),
            (Propagation::Nested, Some(owner)) => {
                let completion = SavepointCompletion::Nested;
                return Ok(Entry::Savepoint(SavepointEntry::new(
                    ctx, key, owner, definition, completion,
                )));
            }
            (Propagation::RequiresNew, Some(suspended)) => {
                log_suspend(&suspended, definition, true);
                let m = manager.share().inspect_err(|_| log_resume(&suspended))?;
                let scope = NewTransaction::enter(ctx, key, m, definition, attempt);
                Entered::new(Driver::New(scope), Some(suspended))
            }
            (Propagation::Required | Propagation::RequiresNew | Propagation::Nested, None) => {
                let scope = NewTransaction::enter(ctx, key, manager.share()?, definition, attempt);
                Entered::new(Driver::New(scope), None)
            }
            (Propagation::NotSupported, Some(suspended)) => {
                log_suspend(&suspended, definition, false);
                let scope = WithoutScope::enter(ctx, &manager, Some(key), definition);
                Entered::new(Driver::Without(scope), Some(suspended))
            }
            (Propagation::Supports | Propagation::NotSupported | Propagation::Never, None) => {
                let scope = WithoutScope::enter(ctx, &manager, None, definition);
                Entered::new(Driver::Without(scope), None)
            }
            (Propagation::Mandatory, None) => return Err(TxError::NoTransaction),
            (Propagation::Never, Some(_)) => return Err(TxError::ExistingTransaction),
        };
        Ok(Entry::Entered(entered))
    }

    /// Enters a savepoint scope [`enter`](Self::enter) decided on: takes the savepoint.
    pub(super) async fn savepoint(entry: SavepointEntry<'a>) -> Result<Entered<'a>, TxError> {
        let scope: SavepointScope<'a> = entry.enter().await?;
        Ok(Entered::new(Driver::Savepoint(scope), None))
    }

    fn new(driver: Driver<'a>, suspended: Option<Arc<Scope>>) -> Self {
        Entered { driver, suspended }
    }

    /// The context the body runs in, and the status it is given.
    #[inline]
    pub(super) fn body(&mut self) -> (Context, TransactionStatus) {
        match &mut self.driver {
            Driver::Join(s) => s.body(),
            owner => owner.owned().body(),
        }
    }

    /// The span the body runs in, when a subscriber wants it.
    #[inline]
    pub(super) fn span(&self) -> Option<&tracing::Span> {
        match &self.driver {
            Driver::Join(s) => s.trace(),
            owner => &owner.owned().trace,
        }
        .enabled_span()
    }

    /// When the body must have ended (asked once, as it starts).
    #[inline]
    pub(super) fn deadline(&self) -> Option<tokio::time::Instant> {
        match &self.driver {
            Driver::New(s) => s.deadline(),
            #[cfg(feature = "testing")]
            Driver::Savepoint(s) => s
                .stand_in_timeout()
                .map(|t| tokio::time::Instant::now() + t),
            _ => None,
        }
    }

    /// The body ran past [`deadline`](Self::deadline): `None` when it is dropped there
    /// ([`BodyEnd::TimedOut`]), else the error it is taken to have returned.
    pub(super) fn timed_out(&self) -> Option<TxError> {
        match &self.driver {
            #[cfg(feature = "testing")]
            Driver::Savepoint(s) => Some(s.stand_in_timed_out()),
            _ => None,
        }
    }

    /// Completes a participant, which has nothing to await, at once; hands `end` back to
    /// any other scope, to [`complete`](Self::complete).
    #[inline]
    pub(super) fn complete_joined(&mut self, end: BodyEnd) -> Result<Finish, BodyEnd> {
        match &mut self.driver {
            Driver::Join(s) => Ok(s.complete(end)),
            _ => Err(end),
        }
    }

    /// Completes the scope as its body ended; a new transaction reports to `report`.
    pub(super) async fn complete(&mut self, end: BodyEnd, report: Option<&mut RunInfo>) -> Finish {
        let finish = match &mut self.driver {
            Driver::Join(s) => s.complete(end),
            Driver::New(s) => s.complete(end, report).await,
            Driver::Savepoint(s) => s.complete(end).await,
            Driver::Without(s) => s.complete(end).await,
        };
        if let Some(suspended) = &self.suspended
            && !matches!(finish, Finish::Resume(_))
        {
            log_resume(suspended);
        }
        finish
    }
}
