//! Where the demo runs: the backend chosen from `DATABASE_URL`, and running every case there.

use std::path::Path;

use super::error::ShopError;
use super::reports::DemoReport;

/// Connections per pool: enough for a RequiresNew beside its suspended transaction and two
/// concurrent buyers.
pub(crate) const POOL_SIZE: u32 = 5;

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

/// Schema and database names go into DDL, so only plain identifiers are accepted.
pub(crate) fn check_name(name: &str) -> Result<(), ShopError> {
    let ok = !name.is_empty()
        && name.len() <= 60
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(ShopError::InvalidNamespace(name.to_owned()))
    }
}

/// Where the demo runs: chosen from `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Embedded SQLite in a temporary directory (no `DATABASE_URL`).
    Sqlite,
    /// PostgreSQL at this URL (`postgres://` or `postgresql://`).
    Postgres(String),
    /// MariaDB/MySQL at this URL (`mysql://` or `mariadb://`).
    MySql(String),
}

impl Target {
    /// The target for an optional `DATABASE_URL`; `None` for a URL of another database.
    ///
    /// ```
    /// use tx_examples::shop::Target;
    /// assert_eq!(Target::from_url(None), Some(Target::Sqlite));
    /// assert!(matches!(Target::from_url(Some("postgres://localhost/x")), Some(Target::Postgres(_))));
    /// assert_eq!(Target::from_url(Some("oracle://x")), None);
    /// ```
    #[must_use]
    pub fn from_url(url: Option<&str>) -> Option<Target> {
        let Some(url) = url.filter(|u| !u.is_empty()) else {
            return Some(Target::Sqlite);
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Target::Postgres(url.to_owned()))
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            Some(Target::MySql(url.replacen("mariadb://", "mysql://", 1)))
        } else if url.starts_with("sqlite:") {
            Some(Target::Sqlite)
        } else {
            None
        }
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
