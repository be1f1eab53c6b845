//! Nested transactional calls must grow the caller's future additively, not multiplicatively:
//! the engine holds the body future once, so three levels of services each holding a 1 KiB
//! buffer across an await stay a few KiB, not the 50+ KiB a by-value body at every engine
//! layer produced (which overflowed 2 MiB test-thread stacks in debug builds).

use tx_core::__private::{TransactionDefinition, by_expr, transactional};
use tx_core::testing::NoopManager;
use tx_core::{Isolation, Propagation, TxError};

static DEF: TransactionDefinition = TransactionDefinition::__const(
    Propagation::Required,
    Isolation::Default,
    None,
    false,
    "size",
);

fn all(_: &TxError) -> bool {
    true
}

/// What `#[transactional(manager = m)]` expands a body holding a 1 KiB buffer into.
async fn level1(m: &NoopManager) -> Result<u8, TxError> {
    transactional(by_expr(m), &DEF, all, move || async move {
        let buf = [1u8; 1024];
        tokio::task::yield_now().await;
        Ok(buf[7])
    })
    .await
}

/// A transactional service whose body only calls the service one level down.
macro_rules! wrapping_level {
    ($name:ident calls $inner:ident) => {
        async fn $name(m: &NoopManager) -> Result<u8, TxError> {
            transactional(
                by_expr(m),
                &DEF,
                all,
                move || async move { $inner(m).await },
            )
            .await
        }
    };
}

wrapping_level!(level2 calls level1);
wrapping_level!(level3 calls level2);

#[test]
fn nested_calls_grow_the_future_additively() {
    let m = NoopManager::default();
    let (s1, s2, s3) = (
        std::mem::size_of_val(&level1(&m)),
        std::mem::size_of_val(&level2(&m)),
        std::mem::size_of_val(&level3(&m)),
    );
    let step = s2 - s1;
    println!("future sizes: {s1} {s2} {s3}");
    assert!(s1 < 4096, "one level: {s1} bytes");
    assert!(
        s3 - s2 <= step + 64,
        "levels must add a constant: {s1} {s2} {s3}"
    );
    assert!(s3 < 3 * s1, "three levels: {s1} {s2} {s3}");
}
