//! Checks of what callers pass in: table names, and the misuse error that says what to do.

use tx_sqlx::{Operation, TxError};

/// A validated table name (letters, digits, `_`; starts with a letter or `_`).
pub(crate) fn check_table_name(name: &str) -> Result<(), TxError> {
    if tx_sqlx::sql_text::is_plain_identifier(name, 48) {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid outbox/inbox table name {name:?}: use 1 to 48 ASCII letters, digits and \
             underscores, starting with a letter or underscore"
        )))
    }
}

/// A misuse error with a message saying what to do.
pub(crate) fn invalid(message: String) -> TxError {
    TxError::database(
        Operation::Statement,
        false,
        std::io::Error::new(std::io::ErrorKind::InvalidInput, message),
    )
}
