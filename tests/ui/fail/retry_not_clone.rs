use tx_sqlx::prelude::*;

pub struct Command {
    pub id: u32,
}

#[transactional(retry = 3)]
async fn handle(cmd: Command) -> Result<u32, TxError> {
    Ok(cmd.id)
}

fn main() {}
