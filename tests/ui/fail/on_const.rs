use tx_sqlx::prelude::*;

#[transactional]
const LIMIT: u32 = 10;

fn main() {}
