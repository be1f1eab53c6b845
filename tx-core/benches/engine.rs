//! Engine micro-benchmark, no database: a no-op manager, so only the engine's own cost is
//! measured. Run: `cargo bench -p tx-core --bench engine` (nanoseconds). For a stable
//! instruction count, `tx-core/benches/instructions.sh` runs one case under
//! `valgrind --tool=callgrind` at two iteration counts and divides the difference.
//!
//! Cases: a joined Required call (what every inner `#[transactional]` call costs), a new
//! transaction whose body runs no statement (its bookkeeping), and registering one hook.

use std::hint::black_box;
use std::time::Instant;

use tx_core::__private::{ManagerRef, TransactionDefinition, by_expr, transactional};
use tx_core::testing::NoopManager;
use tx_core::{Isolation, Propagation, TxError};

static OUTER: TransactionDefinition = TransactionDefinition::__const(
    Propagation::Required,
    Isolation::Default,
    None,
    false,
    "bench::outer",
);
static JOINED: TransactionDefinition = TransactionDefinition::__const(
    Propagation::Required,
    Isolation::Default,
    None,
    false,
    "bench::joined",
);

fn all_err(_: &TxError) -> bool {
    true
}

/// What `#[transactional(manager = self.db)] async fn joined(&self) -> Result<u64, TxError>` is.
async fn joined(m: &NoopManager, i: u64) -> Result<u64, TxError> {
    transactional(by_expr(m), &JOINED, all_err, move || async move {
        Ok(black_box(i))
    })
    .await
}

async fn new_tx(m: &NoopManager, i: u64) -> Result<u64, TxError> {
    transactional(by_expr(m), &OUTER, all_err, move || async move {
        Ok(black_box(i))
    })
    .await
}

async fn with_hook(m: &NoopManager, n: u64) -> Result<u64, TxError> {
    transactional(by_expr(m), &OUTER, all_err, move || async move {
        for _ in 0..n {
            tx_core::after_commit(async {})?;
        }
        Ok(n)
    })
    .await
}

fn report(what: &str, iters: u64, elapsed: std::time::Duration) {
    println!(
        "engine case={what} iters={iters} ns_per_op={:.1}",
        elapsed.as_nanos() as f64 / iters as f64
    );
}

fn main() {
    let iters: u64 = std::env::args()
        .find_map(|a| {
            a.strip_prefix("--iters=")
                .map(|n| n.parse().expect("--iters=N"))
        })
        .unwrap_or(2_000_000);
    let only = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let m = NoopManager::default();
    let want = |case: &str| only.as_deref().is_none_or(|o| o == case);

    if want("joined") {
        rt.block_on(transactional(
            ManagerRef::Borrowed(&m),
            &OUTER,
            all_err,
            || async {
                for i in 0..iters / 10 {
                    joined(&m, i).await?;
                }
                let start = Instant::now();
                for i in 0..iters {
                    black_box(joined(&m, i).await?);
                }
                report("joined_required", iters, start.elapsed());
                Ok::<_, TxError>(())
            },
        ))
        .unwrap();
    }
    if want("new") {
        rt.block_on(async {
            let start = Instant::now();
            for i in 0..iters / 4 {
                black_box(new_tx(&m, i).await.unwrap());
            }
            report("new_transaction_no_statement", iters / 4, start.elapsed());
        });
    }
    if want("hook") {
        rt.block_on(async {
            // Cost per hook: (transactions with 100 hooks - without) / hooks.
            let (txs, per) = (iters / 400, 100);
            let start = Instant::now();
            for _ in 0..txs {
                black_box(with_hook(&m, per).await.unwrap());
            }
            let with = start.elapsed();
            let start = Instant::now();
            for _ in 0..txs {
                black_box(with_hook(&m, 0).await.unwrap());
            }
            let without = start.elapsed();
            report(
                "register_and_run_after_commit_hook",
                txs * per,
                with.saturating_sub(without),
            );
        });
    }
}
