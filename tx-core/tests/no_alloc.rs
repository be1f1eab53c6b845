//! A joined Required call allocates nothing beyond the user's future (issue 6): the context is
//! a few `Arc`s stored inline in the scope's future, and the status is a reference-count bump.

use std::alloc::System;
use std::sync::Arc;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tx_core::__private::{TransactionDefinition, by_expr, transactional};
use tx_core::manager::{
    BeginOptions, BoxFuture, ManagerKey, PhysicalTransaction, TransactionManager,
};
use tx_core::{Isolation, Propagation, TxError};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[derive(Clone, Default)]
struct Noop(Arc<()>);

impl TransactionManager for Noop {
    fn key(&self) -> ManagerKey {
        ManagerKey::of(&self.0)
    }
    fn begin(
        &self,
        _: BeginOptions,
    ) -> BoxFuture<'static, Result<Box<dyn PhysicalTransaction>, TxError>> {
        Box::pin(async { Err(TxError::NoManager) })
    }
}

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
    let m = Noop::default();
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
