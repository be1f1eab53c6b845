use tx_sqlx::prelude::*;

#[transactional(propagation = RequireNew)]
async fn save() -> Result<(), TxError> {
    Ok(())
}

fn main() {}
