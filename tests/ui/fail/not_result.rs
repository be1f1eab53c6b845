use tx_sqlx::prelude::*;

#[transactional]
async fn count() -> Option<u32> {
    Some(1)
}

fn main() {}
