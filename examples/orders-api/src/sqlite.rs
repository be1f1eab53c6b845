//! The API on SQLite: two database files, `orders.db` and `audit.db` for the audit log (its
//! `RequiresNew` entries need a writer of their own while the order's transaction holds the
//! write lock of `orders.db`).

use std::path::Path;
use std::time::Duration;

use tx_examples::per_backend::sqlite_file_pool;
use tx_sqlx::{SqliteTxPool, TxError};

crate::setup::api_backend!(
    sqlite,
    SqliteTxPool,
    "id INTEGER PRIMARY KEY AUTOINCREMENT",
    numbered
);

/// Opens (creating) the SQLite database `file` in WAL mode.
async fn pool(file: &Path) -> Result<Db, TxError> {
    Ok(sqlite_file_pool(file, 5, Duration::from_secs(10)).await?)
}

/// The API on two new SQLite databases in `dir`, with the seed data.
///
/// # Errors
///
/// The databases cannot be created.
pub async fn connect(dir: &Path) -> Result<Api, TxError> {
    let db = pool(&dir.join("orders.db")).await?;
    let audit_db = pool(&dir.join("audit.db")).await?;
    Api::create(db, audit_db).await
}
