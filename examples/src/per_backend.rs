//! What the per-database modules of the examples share (the shop's `sqlite`, `postgres` and
//! `mysql` modules, and the orders API's): which backend `DATABASE_URL` names, compiling the
//! same service code once per backend, the placeholder style of MySQL, a fresh namespace on a
//! server, and the pools.
//!
//! Each per-database module keeps only what is truly its database's: its pool type, its
//! auto-increment column, its placeholder style and how it makes a namespace (a PostgreSQL
//! schema, a MariaDB database, SQLite files).

use std::path::Path;
use std::time::Duration;

use sqlx::mysql::MySqlConnectOptions;
use sqlx::pool::PoolOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection, Database, Executor, MySql, Postgres};
use tx_sqlx::{SqliteTxPool, TxPool};

/// Where an example runs: chosen from `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Embedded SQLite in a directory (no `DATABASE_URL`, or a `sqlite:` one).
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
    /// use tx_examples::per_backend::Target;
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

/// What a per-database module of an example declares before it includes the shared code:
/// its pool type `Db`, its auto-increment key `ID_COLUMN`, its `sql` function for the
/// placeholder style (`numbered`: `$1` as written; `question_marks`: MySQL's `?`), then each
/// listed file compiled as a module of the calling module (paths relative to the calling
/// file, as with `include!`; `pub` before a name makes the module public, with the doc
/// comments before it): the same service code, once per backend.
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
        include: { $($(#[$attr:meta])* $vis:vis $module:ident => $file:literal),+ $(,)? } $(,)?
    ) => {
        /// The pool (and transaction manager) the services of this module run on.
        pub type Db = $db;

        /// The column definition of an auto-increment key named `id`.
        const ID_COLUMN: &str = $id;

        $crate::backend_module!(@sql $style);

        $(
            $(#[$attr])*
            $vis mod $module {
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

/// A database server on which an example works in a namespace of its own: a PostgreSQL
/// schema, a MariaDB/MySQL database.
pub trait Server: Database {
    /// The DDL that drops the namespace `name` if it exists, and the DDL that creates it.
    fn namespace_ddl(name: &str) -> [String; 2];

    /// `options` that work in the namespace `name`.
    fn in_namespace(options: ConnectOptions<Self>, name: &str) -> ConnectOptions<Self>;
}

/// The connect options of a database.
pub type ConnectOptions<DB> = <<DB as Database>::Connection as Connection>::Options;

impl Server for Postgres {
    fn in_namespace(options: PgConnectOptions, schema: &str) -> PgConnectOptions {
        // Every connection of the pool gets the schema as its `search_path`.
        options.options([("search_path", schema)])
    }

    fn namespace_ddl(schema: &str) -> [String; 2] {
        [
            format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
            format!("CREATE SCHEMA {schema}"),
        ]
    }
}

impl Server for MySql {
    fn in_namespace(options: MySqlConnectOptions, database: &str) -> MySqlConnectOptions {
        options.database(database)
    }

    fn namespace_ddl(database: &str) -> [String; 2] {
        [
            format!("DROP DATABASE IF EXISTS {database}"),
            format!("CREATE DATABASE {database}"),
        ]
    }
}

/// A pool of `size` connections on the server at `url`, waiting at most `acquire` for a free
/// connection, working in the namespace `name`, which is dropped and created anew first.
/// `name` goes into DDL: the caller checks it is a plain identifier.
///
/// # Errors
///
/// The server's: a bad URL, it cannot be reached, or refuses the connection or the DDL.
pub async fn fresh_namespace<DB: Server>(
    url: &str,
    name: &str,
    size: u32,
    acquire: Duration,
) -> Result<TxPool<DB>, sqlx::Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let admin: ConnectOptions<DB> = url.parse()?;
    on_admin_connection::<DB>(&admin, &DB::namespace_ddl(name)).await?;
    let pool = PoolOptions::<DB>::new()
        .max_connections(size)
        .acquire_timeout(acquire)
        .connect_with(DB::in_namespace(admin, name))
        .await?;
    Ok(TxPool::new(pool))
}

/// Drops the namespace [`fresh_namespace`] created.
///
/// # Errors
///
/// As [`fresh_namespace`].
pub async fn drop_namespace<DB: Server>(url: &str, name: &str) -> Result<(), sqlx::Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let [drop, _create] = DB::namespace_ddl(name);
    on_admin_connection::<DB>(&url.parse()?, &[drop]).await
}

/// Runs `statements` on a connection of its own, opened with `options` and closed afterwards.
async fn on_admin_connection<DB: Database>(
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
    admin.close().await
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
