//! The tests' view of a backend: a statement with integer and text arguments, run through
//! `&db` so that it joins the task's transaction, a column of integers or texts read back, and
//! where a service's pool comes from.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tx_saga::{SagaBackend, SagaId};
use tx_sqlx::{TransactionTemplate, TxError, TxPool};

use super::env::{EnvSpec, sqlite_service};

/// A value bound to a test statement.
pub enum Arg {
    I(i64),
    S(String),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::I(v)
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Arg {
        Arg::S(v.to_owned())
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Arg {
        Arg::S(v)
    }
}
impl From<SagaId> for Arg {
    fn from(v: SagaId) -> Arg {
        Arg::S(v.to_string())
    }
}

/// `?` as `$1, $2, ..` for PostgreSQL.
fn render(sql: &str, numbered: bool) -> String {
    if numbered {
        tx_sqlx::sql_text::numbered_placeholders(sql)
    } else {
        sql.to_owned()
    }
}

/// The test's view of a backend: run a statement through `&db` (joining the task's
/// transaction on `db`, if any), fetch one integer or text column.
pub trait TestDb: SagaBackend {
    const KIND: Kind;
    fn exec<'a>(
        db: &'a TxPool<Self>,
        sql: &str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<u64, TxError>>;
    fn ints<'a>(
        db: &'a TxPool<Self>,
        sql: &str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<i64>, TxError>>;
    fn texts<'a>(
        db: &'a TxPool<Self>,
        sql: &str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<String>, TxError>>;
    fn template(db: &TxPool<Self>) -> TransactionTemplate;
    /// A pool of `max` connections for `service` of `spec`, or `None` (the test is skipped)
    /// when the server is down.
    fn open<'a>(
        spec: &'a EnvSpec,
        service: &'a str,
        max: u32,
    ) -> BoxFuture<'a, Option<TxPool<Self>>>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Sqlite,
    Postgres,
    MySql,
}

/// Binds every argument of `$args` to the query `$q` (rebinding it).
macro_rules! bind_args {
    ($q:ident, $args:expr) => {
        let mut $q = $q;
        for a in $args {
            $q = match a {
                Arg::I(v) => $q.bind(v),
                Arg::S(v) => $q.bind(v),
            };
        }
    };
}

/// A `TestDb` method reading one column of type `$t`.
macro_rules! scalar_column {
    ($name:ident, $t:ty, $db:ty, $kind:expr) => {
        fn $name<'a>(
            db: &'a TxPool<Self>,
            sql: &str,
            args: Vec<Arg>,
        ) -> BoxFuture<'a, Result<Vec<$t>, TxError>> {
            let sql = render(sql, $kind == Kind::Postgres);
            Box::pin(async move {
                let q = sqlx::query_scalar::<$db, $t>(sqlx::AssertSqlSafe(sql));
                bind_args!(q, args);
                Ok(q.fetch_all(db).await?)
            })
        }
    };
}

/// `TestDb` for `$db`, whose services' pools `$open` (`spec, service, max`) makes.
macro_rules! test_db {
    ($db:ty, $kind:expr, $open:expr) => {
        impl TestDb for $db {
            const KIND: Kind = $kind;
            fn exec<'a>(
                db: &'a TxPool<Self>,
                sql: &str,
                args: Vec<Arg>,
            ) -> BoxFuture<'a, Result<u64, TxError>> {
                let sql = render(sql, $kind == Kind::Postgres);
                Box::pin(async move {
                    let q = sqlx::query::<$db>(sqlx::AssertSqlSafe(sql));
                    bind_args!(q, args);
                    Ok(q.execute(db).await?.rows_affected())
                })
            }
            scalar_column!(ints, i64, $db, $kind);
            scalar_column!(texts, String, $db, $kind);
            fn template(db: &TxPool<Self>) -> TransactionTemplate {
                TransactionTemplate::new(db.clone())
            }
            fn open<'a>(
                spec: &'a EnvSpec,
                service: &'a str,
                max: u32,
            ) -> BoxFuture<'a, Option<TxPool<Self>>> {
                Box::pin(($open)(spec, service, max))
            }
        }
    };
}

// SQLite: a file per service; the servers: one database for every service.
test_db!(sqlx::Sqlite, Kind::Sqlite, sqlite_service);
test_db!(sqlx::Postgres, Kind::Postgres, |_, _, max| {
    tx_tests::pg_pool(max)
});
test_db!(sqlx::MySql, Kind::MySql, |_, _, max| tx_tests::mysql_pool(
    max
));
