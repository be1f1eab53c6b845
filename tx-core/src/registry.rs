//! The process-wide default manager and the managers registered by name.
//!
//! Read on every transactional call that does not name its manager, so reads are lock-free
//! (`ArcSwap`); writes happen at start-up.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::error::TxError;
use crate::manager::{ManagerKey, ShareManager, SharedManager};

static DEFAULT: ArcSwapOption<SharedManager> = ArcSwapOption::const_empty();

static NAMED: std::sync::LazyLock<ArcSwap<HashMap<Cow<'static, str>, SharedManager>>> =
    std::sync::LazyLock::new(|| ArcSwap::from_pointee(HashMap::new()));

/// Makes `manager` the one used by `#[transactional]` functions and
/// `TransactionTemplate::default()` that do not name another. Replaces any previous default.
///
/// ```
/// # use tx_core::testing::NoopManager;
/// tx_core::set_default_manager(NoopManager::default());
/// ```
pub fn set_default_manager(manager: impl ShareManager) {
    DEFAULT.store(Some(Arc::new(manager.share())));
}

/// Registers `manager` under `name`, for `#[transactional(manager = "name")]`.
/// Replaces a manager registered earlier under the same name.
///
/// ```
/// # use tx_core::testing::NoopManager;
/// tx_core::register_manager("audit", NoopManager::default());
/// ```
pub fn register_manager(name: impl Into<Cow<'static, str>>, manager: impl ShareManager) {
    let name = name.into();
    let shared = manager.share();
    NAMED.rcu(|map| {
        let mut map = HashMap::clone(map);
        map.insert(name.clone(), shared.clone());
        map
    });
}

/// The default manager's key, without taking a reference on it (every call that joins reads
/// this; cloning the `Arc` would make all cores write one cache line).
pub(crate) fn default_key() -> Result<ManagerKey, TxError> {
    DEFAULT
        .load()
        .as_deref()
        .map(|m| m.key())
        .ok_or(TxError::NoManager)
}

/// The key of the manager registered under `name`.
pub(crate) fn named_key(name: &str) -> Result<ManagerKey, TxError> {
    NAMED
        .load()
        .get(name)
        .map(|m| m.key())
        .ok_or_else(|| TxError::UnknownManager {
            name: Cow::Owned(name.to_owned()),
        })
}

/// The default manager.
pub(crate) fn default_manager() -> Result<SharedManager, TxError> {
    DEFAULT.load().as_deref().cloned().ok_or(TxError::NoManager)
}

/// The manager registered under `name`.
pub(crate) fn named_manager(name: &str) -> Result<SharedManager, TxError> {
    NAMED
        .load()
        .get(name)
        .cloned()
        .ok_or_else(|| TxError::UnknownManager {
            name: Cow::Owned(name.to_owned()),
        })
}
