//! Runnable programs built on the seeds cases; see `examples/shop`.
