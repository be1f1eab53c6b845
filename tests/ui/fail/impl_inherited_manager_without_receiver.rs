use tx_sqlx::prelude::*;

struct Service {
    db: TxPool<sqlx::Postgres>,
}

#[transactional(manager = self.db)]
impl Service {
    /// its own attribute names no manager, so it inherits `self.db`, which it cannot reach
    #[transactional(propagation = RequiresNew)]
    async fn create() -> Result<(), TxError> {
        Ok(())
    }

    #[transactional(propagation = RequiresNew, manager = "orders")]
    async fn named() -> Result<(), TxError> {
        Ok(())
    }
}

fn main() {}
