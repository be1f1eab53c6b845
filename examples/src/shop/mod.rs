//! The shop demo: the seeds' transaction cases on one small e-commerce schema, on SQLite,
//! PostgreSQL or MariaDB.
//!
//! * [`services`]: the services, structs with `#[transactional(manager = self.db, ...)]`
//!   methods, as a Spring user writes `@Service` classes.
//! * [`Shop`]: the services wired together, one method per case, each returning a report
//!   (every call's result and the rows that prove it) that prints itself.
//! * [`Store`]: the services' SQL runs on a `TxPool` through `&TxPool` (the sqlx executor that
//!   joins the current task's transaction); [`ShopDb`] holds the little that differs between
//!   the databases, so the service code exists once.
//! * [`sqlite`], [`postgres`], [`mysql`]: set-up on a fresh namespace.
//!
//! ```no_run
//! # async fn run() -> Result<(), tx_examples::shop::ShopError> {
//! let dir = std::env::temp_dir().join("tx-shop");
//! std::fs::create_dir_all(&dir).unwrap();
//! let shop = tx_examples::shop::sqlite(&dir).await?;
//! let report = shop.bank_transfer().await?;
//! println!("{report}");
//! assert_eq!(report.total_before, report.total_after);
//! # Ok(()) }
//! ```

mod cases;
mod connect;
mod error;
mod model;
pub mod services;
mod store;

pub use cases::{
    AuditReport, BATCH_SIZE, BATCH_WITHOUT_ADDRESS, BatchReport, DemoReport, GiftReport,
    HooksReport, OrderReport, RISK_LIMIT, RetryReport, RiskReport, RollbackOnlyReport, Shop, Step,
    TransferReport,
};
pub use connect::{
    DEMO_NAMESPACE, Target, drop_mysql_database, drop_postgres_schema, mysql, postgres, run_demo,
    sqlite,
};
pub use error::ShopError;
pub use model::{
    Account, AuditEntry, DeliveryFailure, Gift, Order, Product, Queries, create_schema, ids,
};
pub use store::{Arg, Dialect, Row, ShopDb, Sql, Store, Value, sql};
