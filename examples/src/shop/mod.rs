//! The shop demo: Spring `@Transactional` cases on one small e-commerce schema (a bank
//! transfer, an order with stock and balance checks, an audit log in its own transaction, a
//! NESTED gift, a risk check that keeps the order for review, a message sent only after commit,
//! a batch with one transaction per order, a retried serialization conflict, the rollback-only
//! trap), on SQLite, PostgreSQL or MariaDB.
//!
//! What to read:
//!
//! * `app/services.rs`: the services, structs holding their `TxPool` with
//!   `#[transactional(manager = self.db, ...)]` methods whose statements are plain
//!   `sqlx::query(..).bind(..).execute(&self.db)`: the code an application writes.
//! * `app/shop.rs`: [`sqlite::Shop`] (and its twins), the services wired together, one method
//!   per case, each returning a report (every call's result and the rows that prove it).
//! * `app/store.rs`: the store the shop shares with the orders API (its tables, taking stock,
//!   charging an account, the audit log), failing with [`ShopError`]'s variants.
//! * [`ShopError`]: the error type, with the `From<sqlx::Error>` that keeps a timeout a
//!   timeout.
//!
//! The services are written once and compiled once per backend, in [`sqlite`], [`postgres`]
//! and [`mysql`]: each of those modules sets the pool type `Db` and the only SQL the three
//! disagree on (MariaDB/MySQL wants `?` placeholders where PostgreSQL and SQLite take `$1`,
//! and each spells an auto-increment key its own way), then includes the shared files.
//!
//! ```no_run
//! # async fn run() -> Result<(), tx_examples::shop::ShopError> {
//! let dir = std::env::temp_dir().join("tx-shop");
//! std::fs::create_dir_all(&dir).unwrap();
//! let shop = tx_examples::shop::sqlite::connect(&dir).await?;
//! let report = shop.bank_transfer().await?;
//! println!("{report}");
//! assert_eq!(report.total_before, report.total_after);
//! # Ok(()) }
//! ```

/// A backend module of the shop: which backend it is (a [`Backend`] variant, named as sqlx
/// names the database), its auto-increment key and placeholder style; then the store,
/// services, queries and cases compiled for it, and what the module exports. On a server,
/// also `connect` and the function that drops the shop's namespace.
macro_rules! shop_backend {
    ($backend:ident, $id_column:literal, $placeholders:ident) => {
        /// The backend the shop runs on in this module.
        const BACKEND: $crate::shop::Backend = $crate::shop::Backend::$backend;

        /// The database of this module's pool, as sqlx names it.
        type Database = sqlx::$backend;

        $crate::backend_module! {
            pool: tx_sqlx::TxPool<Database>,
            id_column: $id_column,
            placeholders: $placeholders,
            include: {
                /// The store the shop shares with the orders API: its tables, taking stock,
                /// paying, the audit log (`app/store.rs`).
                pub store => "app/store.rs",
                services => "app/services.rs",
                queries => "app/queries.rs",
                cases => "app/shop.rs",
            },
        }

        pub use cases::Shop;
        pub use queries::{Queries, create_schema};
        pub use services::*;
        pub use store::AuditService;
    };
    // A server backend: the shop in a namespace of its own (`$namespace`: a PostgreSQL schema,
    // a MariaDB database), and `$drop`, which removes it.
    (
        $backend:ident, $id_column:literal, $placeholders:ident,
        server: $namespace:literal, $drop:ident
    ) => {
        $crate::shop::shop_backend!($backend, $id_column, $placeholders);

        #[doc = concat!("The shop at `url`, in the ", $namespace, " `name`, dropped and created anew;")]
        /// the audit log is another connection of the same pool.
        ///
        /// # Errors
        ///
        #[doc = concat!("[`ShopError::InvalidNamespace`] for a ", $namespace, " name that is not a plain")]
        /// identifier; the database's (an unreachable server, a bad URL, ...).
        pub async fn connect(url: &str, name: &str) -> Result<Shop, ShopError> {
            let db = $crate::per_backend::fresh_namespace(
                url,
                $crate::shop::connect::check_name(name)?,
                $crate::shop::connect::POOL_SIZE,
                $crate::shop::connect::ACQUIRE,
            )
            .await?;
            Shop::create(db.clone(), db, false).await
        }

        #[doc = concat!("Drops the ", $namespace, " [`connect`] created.")]
        ///
        /// # Errors
        ///
        /// As [`connect`].
        pub async fn $drop(url: &str, name: &str) -> Result<(), ShopError> {
            let name = $crate::shop::connect::check_name(name)?;
            Ok($crate::per_backend::drop_namespace::<Database>(url, name).await?)
        }
    };
}
use shop_backend;

mod collaborators;
mod connect;
mod error;
mod model;
mod reports;

pub mod mysql;
pub mod postgres;
pub mod sqlite;

pub use collaborators::{ADDRESS, MessageQueue, PhaseLogger, RiskClient, RiskVerdict, Timeline};
pub use connect::{Backend, DEMO_NAMESPACE, Target, run_demo};
pub use error::ShopError;
pub use model::{
    ACCOUNTS, Account, AuditEntry, BATCH_SIZE, BATCH_WITHOUT_ADDRESS, BatchResult, DeliveryFailure,
    Gift, Order, PRODUCTS, Product, RISK_LIMIT, USED_COUPON, ids,
};
pub use reports::{
    AuditReport, BatchReport, DemoReport, GiftReport, HooksReport, OrderReport, RetryReport,
    RiskReport, RollbackOnlyReport, Step, TransferReport,
};
