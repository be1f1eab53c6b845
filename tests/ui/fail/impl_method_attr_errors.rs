use tx_sqlx::prelude::*;

struct Service {
    db: TxPool<sqlx::Postgres>,
}

/// Each method's mistake is reported once, at its token; the valid methods still expand.
#[transactional(manager = self.db)]
impl Service {
    #[transactional(readOnly)]
    async fn list(&self) -> Result<(), TxError> {
        Ok(())
    }

    #[transactional(timeout = 0)]
    async fn slow(&self) -> Result<(), TxError> {
        Ok(())
    }

    #[transactional = "x"]
    async fn odd(&self) -> Result<(), TxError> {
        Ok(())
    }

    #[transactional(read_only)]
    fn not_async(&self) -> Result<(), TxError> {
        Ok(())
    }

    #[transactional]
    async fn fine(&self) -> Result<(), TxError> {
        Ok(())
    }
}

fn main() {}
