use tx_sqlx::prelude::*;

#[transactional(timeout = "5 days")]
async fn save() -> Result<(), TxError> {
    Ok(())
}

#[transactional(timeout = "soon")]
async fn save2() -> Result<(), TxError> {
    Ok(())
}

#[transactional(timeout = 1.5)]
async fn save3() -> Result<(), TxError> {
    Ok(())
}

fn main() {}
