use tx_sqlx::prelude::*;

#[transactional(timeout = 5, read_only, timeout = "2s")]
async fn save() -> Result<(), TxError> {
    Ok(())
}

fn main() {}
