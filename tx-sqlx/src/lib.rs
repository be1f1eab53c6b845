//! tx-sqlx (work in progress).
pub use tx_core::*;
