//! Scale: 10,000 concurrent tasks, each running short transactions (deduct one product's
//! stock, commit) in a loop on a pool of 16, against 8 workers doing the same; and the
//! memory an in-flight transaction costs.
//!
//! Reported: throughput of the 10,000 tasks against the 8 workers; the wait for a
//! connection (from the transaction's start until the pool hands a connection over, its
//! liveness ping included) at p50/p99/max; fairness (completions per task: min, p1, median,
//! max); the size of the transactional call's future; allocations per transaction, tx
//! against hand-written sqlx; live heap per in-flight task with all 10,000 waiting.
//!
//! Run: `cargo bench -p tx-bench --bench scale` (options after `--`: `--tasks N`, default
//! 10000; `--secs S` per run, default 10). PostgreSQL at `TX_BENCH_PG_URL`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use tx_bench::postgres;
use tx_bench::workload::{ROWS, pick};

/// Counts live heap bytes and allocations, for the memory figures.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

tokio::task_local! {
    /// When the current transaction started, and the wait the pool's hook measured.
    static STARTED: Cell<(Instant, Option<Duration>)>;
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What one run of `tasks` looping tasks measured.
struct Run {
    tps: f64,
    /// Every transaction's wait for a connection, in ms, sorted.
    waits: Vec<f64>,
    /// Transactions completed per task, sorted.
    per_task: Vec<f64>,
    /// Live heap (bytes) at the peak, minus before the run.
    peak_heap: usize,
}

async fn run(shop: &postgres::Shop, tasks: usize, secs: f64) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let waits = Arc::new(Mutex::new(Vec::new()));
    let live0 = LIVE.load(Ordering::Relaxed);
    PEAK.store(live0, Ordering::Relaxed);
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (shop, stop, failed, waits) =
                (shop.clone(), stop.clone(), failed.clone(), waits.clone());
            tokio::spawn(
                STARTED.scope(Cell::new((Instant::now(), None)), async move {
                    let (mut done, mut mine) = (0u64, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        STARTED.with(|s| s.set((Instant::now(), None)));
                        match shop.short(pick().1).await {
                            Ok(()) => done += 1,
                            Err(e) => {
                                eprintln!("transaction failed: {e}");
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        if let Some(w) = STARTED.with(|s| s.get().1) {
                            mine.push(w.as_secs_f64() * 1e3);
                        }
                    }
                    waits.lock().unwrap().extend(mine);
                    done
                }),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut per_task = Vec::with_capacity(tasks);
    for h in handles {
        per_task.push(h.await.expect("task") as f64);
    }
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no transaction may fail");
    let peak_heap = PEAK.load(Ordering::Relaxed).saturating_sub(live0);
    let total: f64 = per_task.iter().sum();
    per_task.sort_by(f64::total_cmp);
    let mut waits = std::mem::take(&mut *waits.lock().unwrap());
    waits.sort_by(f64::total_cmp);
    Run {
        tps: total / elapsed,
        waits,
        per_task,
        peak_heap,
    }
}

/// Allocations (count, bytes) per call of `f`, over `n` sequential calls.
async fn allocations<F, Fut>(n: u64, f: F) -> (f64, f64)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..n {
        f().await;
    }
    let (a, b) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    ((a - a0) as f64 / n as f64, (b - b0) as f64 / n as f64)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let tasks: usize = arg("--tasks").map_or(10_000, |s| s.parse().expect("--tasks N"));
    let secs: f64 = arg("--secs").map_or(10.0, |s| s.parse().expect("--secs S"));
    let url = std::env::var("TX_BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("TX_BENCH_PG_URL");
    let pool_options = || {
        PgPoolOptions::new()
            .max_connections(16)
            .min_connections(16)
            // Long enough for the last of 10,000 queued tasks.
            .acquire_timeout(Duration::from_secs(600))
            .before_acquire(|_, _| {
                // Runs in the acquiring task: the wait ends here (after the liveness ping).
                let _ = STARTED.try_with(|s| {
                    let (started, _) = s.get();
                    s.set((started, Some(started.elapsed())));
                });
                Box::pin(async { Ok(true) })
            })
    };
    let shop = postgres::Shop::new(
        postgres::pool(options.clone(), "bench_scale_tx", pool_options()).await,
    );
    let hand =
        postgres::Hand::new(postgres::pool(options, "bench_scale_hand", pool_options()).await);

    let future = std::mem::size_of_val(&shop.short(1));
    let hand_future = std::mem::size_of_val(&hand.short(1));
    let p = || fastrand::i32(1..=ROWS);
    // Warm up both (connections, statement caches), then count.
    allocations(200, || async { shop.short(p()).await.unwrap() }).await;
    allocations(200, || async { hand.short(p()).await.unwrap() }).await;
    let (tx_allocs, tx_bytes) =
        allocations(2000, || async { shop.short(p()).await.unwrap() }).await;
    let (hand_allocs, hand_bytes) =
        allocations(2000, || async { hand.short(p()).await.unwrap() }).await;
    println!(
        "memory future_bytes: tx={future} hand={hand_future}; per transaction: tx {tx_allocs:.1} allocations / {tx_bytes:.0} bytes, hand-written {hand_allocs:.1} / {hand_bytes:.0}; tx's own: {:.1} allocations / {:.0} bytes",
        tx_allocs - hand_allocs,
        tx_bytes - hand_bytes
    );

    // Interleaved: 8 workers, the many tasks, 8 workers again.
    let eight_a = run(&shop, 8, secs).await;
    let many = run(&shop, tasks, secs).await;
    let eight_b = run(&shop, 8, secs).await;
    let eight = (eight_a.tps + eight_b.tps) / 2.0;
    for (name, r) in [("8", &eight_a), ("many", &many), ("8", &eight_b)] {
        println!(
            "scale run={name} tasks={} tps={:.0} wait_ms p50={:.1} p99={:.1} max={:.1} completions_per_task min={} p1={} median={} max={}",
            r.per_task.len(),
            r.tps,
            percentile(&r.waits, 0.5),
            percentile(&r.waits, 0.99),
            r.waits.last().copied().unwrap_or(0.0),
            r.per_task[0],
            percentile(&r.per_task, 0.01),
            percentile(&r.per_task, 0.5),
            r.per_task[r.per_task.len() - 1],
        );
    }
    println!(
        "scale tasks={tasks} throughput_vs_8_workers={:.3} waits_measured={} live_heap_per_task_bytes={:.0}",
        many.tps / eight,
        many.waits.len(),
        many.peak_heap as f64 / tasks as f64
    );
}
