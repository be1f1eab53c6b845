use tx_sqlx::prelude::*;

trait Repo {
    #[transactional]
    async fn save(&self) -> Result<(), TxError>;
}

fn main() {}
