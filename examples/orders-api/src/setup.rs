//! Which backend to run on, and what the backends' set-up shares.

use tx_sqlx::{Operation, TxError};

/// A backend module of the API: its pool type, auto-increment key and placeholder style,
/// then the shared services, routes and tables compiled for it.
macro_rules! api_backend {
    ($pool:ty, $id_column:literal, $placeholders:ident) => {
        tx_examples::backend_module! {
            pool: $pool,
            id_column: $id_column,
            placeholders: $placeholders,
            include: {
                services => "app/services.rs",
                routes => "app/routes.rs",
                tables => "app/tables.rs",
            },
        }
    };
}
pub(crate) use api_backend;

/// Connections per pool of a server.
pub(crate) const POOL_SIZE: u32 = 10;

/// Where the API runs, from `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// SQLite in a directory (no `DATABASE_URL`, or a `sqlite:` one).
    Sqlite,
    /// PostgreSQL at this URL.
    Postgres(String),
    /// MariaDB/MySQL at this URL.
    MySql(String),
}

impl Target {
    /// The target for an optional `DATABASE_URL`.
    ///
    /// # Errors
    ///
    /// A URL of another database.
    ///
    /// ```
    /// use orders_api::Target;
    /// assert_eq!(Target::from_url(None), Ok(Target::Sqlite));
    /// assert!(matches!(Target::from_url(Some("postgres://h/db")), Ok(Target::Postgres(_))));
    /// assert!(Target::from_url(Some("oracle://h")).is_err());
    /// ```
    pub fn from_url(url: Option<&str>) -> Result<Target, String> {
        match url.filter(|u| !u.is_empty()) {
            None => Ok(Target::Sqlite),
            Some(u) if u.starts_with("sqlite:") => Ok(Target::Sqlite),
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Ok(Target::Postgres(u.to_owned()))
            }
            Some(u) if u.starts_with("mysql://") || u.starts_with("mariadb://") => {
                Ok(Target::MySql(u.replacen("mariadb://", "mysql://", 1)))
            }
            Some(u) => Err(format!(
                "DATABASE_URL {u:?}: expected postgres://, mysql://, mariadb:// or sqlite:"
            )),
        }
    }
}

/// `name` if it is a plain lower-case identifier, safe to splice into DDL.
pub(crate) fn checked(name: &str) -> Result<&str, TxError> {
    let ok = !name.is_empty()
        && name.len() <= 60
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(name)
    } else {
        Err(TxError::database(
            Operation::Statement,
            false,
            format!("invalid schema or database name {name:?}: use [a-z][a-z0-9_]*"),
        ))
    }
}
