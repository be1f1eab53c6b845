use tx_sqlx::prelude::*;

#[transactional(propagation = "REQUIRES_NEW")]
async fn save() -> Result<(), TxError> {
    Ok(())
}

fn main() {}
