//! Where the demo runs: the backend chosen from `DATABASE_URL`, and running every case there.

use std::path::Path;
use std::time::Duration;

use super::error::ShopError;
use super::reports::DemoReport;
pub use crate::per_backend::Target;

/// Connections per pool: enough for a RequiresNew beside its suspended transaction and two
/// concurrent buyers.
pub(crate) const POOL_SIZE: u32 = 5;

/// How long a statement may wait for a free connection of a server's pool.
pub(crate) const ACQUIRE: Duration = Duration::from_secs(10);

/// The database a shop runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// MariaDB / MySQL.
    MySql,
    /// SQLite.
    Sqlite,
}

impl Backend {
    /// A human name for output.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "PostgreSQL",
            Backend::MySql => "MariaDB/MySQL",
            Backend::Sqlite => "SQLite",
        }
    }
}

/// `name`, if it is a plain identifier: schema and database names go into DDL.
pub(crate) fn check_name(name: &str) -> Result<&str, ShopError> {
    let ok = !name.is_empty()
        && name.len() <= 60
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(name)
    } else {
        Err(ShopError::InvalidNamespace(name.to_owned()))
    }
}

/// The schema (PostgreSQL) or database (MariaDB) the demo binary uses, left in place
/// afterwards for inspection.
pub const DEMO_NAMESPACE: &str = "tx_shop_demo";

/// Sets the shop up on `target` and runs every case. SQLite databases live in `sqlite_dir`.
///
/// # Errors
///
/// A failure to set the shop up (an unreachable server, a bad URL, ...), or a case failing
/// in a way the demo does not expect.
pub async fn run_demo(target: &Target, sqlite_dir: &Path) -> Result<DemoReport, ShopError> {
    match target {
        Target::Sqlite => super::sqlite::connect(sqlite_dir).await?.run_all().await,
        Target::Postgres(url) => {
            super::postgres::connect(url, DEMO_NAMESPACE)
                .await?
                .run_all()
                .await
        }
        Target::MySql(url) => {
            super::mysql::connect(url, DEMO_NAMESPACE)
                .await?
                .run_all()
                .await
        }
    }
}
