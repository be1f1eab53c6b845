//! PostgreSQL: `BEGIN ISOLATION LEVEL .. READ ONLY|READ WRITE; SET LOCAL statement_timeout = ..`
//! in one round trip.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use sqlx::Postgres;
use tx_core::manager::BeginOptions;
use tx_core::{Isolation, TxError};

use crate::backend::{Backend, BeginStatement, ServerFacts};

impl Backend for Postgres {
    const DISPLAY_NAME: &'static str = "PostgreSQL";
    const BACKEND_NAME: &'static str = "postgres";
    // The server itself rejects further statements (SQLSTATE 25P02).
    const REFUSE_AFTER_ABORT: bool = false;

    /// Any error aborts a PostgreSQL transaction until ROLLBACK (TO SAVEPOINT).
    fn aborts(err: &sqlx::Error) -> bool {
        matches!(err, sqlx::Error::Database(_))
    }

    /// query_canceled: statement_timeout (set from the deadline) fired.
    fn deadline_kill(err: &sqlx::Error) -> bool {
        err.as_database_error().and_then(|db| db.code()).as_deref() == Some("57014")
    }

    /// A simple query: several statements, one round trip.
    async fn begin_statement(
        _conn: &mut sqlx::PgConnection,
        _facts: &ServerFacts,
        options: &BeginOptions,
    ) -> Result<BeginStatement, TxError> {
        // `SET LOCAL` ends with the transaction: nothing to restore afterwards.
        let sql = begin_sql(options.isolation, options.read_only, options.remaining);
        Ok(BeginStatement { sql, reset: None })
    }
}

/// The one statement that begins a transaction with `options`; a constant without isolation
/// level or deadline (no text built per transaction).
pub(crate) fn begin_sql(
    isolation: Isolation,
    read_only: bool,
    remaining: Option<Duration>,
) -> Cow<'static, str> {
    if remaining.is_none() && isolation.sql().is_none() {
        return Cow::Borrowed(if read_only {
            "BEGIN READ ONLY"
        } else {
            "BEGIN READ WRITE"
        });
    }
    let mut sql = String::from("BEGIN");
    if let Some(level) = isolation.sql() {
        sql.push_str(" ISOLATION LEVEL ");
        sql.push_str(level);
    }
    sql.push_str(if read_only {
        " READ ONLY"
    } else {
        " READ WRITE"
    });
    if let Some(remaining) = remaining {
        // `SET LOCAL` ends with the transaction: nothing to restore afterwards.
        let ms = remaining.as_millis().clamp(1, i32::MAX as u128);
        let _ = write!(sql, "; SET LOCAL statement_timeout = {ms}");
    }
    Cow::Owned(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_statement() {
        assert_eq!(
            begin_sql(Isolation::Default, false, None),
            "BEGIN READ WRITE"
        );
        assert_eq!(
            begin_sql(
                Isolation::Serializable,
                true,
                Some(Duration::from_millis(250))
            ),
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY; SET LOCAL statement_timeout = 250"
        );
    }
}
