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

#[derive(Debug)]
pub enum OtherError {
    Oops,
}

#[transactional(no_rollback_for = AppError::RiskRejected { .. } | OtherError::Oops)]
async fn place() -> Result<(), AppError> {
    Ok(())
}

fn main() {}
