//! Data access written once for PostgreSQL, MariaDB/MySQL and SQLite.
//!
//! The services write SQL with `?` placeholders ([`sql`]) and run it on their [`Store`], which
//! is simply a [`TxPool`]: a query joins the transaction that `#[transactional]` bound to the
//! current task for that pool, or runs in autocommit when there is none. The only things that
//! differ per database are in [`ShopDb`]: the placeholder style, the DDL of an auto-increment
//! key, and how to read a statement's affected-row count.

use std::borrow::Cow;
use std::future::Future;

use sqlx::{AssertSqlSafe, Database, Decode, Encode, Executor, Row as _, Type};
use tx_sqlx::{TransactionManager, TxError, TxPool};

/// The SQL dialect of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL: `$1` placeholders, `BIGSERIAL`.
    Postgres,
    /// MariaDB / MySQL: `?` placeholders, `AUTO_INCREMENT`.
    MySql,
    /// SQLite: `?` placeholders, `INTEGER PRIMARY KEY AUTOINCREMENT`.
    Sqlite,
}

impl Dialect {
    /// A human name for output.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Postgres => "PostgreSQL",
            Dialect::MySql => "MariaDB/MySQL",
            Dialect::Sqlite => "SQLite",
        }
    }

    /// The column definition of an auto-increment `BIGINT` primary key named `id`.
    #[must_use]
    pub fn id_column(self) -> &'static str {
        match self {
            Dialect::Postgres => "id BIGSERIAL PRIMARY KEY",
            Dialect::MySql => "id BIGINT AUTO_INCREMENT PRIMARY KEY",
            Dialect::Sqlite => "id INTEGER PRIMARY KEY AUTOINCREMENT",
        }
    }

    /// Rewrites `?` placeholders into this dialect's style (`$1`, `$2`, ... on PostgreSQL).
    ///
    /// ```
    /// use tx_examples::shop::Dialect;
    /// assert_eq!(Dialect::Postgres.placeholders("a = ? and b = ?"), "a = $1 and b = $2");
    /// assert_eq!(Dialect::Sqlite.placeholders("a = ?"), "a = ?");
    /// ```
    #[must_use]
    pub fn placeholders(self, sql: &str) -> String {
        if self != Dialect::Postgres {
            return sql.to_owned();
        }
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// A sqlx database the shop runs on: what differs between backends, and nothing else.
pub trait ShopDb: Database {
    /// The SQL dialect.
    const DIALECT: Dialect;

    /// The number of rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

impl ShopDb for sqlx::Postgres {
    const DIALECT: Dialect = Dialect::Postgres;
    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }
}

impl ShopDb for sqlx::MySql {
    const DIALECT: Dialect = Dialect::MySql;
    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }
}

impl ShopDb for sqlx::Sqlite {
    const DIALECT: Dialect = Dialect::Sqlite;
    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }
}

/// A bound argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// An integer (ids, quantities, amounts in whole yuan).
    Int(i64),
    /// A string.
    Text(String),
    /// SQL `NULL` (as a text column).
    Null,
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(v.to_owned())
    }
}

impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(v)
    }
}

impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        v.map_or(Arg::Null, Arg::from)
    }
}

/// A statement with `?` placeholders and its arguments; build it with [`sql`].
#[derive(Debug, Clone)]
#[must_use = "a statement does nothing until run on a Store"]
pub struct Sql {
    text: Cow<'static, str>,
    args: Vec<Arg>,
}

/// Starts a statement (write no `?` inside string literals: every `?` is a placeholder): `sql("update account set balance = balance - ? where id = ?").bind(100).bind(2)`.
///
/// ```
/// let q = tx_examples::shop::sql("select 1 where ? = ?").bind(1).bind("a");
/// assert_eq!(q.text(), "select 1 where ? = ?");
/// ```
pub fn sql(text: impl Into<Cow<'static, str>>) -> Sql {
    Sql {
        text: text.into(),
        args: Vec::new(),
    }
}

impl Sql {
    /// Binds the next `?`.
    pub fn bind(mut self, value: impl Into<Arg>) -> Self {
        self.args.push(value.into());
        self
    }

    /// The statement as written (with `?` placeholders).
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// A value read back from the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// An integer column.
    Int(i64),
    /// A text column.
    Text(String),
    /// SQL `NULL`.
    Null,
}

/// A result row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub Vec<Value>);

impl Row {
    /// Column `i` as an integer; panics on another type (a bug in the demo's SQL).
    #[must_use]
    pub fn int(&self, i: usize) -> i64 {
        match &self.0[i] {
            Value::Int(v) => *v,
            other => panic!("column {i} is {other:?}, not an integer"),
        }
    }

    /// Column `i` as text; panics on another type.
    #[must_use]
    pub fn text(&self, i: usize) -> String {
        match &self.0[i] {
            Value::Text(v) => v.clone(),
            other => panic!("column {i} is {other:?}, not text"),
        }
    }

    /// Column `i` as nullable text.
    #[must_use]
    pub fn opt_text(&self, i: usize) -> Option<String> {
        match &self.0[i] {
            Value::Null => None,
            _ => Some(self.text(i)),
        }
    }
}

/// What the services need from a database: a transaction manager (for
/// `#[transactional(manager = self.db)]`) that also runs statements, joining the transaction
/// bound to the current task. Implemented by every [`TxPool`] on a [`ShopDb`].
pub trait Store: TransactionManager + Clone {
    /// The SQL dialect of this store.
    fn dialect(&self) -> Dialect;

    /// Runs a statement; returns the number of rows it changed.
    fn execute(&self, sql: Sql) -> impl Future<Output = Result<u64, TxError>> + Send;

    /// Runs a query; returns every row.
    fn fetch_all(&self, sql: Sql) -> impl Future<Output = Result<Vec<Row>, TxError>> + Send;

    /// Runs a query expected to return at most one row.
    fn fetch_optional(
        &self,
        sql: Sql,
    ) -> impl Future<Output = Result<Option<Row>, TxError>> + Send {
        let rows = self.fetch_all(sql);
        async move { Ok(rows.await?.into_iter().next()) }
    }

    /// Runs a query returning one integer (`select count(*) ...`, `insert ... returning id`).
    fn fetch_int(&self, sql: Sql) -> impl Future<Output = Result<i64, TxError>> + Send {
        let text = sql.text.clone();
        let rows = self.fetch_all(sql);
        async move {
            match rows.await?.first() {
                Some(row) => Ok(row.int(0)),
                None => Err(TxError::database(
                    tx_sqlx::Operation::Statement,
                    false,
                    format!("no row returned by `{text}`"),
                )),
            }
        }
    }
}

impl<DB> Store for TxPool<DB>
where
    DB: ShopDb,
    TxPool<DB>: TransactionManager,
    for<'c> &'c TxPool<DB>: Executor<'c, Database = DB>,
    i64: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>,
    String: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>,
    Option<String>: for<'q> Encode<'q, DB> + Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    fn dialect(&self) -> Dialect {
        DB::DIALECT
    }

    async fn execute(&self, sql: Sql) -> Result<u64, TxError> {
        // `&TxPool` is a sqlx executor that joins the current task's transaction.
        let result = prepare::<DB>(sql).execute(self).await?;
        Ok(DB::rows_affected(&result))
    }

    async fn fetch_all(&self, sql: Sql) -> Result<Vec<Row>, TxError> {
        let rows = prepare::<DB>(sql).fetch_all(self).await?;
        Ok(rows.iter().map(decode_row::<DB>).collect())
    }
}

fn prepare<DB>(sql: Sql) -> sqlx::query::Query<'static, DB, DB::Arguments>
where
    DB: ShopDb,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    Option<String>: for<'q> Encode<'q, DB> + Type<DB>,
{
    let text = DB::DIALECT.placeholders(&sql.text);
    let mut query = sqlx::query::<DB>(AssertSqlSafe(text));
    for arg in sql.args {
        query = match arg {
            Arg::Int(v) => query.bind(v),
            Arg::Text(v) => query.bind(v),
            Arg::Null => query.bind(None::<String>),
        };
    }
    query
}

/// Decodes every column as an integer, else as text (the shop's tables have no other types).
fn decode_row<DB>(row: &DB::Row) -> Row
where
    DB: ShopDb,
    i64: for<'r> Decode<'r, DB> + Type<DB>,
    String: for<'r> Decode<'r, DB> + Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let values = (0..row.len())
        .map(|i| {
            if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
                v.map_or(Value::Null, Value::Int)
            } else if let Ok(v) = row.try_get::<Option<String>, _>(i) {
                v.map_or(Value::Null, Value::Text)
            } else {
                panic!("column {i} is neither an integer nor text")
            }
        })
        .collect();
    Row(values)
}
