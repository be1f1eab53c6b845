//! What the backends' set-up shares: the modules' shape, the pool size, the name check.

use std::time::Duration;

use tx_sqlx::{Operation, TxError};

/// A backend module of the API: the shop's module of the same backend (whose store it sells
/// from), its pool type, auto-increment key and placeholder style; then the shared services,
/// routes and tables compiled for it, and what the module exports.
macro_rules! api_backend {
    ($shop:ident, $pool:ty, $id_column:literal, $placeholders:ident) => {
        use tx_examples::shop::$shop::store;

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

        pub use routes::{Api, router};
        pub use services::{OrderService, PointsService, TransferService};
        pub use store::AuditService;
    };
}
pub(crate) use api_backend;

/// Connections per pool of a server.
pub(crate) const POOL_SIZE: u32 = 10;

/// How long a statement may wait for a free connection of a server's pool.
pub(crate) const ACQUIRE: Duration = Duration::from_secs(20);

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
