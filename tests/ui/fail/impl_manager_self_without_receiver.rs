use tx_sqlx::prelude::*;

struct Service {
    db: TxPool<sqlx::Postgres>,
}

#[transactional(manager = self.db)]
impl Service {
    async fn new() -> Result<Self, TxError> {
        unimplemented!()
    }
}

fn main() {}
