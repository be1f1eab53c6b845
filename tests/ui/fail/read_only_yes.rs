use tx_sqlx::prelude::*;

#[transactional(read_only = "yes")]
async fn save() -> Result<(), TxError> {
    Ok(())
}

fn main() {}
