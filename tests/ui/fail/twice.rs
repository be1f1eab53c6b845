use tx_sqlx::prelude::*;

#[transactional(read_only)]
#[transactional(timeout = 5)]
async fn save() -> Result<(), TxError> {
    Ok(())
}

fn main() {}
