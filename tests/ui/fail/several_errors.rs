use tx_sqlx::prelude::*;

#[transactional(isolation = Snapshot, timeout = 0, retry = -2, name = orders)]
async fn save() -> Result<(), TxError> {
    Ok(())
}

fn main() {}
