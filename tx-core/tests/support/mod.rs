//! Helpers shared by tx-core's engine tests; the managers themselves are
//! `tx_core::testing::{NoopManager, RecordingManager}`.

#![allow(dead_code)] // each test binary uses part of it

mod cancel;

#[allow(unused_imports)] // as above
pub use cancel::{cancel_after, drain_until_rollback, wait_for_entry};

use tx_core::TransactionTemplate;
pub use tx_core::testing::{OperationLog, RecordingManager};

/// A template on `m` with the default definition.
pub fn t(m: &RecordingManager) -> TransactionTemplate {
    TransactionTemplate::new(m.clone())
}

/// An `FnOnce` body as the `FnMut` a template accepts (called once unless retried).
pub fn once<A, R>(f: impl FnOnce(A) -> R) -> impl FnMut(A) -> R {
    let mut f = Some(f);
    move |a| f.take().expect("a body without retries is called once")(a)
}
