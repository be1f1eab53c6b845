use tx_sqlx::prelude::*;

#[transactional(cache = 5)]
async fn save() -> Result<(), TxError> {
    Ok(())
}

fn main() {}
