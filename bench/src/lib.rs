//! The place-order workload of `BENCHMARKS.md` on PostgreSQL, MySQL/MariaDB and SQLite, each
//! as two peers sending the same statements: hand-written sqlx (`Hand`) and tx (`Shop`).
//!
//! `benches/place_order.rs` times them against each other; `tests/round_trips.rs` counts,
//! through [`wire::CountingProxy`], the statements each sends per unit of work.
//!
//! ```no_run
//! use tx_bench::workload::{Peer, Variant};
//! # async fn demo() {
//! let options = "postgres://postgres@127.0.0.1:5432/test".parse().unwrap();
//! let pool = tx_bench::postgres::pool(options, "bench_doc", Default::default()).await;
//! let shop = tx_bench::postgres::Shop::new(pool);
//! shop.unit(Variant::PlaceOrder).await.unwrap();
//! assert_eq!(shop.committed(), 1);
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod harness;
pub mod mysql;
pub mod postgres;
pub mod sqlite;
pub mod wire;
pub mod workload;
