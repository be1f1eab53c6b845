use tx_sqlx::prelude::*;

struct Service {
    n: u32,
}

impl Service {
    #[transactional(retry = 3)]
    async fn consume(self) -> Result<u32, TxError> {
        Ok(self.n)
    }
}

fn main() {}
