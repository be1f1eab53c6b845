use tx_sqlx::prelude::*;

#[transactional(retry = 3)]
async fn fill(out: &mut Vec<u32>) -> Result<(), TxError> {
    out.push(1);
    Ok(())
}

fn main() {}
