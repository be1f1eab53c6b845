use tx_sqlx::prelude::*;

#[transactional(isolation = Serializable, readOnly = true)]
async fn save() -> Result<(), TxError> {
    Ok(())
}

fn main() {}
