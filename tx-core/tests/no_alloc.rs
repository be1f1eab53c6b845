//! A joined Required call allocates nothing beyond the user's future: the context is
//! a few `Arc`s stored inline in the scope's future, and the status is a reference-count bump.

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tx_core::__private::{TransactionDefinition, by_expr, transactional};
use tx_core::testing::NoopManager;
use tx_core::{Isolation, Propagation, TxError};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

static DEF: TransactionDefinition = TransactionDefinition::__const(
    Propagation::Required,
    Isolation::Default,
    None,
    false,
    "joined",
);

fn all(_: &TxError) -> bool {
    true
}

#[test]
fn joined_required_call_does_not_allocate() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let m = NoopManager::default();
    let allocations = rt.block_on(transactional(by_expr(&m), &DEF, all, || async {
        // Warm up (tracing's callsite registration allocates once).
        for i in 0..10u32 {
            transactional(by_expr(&m), &DEF, all, move || async move {
                Ok::<_, TxError>(i)
            })
            .await?;
        }
        let region = Region::new(GLOBAL);
        for i in 0..1000u32 {
            let v = transactional(by_expr(&m), &DEF, all, move || async move {
                Ok::<_, TxError>(i)
            })
            .await?;
            assert_eq!(v, i);
        }
        Ok::<_, TxError>(region.change().allocations)
    }));
    assert_eq!(allocations.unwrap(), 0, "a joined Required call allocated");
}
