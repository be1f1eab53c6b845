use tx_sqlx::prelude::*;

struct Counter {
    n: u32,
}

impl Counter {
    #[transactional(isolation = Serializable, retry = 3)]
    async fn bump(&mut self) -> Result<u32, TxError> {
        self.n += 1;
        Ok(self.n)
    }
}

fn main() {}
