use tx_sqlx::prelude::*;

#[transactional]
fn not_async() -> Result<(), TxError> {
    Ok(())
}

fn main() {}
