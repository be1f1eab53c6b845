//! What the per-database modules of the examples share (the shop's `sqlite`, `postgres` and
//! `mysql` modules, and the orders API's): compiling the same service code once per backend,
//! the placeholder style of MySQL, a fresh namespace on a server, and the pools.
//!
//! Each per-database module keeps only what is truly its database's: its pool type, its
//! auto-increment column, its placeholder style and how it makes a namespace (a PostgreSQL
//! schema, a MariaDB database, SQLite files).

use std::path::Path;
use std::time::Duration;

use sqlx::pool::PoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection, Database, Executor};
use tx_sqlx::{SqliteTxPool, TxPool};

/// What a per-database module of an example declares before it includes the shared code:
/// its pool type `Db`, its auto-increment key `ID_COLUMN`, its `sql` function for the
/// placeholder style (`numbered`: `$1` as written; `question_marks`: MySQL's `?`), then each
/// listed file compiled as a module of the calling module (paths relative to the calling
/// file, as with `include!`): the same service code, once per backend.
///
/// ```ignore
/// tx_examples::backend_module! {
///     pool: tx_sqlx::PgTxPool,
///     id_column: "id BIGSERIAL PRIMARY KEY",
///     placeholders: numbered,
///     include: { services => "app/services.rs" },
/// }
/// ```
#[macro_export]
macro_rules! backend_module {
    (
        pool: $db:ty,
        id_column: $id:literal,
        placeholders: $style:ident,
        include: { $($module:ident => $file:literal),+ $(,)? } $(,)?
    ) => {
        /// The pool (and transaction manager) the services of this module run on.
        pub type Db = $db;

        /// The column definition of an auto-increment key named `id`.
        const ID_COLUMN: &str = $id;

        $crate::backend_module!(@sql $style);

        $(
            mod $module {
                use super::*;
                include!($file);
            }
        )+
    };
    (@sql numbered) => {
        /// A statement as written (`$1` placeholders).
        fn sql(statement: &'static str) -> &'static str {
            statement
        }
    };
    (@sql question_marks) => {
        /// The statement with MySQL's `?` placeholders instead of `$1`, `$2`, ... (the
        /// services number them in binding order and use each once).
        fn sql(statement: &'static str) -> sqlx::AssertSqlSafe<String> {
            sqlx::AssertSqlSafe($crate::per_backend::question_marks(statement))
        }
    };
}

/// `statement` with MySQL's `?` placeholders instead of `$1`, `$2`, ... (the examples number
/// them in binding order and use each once).
///
/// ```
/// use tx_examples::per_backend::question_marks;
/// assert_eq!(question_marks("SELECT a FROM t WHERE id = $1"), "SELECT a FROM t WHERE id = ?");
/// ```
#[must_use]
pub fn question_marks(statement: &str) -> String {
    let mut out = String::with_capacity(statement.len());
    let mut chars = statement.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `statements` (DDL on the server: dropping and creating a schema or database) on a
/// connection of its own, opened with `options` and closed afterwards.
///
/// # Errors
///
/// The server's: it cannot be reached, or a statement fails.
pub async fn on_admin_connection<DB: Database>(
    options: &<DB::Connection as Connection>::Options,
    statements: &[String],
) -> Result<(), sqlx::Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let mut admin = DB::Connection::connect_with(options).await?;
    for statement in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&mut admin)
            .await?;
    }
    admin.close().await?;
    Ok(())
}

/// A pool of `size` connections on a server, opened with `options`, waiting at most
/// `acquire` for a free connection.
///
/// # Errors
///
/// The server's: it cannot be reached, or refuses the connection.
pub async fn server_pool<DB: Database>(
    size: u32,
    acquire: Duration,
    options: <DB::Connection as Connection>::Options,
) -> Result<TxPool<DB>, sqlx::Error> {
    let pool = PoolOptions::<DB>::new()
        .max_connections(size)
        .acquire_timeout(acquire)
        .connect_with(options)
        .await?;
    Ok(TxPool::new(pool))
}

/// A pool of `size` connections on the SQLite database `file` (created if missing) in WAL
/// mode, a writer waiting at most `busy` for the write lock.
///
/// # Errors
///
/// The file cannot be opened or created.
pub async fn sqlite_file_pool(
    file: &Path,
    size: u32,
    busy: Duration,
) -> Result<SqliteTxPool, sqlx::Error> {
    let options = SqliteConnectOptions::new()
        .filename(file)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(busy);
    let pool = SqlitePoolOptions::new()
        .max_connections(size)
        .connect_with(options)
        .await?;
    Ok(SqliteTxPool::new(pool))
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_become_question_marks() {
        assert_eq!(
            super::question_marks("UPDATE t SET a = $1 WHERE id = $2 AND b >= $10"),
            "UPDATE t SET a = ? WHERE id = ? AND b >= ?"
        );
        assert_eq!(super::question_marks("SELECT '$' || x"), "SELECT '$' || x");
    }
}
