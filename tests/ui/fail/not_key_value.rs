use tx_sqlx::prelude::*;

#[transactional("REQUIRES_NEW")]
async fn save() -> Result<(), TxError> {
    Ok(())
}

fn main() {}
