use tx_sqlx::prelude::*;

#[derive(Debug)]
pub struct StoreError;

pub type StoreResult<T> = Result<T, StoreError>;

#[transactional]
async fn read() -> StoreResult<u32> {
    Ok(1)
}

fn main() {}
