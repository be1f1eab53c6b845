//! The backends (tx-sqlx on PostgreSQL, MariaDB/MySQL and SQLite), one test binary: the
//! backend contract written once and run on each database, what each database does on its
//! own, what a transaction leaves on its pool's sessions, pool starvation, misuse refused at
//! run time, and the reliability scenarios under faults and load.

mod contract;
mod misuse;
mod mysql;
mod pool_starvation;
mod postgres;
mod reliability;
mod session;
mod sqlite;
