//! See `benches/place_order.rs`.
