//! The shop on SQLite: two database files, `shop.db` and `audit.db` for the audit log.
//!
//! A RequiresNew writer on the database whose write lock the order's transaction holds would
//! wait for itself, and fails fast with `TxError::WouldBlock`; the audit log therefore lives
//! in a second database with its own `TxPool`, a second transaction manager.

use std::path::Path;
use std::time::Duration;

use tx_sqlx::TxError;

use super::connect::POOL_SIZE;
use super::error::ShopError;
use crate::per_backend::sqlite_file_pool;

super::shop_backend!(Sqlite, "id INTEGER PRIMARY KEY AUTOINCREMENT", numbered);

/// Opens (creating) the SQLite database `file` in WAL mode.
async fn pool(file: &Path) -> Result<Db, ShopError> {
    Ok(sqlite_file_pool(file, POOL_SIZE, Duration::from_secs(5)).await?)
}

/// The shop on two new SQLite databases in `dir`.
///
/// # Errors
///
/// The database's: the files cannot be created, or the tables exist already.
pub async fn connect(dir: &Path) -> Result<Shop, ShopError> {
    let db = pool(&dir.join("shop.db")).await?;
    let audit_db = pool(&dir.join("audit.db")).await?;
    Shop::create(db, audit_db, true).await
}
