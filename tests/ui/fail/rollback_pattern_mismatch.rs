use tx_sqlx::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Tx(#[from] TxError),
    #[error("risk check rejected the order: {reason}")]
    RiskRejected { reason: String },
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
