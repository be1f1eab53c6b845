//! The databases a saga engine runs on, and the few statements it needs from each.
//!
//! The engine's logic is written once against a tiny dynamic interface (run a statement with
//! these values, fetch rows of these column kinds); each backend implements it with concrete
//! sqlx types and supplies its SQL dialect.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tx_sqlx::{TxError, TxPool};

/// A database a [`SagaEngine`](crate::SagaEngine) can keep its sagas in: PostgreSQL
/// (`sqlx::Postgres`), MySQL/MariaDB (`sqlx::MySql`) and SQLite (`sqlx::Sqlite`), behind the
/// cargo features of the same names. Sealed: it cannot be implemented outside this crate.
pub trait SagaBackend: sqlx::Database + private::Driver {}

pub(crate) mod private {
    use super::*;

    /// A value bound to a statement.
    pub enum Value {
        I64(i64),
        Text(String),
        NullI64,
        NullText,
    }

    /// The kind of a fetched column.
    #[derive(Clone, Copy)]
    pub enum Col {
        I64,
        Text,
    }

    /// A fetched value (`None` for SQL NULL).
    pub enum Cell {
        I64(Option<i64>),
        Text(Option<String>),
    }

    impl Cell {
        pub fn i64(&self) -> i64 {
            match self {
                Cell::I64(v) => v.unwrap_or(0),
                Cell::Text(_) => 0,
            }
        }

        pub fn text(&mut self) -> Option<String> {
            match self {
                Cell::Text(v) => v.take(),
                Cell::I64(_) => None,
            }
        }
    }

    /// How a worker claims due sagas.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub enum Claim {
        /// One `UPDATE .. RETURNING` whose subquery picks the rows (PostgreSQL adds
        /// `FOR UPDATE SKIP LOCKED`; SQLite has a single writer anyway).
        UpdateReturning,
        /// A transaction: `SELECT .. FOR UPDATE SKIP LOCKED`, then `UPDATE` the picked rows
        /// (MySQL/MariaDB have no `UPDATE .. RETURNING`).
        SelectThenUpdate,
    }

    /// What differs between the SQL dialects.
    pub struct Dialect {
        /// `$1, $2, ..` (PostgreSQL) rather than `?`.
        pub numbered: bool,
        /// The server's current time in epoch milliseconds, read when the statement runs.
        pub now_ms: &'static str,
        pub claim: Claim,
        pub create_table: fn(table: &str) -> Vec<String>,
    }

    pub trait Driver: Sized + sqlx::Database {
        const DIALECT: Dialect;

        /// A template on `db` (where `TxPool<Self>` is a transaction manager).
        fn saga_template(db: &TxPool<Self>) -> tx_sqlx::TransactionTemplate;

        /// Runs `sql` with `args` through `&db` (on the transaction bound to `db` in this
        /// task, if any); the number of rows it changed.
        fn saga_execute<'a>(
            db: &'a TxPool<Self>,
            sql: Arc<str>,
            args: Vec<Value>,
        ) -> BoxFuture<'a, Result<u64, TxError>>;

        /// Runs `sql` with `args` through `&db`; its rows, decoded as `cols`.
        fn saga_fetch<'a>(
            db: &'a TxPool<Self>,
            sql: Arc<str>,
            args: Vec<Value>,
            cols: &'static [Col],
        ) -> BoxFuture<'a, Result<Vec<Vec<Cell>>, TxError>>;
    }
}

use private::{Cell, Claim, Col, Dialect, Value};

macro_rules! driver {
    ($db:ty, $dialect:expr) => {
        impl private::Driver for $db {
            const DIALECT: Dialect = $dialect;

            fn saga_template(db: &TxPool<Self>) -> tx_sqlx::TransactionTemplate {
                tx_sqlx::TransactionTemplate::new(db.clone())
            }

            fn saga_execute<'a>(
                db: &'a TxPool<Self>,
                sql: Arc<str>,
                args: Vec<Value>,
            ) -> BoxFuture<'a, Result<u64, TxError>> {
                Box::pin(
                    async move { Ok(bound::<$db>(sql, args).execute(db).await?.rows_affected()) },
                )
            }

            fn saga_fetch<'a>(
                db: &'a TxPool<Self>,
                sql: Arc<str>,
                args: Vec<Value>,
                cols: &'static [Col],
            ) -> BoxFuture<'a, Result<Vec<Vec<Cell>>, TxError>> {
                Box::pin(async move {
                    use sqlx::Row as _;
                    let rows = bound::<$db>(sql, args).fetch_all(db).await?;
                    let mut out = Vec::with_capacity(rows.len());
                    for row in rows {
                        let mut cells = Vec::with_capacity(cols.len());
                        for (i, col) in cols.iter().enumerate() {
                            cells.push(match col {
                                Col::I64 => Cell::I64(row.try_get::<Option<i64>, _>(i)?),
                                Col::Text => Cell::Text(row.try_get::<Option<String>, _>(i)?),
                            });
                        }
                        out.push(cells);
                    }
                    Ok(out)
                })
            }
        }

        impl SagaBackend for $db {}
    };
}

/// Columns shared by every dialect; `$text` is the type of the state and error columns.
/// `sql` with `args` bound in order.
fn bound<DB: sqlx::Database>(
    sql: Arc<str>,
    args: Vec<Value>,
) -> sqlx::query::Query<'static, DB, DB::Arguments>
where
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut q = sqlx::query::<DB>(sqlx::AssertSqlSafe(sql));
    for a in args {
        q = match a {
            Value::I64(v) => q.bind(v),
            Value::Text(v) => q.bind(v),
            Value::NullI64 => q.bind(None::<i64>),
            Value::NullText => q.bind(None::<String>),
        };
    }
    q
}

fn columns(text: &str) -> String {
    format!(
        "id VARCHAR(36) NOT NULL PRIMARY KEY, \
         name VARCHAR(200) NOT NULL, \
         status VARCHAR(16) NOT NULL, \
         backward BIGINT NOT NULL, \
         step BIGINT NOT NULL, \
         state {text} NOT NULL, \
         attempt BIGINT NOT NULL, \
         last_error {text} NULL, \
         lease_token VARCHAR(64) NULL, \
         lease_until BIGINT NULL, \
         next_run_at BIGINT NOT NULL, \
         version BIGINT NOT NULL, \
         created_at BIGINT NOT NULL, \
         updated_at BIGINT NOT NULL"
    )
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
impl Dialect {
    /// A dialect that claims with one `UPDATE .. RETURNING` and creates the index of due
    /// sagas apart from the table (PostgreSQL, SQLite): placeholders `$n` when `numbered`,
    /// the current time as `now_ms`.
    const fn update_returning(numbered: bool, now_ms: &'static str) -> Dialect {
        Dialect {
            numbered,
            now_ms,
            claim: Claim::UpdateReturning,
            create_table: |t| {
                vec![
                    format!("CREATE TABLE IF NOT EXISTS {t} ({})", columns("TEXT")),
                    format!("CREATE INDEX IF NOT EXISTS {t}_due ON {t} (status, next_run_at)"),
                ]
            },
        }
    }
}

/// PostgreSQL's clock when the statement runs (not the transaction's start), in epoch ms.
#[cfg(feature = "postgres")]
const PG_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";
#[cfg(feature = "postgres")]
driver!(sqlx::Postgres, Dialect::update_returning(true, PG_NOW_MS));

#[cfg(feature = "mysql")]
driver!(
    sqlx::MySql,
    Dialect {
        numbered: false,
        now_ms: "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
        claim: Claim::SelectThenUpdate,
        create_table: |t| vec![format!(
            "CREATE TABLE IF NOT EXISTS {t} ({}, INDEX {t}_due (status, next_run_at)) ENGINE=InnoDB",
            columns("LONGTEXT")
        )],
    }
);

/// SQLite's clock in epoch ms.
#[cfg(feature = "sqlite")]
const SQLITE_NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";
#[cfg(feature = "sqlite")]
driver!(
    sqlx::Sqlite,
    Dialect::update_returning(false, SQLITE_NOW_MS)
);
