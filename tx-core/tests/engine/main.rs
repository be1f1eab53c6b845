//! tx-core's engine without a database, in one test binary: the managers of
//! `tx_core::testing` stand in for a backend, so each test sees exactly what the engine sends.
//!
//! Tests that install process-wide state stay in binaries of their own: `listener.rs`
//! (process-wide transaction listeners) and `no_alloc.rs` (a counting global allocator).

#[path = "../support/mod.rs"]
mod support;

mod edges;
mod events;
mod future_size;
#[cfg(feature = "metrics")]
mod metrics;
mod propagation;
mod spans;
mod template;
