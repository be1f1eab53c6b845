use tx_sqlx::prelude::*;

#[transactional(timeout = 0)]
async fn save() -> Result<(), TxError> {
    Ok(())
}

#[transactional(timeout = "0ms")]
async fn save_str() -> Result<(), TxError> {
    Ok(())
}

fn main() {}
