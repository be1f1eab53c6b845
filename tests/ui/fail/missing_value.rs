use tx_sqlx::prelude::*;

#[transactional(propagation, retry = 2)]
async fn save() -> Result<(), TxError> {
    Ok(())
}

fn main() {}
