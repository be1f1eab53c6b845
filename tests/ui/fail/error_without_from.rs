use tx_sqlx::prelude::*;

#[derive(Debug)]
pub struct MyError;

#[transactional]
async fn save() -> Result<(), MyError> {
    Ok(())
}

fn main() {}
