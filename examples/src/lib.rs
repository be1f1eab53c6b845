//! Runnable programs built on the classic Spring `@Transactional` cases, as a library so that
//! the test suite runs exactly what the examples print.
//!
//! * [`shop`]: the shop demo behind `cargo run --example shop`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod shop;
