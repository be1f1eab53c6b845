use tx_sqlx::prelude::*;

#[transactional]
async fn save() {}

fn main() {}
