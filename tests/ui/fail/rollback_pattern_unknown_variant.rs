use tx_sqlx::prelude::*;

#[derive(Debug)]
pub enum AppError {
    Tx(TxError),
    RiskRejected { reason: String },
}
impl From<TxError> for AppError {
    fn from(e: TxError) -> Self {
        AppError::Tx(e)
    }
}

#[transactional(rollback_for = AppError::Risk { .. })]
async fn place() -> Result<(), AppError> {
    Ok(())
}

fn main() {}
