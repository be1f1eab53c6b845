use tx_sqlx::prelude::*;

struct Service {
    name: String,
    by_ref: &'static str,
}

impl Service {
    #[transactional(manager = self.name)]
    async fn field(&self) -> Result<(), TxError> {
        Ok(())
    }

    #[transactional(manager = self.by_ref)]
    async fn reference(&mut self) -> Result<(), TxError> {
        Ok(())
    }
}

fn main() {}
