//! Partitions: messages are spread over a fixed number of them by key, and relays lease them.

/// Number of partitions messages are spread over (by key). Relays lease partitions, so it
/// bounds how many relays can work at once.
pub(crate) const PARTITIONS: i32 = 32;

/// FNV-1a of a key: stable over processes and versions.
pub(crate) fn hash_key(key: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The partition of a message: by key, or at random without one.
pub(crate) fn partition_of(key: Option<&str>) -> i32 {
    match key {
        None => fastrand::i32(0..PARTITIONS),
        Some(k) => (hash_key(k) % PARTITIONS as u32) as i32,
    }
}
