use tx_sqlx::prelude::*;

#[transactional(retry = -1)]
async fn save() -> Result<(), TxError> {
    Ok(())
}

fn main() {}
