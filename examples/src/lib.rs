//! Runnable programs built on the classic Spring `@Transactional` cases, as a library so that
//! the test suite runs exactly what the examples print.
//!
//! * [`shop`]: the shop demo behind `cargo run --example shop`.
//! * [`observe`]: the bank behind `cargo run --example observe` (listener and metrics).
//! * [`demo`]: what those two programs share (logging, a temporary directory).
//! * [`per_backend`]: what the per-database modules of the shop and the orders API share.
//! * [`from_sqlx_through_tx!`]: the `From<sqlx::Error>` of every error type here, through
//!   `TxError`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod demo;
pub mod observe;
pub mod per_backend;
pub mod shop;
