//! Which manager a scope uses, resolved to its key first: joining needs only the key, and the
//! manager itself is looked up only when a transaction must begin.

use crate::error::TxError;
use crate::manager::{ManagerKey, ShareManager, SharedManager};
use crate::observe::{self};
use crate::registry;

/// Which manager a scope uses.
#[derive(Clone, Copy)]
pub enum ManagerRef<'a> {
    /// The default manager ([`crate::set_default_manager`]).
    Default,
    /// A manager registered by name ([`crate::register_manager`]).
    Named(&'a str),
    /// A manager the engine already shares.
    Shared(&'a SharedManager),
    /// A manager given by reference (`manager = self.db`).
    Borrowed(&'a dyn ShareManager),
}

/// The resolved manager: its key (enough to join) and, only when a transaction must begin,
/// the manager itself.
pub(super) struct Resolved<'r, 'a> {
    pub(super) key: ManagerKey,
    pub(super) by: &'r ManagerRef<'a>,
}

impl Resolved<'_, '_> {
    pub(super) fn share(&self) -> Result<SharedManager, TxError> {
        match *self.by {
            ManagerRef::Default => registry::default_manager(),
            ManagerRef::Named(name) => registry::named_manager(name),
            ManagerRef::Shared(m) => Ok(m.clone()),
            ManagerRef::Borrowed(m) => Ok(m.share()),
        }
    }

    /// The backend as `db.system` (looked up only for an enabled span).
    pub(super) fn db_system(&self) -> &'static str {
        let name = match *self.by {
            ManagerRef::Shared(m) => m.backend_name(),
            ManagerRef::Borrowed(m) => m.backend_name(),
            ManagerRef::Default | ManagerRef::Named(_) => {
                self.share().map_or("unknown", |m| m.backend_name())
            }
        };
        observe::db_system(name)
    }
}

impl<'a> ManagerRef<'a> {
    pub(super) fn resolve(&self) -> Result<Resolved<'_, 'a>, TxError> {
        let key = match *self {
            ManagerRef::Default => registry::default_key()?,
            ManagerRef::Named(name) => registry::named_key(name)?,
            ManagerRef::Shared(m) => m.key(),
            ManagerRef::Borrowed(m) => m.key(),
        };
        Ok(Resolved { key, by: self })
    }
}
