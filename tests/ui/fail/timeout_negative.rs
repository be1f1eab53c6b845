use tx_sqlx::prelude::*;

#[transactional(timeout = -5)]
async fn save() -> Result<(), TxError> {
    Ok(())
}

fn main() {}
