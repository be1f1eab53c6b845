//! The tables and every statement on them, per backend.
//!
//! The outbox and inbox types are generic over the sqlx database only in name: each backend
//! implements `Store` once (through `impl_store!`, so the three implementations share one
//! body over concrete types) and the rest of the crate talks to `dyn Store`.
//!
//! Bottom-up: `dialect` (clock and placeholders), `partition`, `rows`, `checks`;
//! `ddl` and `sql` (the statement texts); `contract` (the `Store` trait);
//! `sql_store` (the per-pool state), `lease` (partition leasing), `listen`
//! (PostgreSQL wake-ups); `backend` (the implementations).

mod backend;
mod checks;
mod contract;
mod ddl;
mod dialect;
mod lease;
mod listen;
mod partition;
mod rows;
mod sql;
mod sql_store;

pub(crate) use checks::{check_table_name, invalid};
pub(crate) use contract::{Listener, Store};
pub(crate) use dialect::Dialect;
pub(crate) use partition::{hash_key, partition_of};
pub(crate) use rows::{Failure, PendingRow, Purge, Window};
pub(crate) use sql::Sql;
pub(crate) use sql_store::SqlStore;
