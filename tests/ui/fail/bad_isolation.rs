use tx_sqlx::prelude::*;

#[transactional(isolation = Snapshot)]
async fn save() -> Result<(), TxError> {
    Ok(())
}

fn main() {}
