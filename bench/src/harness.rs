//! Timed runs of a [`Peer`]: a fixed count of units spread over concurrent workers, with the
//! workload's checks after every run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::workload::{Peer, Variant};

/// What one run measured.
pub struct RunResult {
    /// Units per second.
    pub tps: f64,
    /// This process's CPU time (user + system) per unit, in microseconds.
    pub cpu_us: f64,
    /// Whether the checks passed (counter == committed units == orders rows == audit rows).
    pub ok: bool,
}

/// CPU time of this process so far (utime + stime from /proc/self/stat, clock ticks of 10 ms).
pub fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15 of the line: 11th and 12th after the name.
    match (f.get(10), f.get(11)) {
        (Some(u), Some(s)) => Duration::from_millis((u + s) * 10),
        _ => Duration::ZERO,
    }
}

/// Runs `units` units of `variant` on `workers` workers and prints one line:
/// `peer=<name> variant=<v> workers=<w> units=<n> secs=<s> tps=<x> client_cpu_us_per_unit=<c> check=ok|FAIL`.
pub async fn run<P: Peer>(
    name: &str,
    peer: &P,
    variant: Variant,
    units: u64,
    workers: usize,
) -> RunResult {
    let (orders0, audit0) = peer.rows().await;
    let counter0 = peer.committed();
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let cpu0 = process_cpu();
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (peer, next, failed) = (peer.clone(), next.clone(), failed.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < units {
                    if let Err(e) = peer.unit(variant).await {
                        eprintln!("unit failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in tasks {
        w.await.expect("worker");
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_us = (process_cpu() - cpu0).as_secs_f64() * 1e6 / units as f64;
    let committed = units - failed.load(Ordering::Relaxed);
    let counted = peer.committed() - counter0;
    let (orders, audits) = peer.rows().await;
    let (orders, audits) = (orders - orders0, audits - audit0);
    let expect_rows = if variant == Variant::Empty {
        0
    } else {
        committed
    };
    let ok = counted == committed
        && orders == expect_rows
        && audits == expect_rows
        && committed == units;
    let tps = units as f64 / secs;
    println!(
        "peer={name} variant={} workers={workers} units={units} secs={secs:.2} tps={tps:.0} client_cpu_us_per_unit={cpu_us:.1} check={}",
        variant.name(),
        if ok { "ok" } else { "FAIL" }
    );
    if !ok {
        println!("  counter={counted} committed={committed} orders={orders} audit={audits}");
    }
    RunResult { tps, cpu_us, ok }
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
