//! The API on SQLite: two database files, `orders.db` and `audit.db` for the audit log (its
//! `RequiresNew` entries need a writer of their own while the order's transaction holds the
//! write lock of `orders.db`).

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tx_sqlx::{SqliteTxPool, TxError};

/// The pool (and transaction manager) the services of this module run on.
pub type Db = SqliteTxPool;

/// The column definition of an auto-increment key named `id`.
const ID_COLUMN: &str = "id INTEGER PRIMARY KEY AUTOINCREMENT";

/// A statement as written: SQLite takes PostgreSQL's `$1` placeholders.
fn sql(statement: &'static str) -> &'static str {
    statement
}

mod services {
    use super::*;
    include!("app/services.rs");
}

mod routes {
    use super::*;
    include!("app/routes.rs");
}

mod tables {
    use super::*;
    include!("app/tables.rs");
}

pub use routes::{Api, router};
pub use services::{AuditService, OrderService, PointsService, TransferService};

async fn pool(file: &Path) -> Result<Db, TxError> {
    let options = SqliteConnectOptions::new()
        .filename(file)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(5)
        .connect_with(options)
        .await?;
    Ok(SqliteTxPool::new(pool))
}

/// The API on two new SQLite databases in `dir`, with the seed data.
///
/// # Errors
///
/// The databases cannot be created.
pub async fn connect(dir: &Path) -> Result<Api, TxError> {
    let db = pool(&dir.join("orders.db")).await?;
    let audit_db = pool(&dir.join("audit.db")).await?;
    tables::create(&db, &audit_db).await?;
    Ok(Api::new(db, audit_db))
}
