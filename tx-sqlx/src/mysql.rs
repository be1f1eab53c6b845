//! MySQL / MariaDB: `SET TRANSACTION ISOLATION LEVEL ..; START TRANSACTION READ ONLY|READ WRITE`
//! in one round trip, with the deadline bounding server statements (`max_statement_time` on
//! MariaDB, `max_execution_time` for SELECTs on MySQL) until the transaction ends, when the
//! session's own value is restored.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use sqlx::MySql;
use sqlx::mysql::MySqlDatabaseError;
use tx_core::manager::BeginOptions;
use tx_core::{Isolation, Operation, TxError};

use crate::backend::{Backend, BeginStatement, ServerFacts};
use crate::error::db_error;

/// ER_LOCK_DEADLOCK: InnoDB rolled the whole transaction back.
const ER_LOCK_DEADLOCK: u16 = 1213;

/// The server's error number, for a MySQL/MariaDB error.
fn error_number(err: &sqlx::Error) -> Option<u16> {
    err.as_database_error()
        .and_then(|db| db.try_downcast_ref::<MySqlDatabaseError>())
        .map(MySqlDatabaseError::number)
}

impl Backend for MySql {
    const DISPLAY_NAME: &'static str = "MySQL/MariaDB";
    const BACKEND_NAME: &'static str = "mysql";
    // After a deadlock the session is no longer in a transaction: further statements would
    // autocommit one by one, so refuse them.
    const REFUSE_AFTER_ABORT: bool = true;

    fn aborts(err: &sqlx::Error) -> bool {
        error_number(err) == Some(ER_LOCK_DEADLOCK)
    }

    /// ER_STATEMENT_TIMEOUT (MariaDB max_statement_time), ER_QUERY_TIMEOUT (MySQL
    /// max_execution_time).
    fn deadline_kill(err: &sqlx::Error) -> bool {
        matches!(error_number(err), Some(1969 | 3024))
    }

    /// With a deadline, the statement bound of the server (probed once per pool) is saved,
    /// set, and restored after the transaction.
    async fn begin_statement(
        conn: &mut sqlx::MySqlConnection,
        facts: &ServerFacts,
        options: &BeginOptions,
    ) -> Result<BeginStatement, TxError> {
        let (mut bound, mut reset) = (StatementBound::MariaDb, None);
        if options.remaining.is_some() {
            let mariadb = match facts.mariadb.get() {
                Some(m) => *m,
                None => {
                    let version: String = sqlx::query_scalar("SELECT VERSION()")
                        .fetch_one(&mut *conn)
                        .await
                        .map_err(|e| db_error(Operation::Begin, e))?;
                    let m = version.contains("MariaDB");
                    let _ = facts.mariadb.set(m);
                    m
                }
            };
            if !mariadb {
                bound = StatementBound::MySql;
            }
            reset = Some(bound.reset());
        }
        let sql = begin_sql(
            options.isolation,
            options.read_only,
            options.remaining,
            bound,
        );
        Ok(BeginStatement { sql, reset })
    }
}

/// Which statement bounds server statements, and how it is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatementBound {
    /// MariaDB `max_statement_time` (seconds, every statement).
    MariaDb,
    /// MySQL `max_execution_time` (milliseconds, read-only SELECTs only).
    MySql,
}

impl StatementBound {
    /// Restores the session's own value, saved by the begin statements (the pool's
    /// `after_connect` may have set one).
    fn reset(self) -> &'static str {
        match self {
            StatementBound::MariaDb => {
                "SET SESSION max_statement_time = @tx_saved_max_statement_time"
            }
            StatementBound::MySql => {
                "SET SESSION max_execution_time = @tx_saved_max_execution_time"
            }
        }
    }
}

/// The statements that begin a transaction (one multi-statement round trip).
pub(crate) fn begin_sql(
    isolation: Isolation,
    read_only: bool,
    remaining: Option<Duration>,
    bound: StatementBound,
) -> Cow<'static, str> {
    let start = if read_only {
        "START TRANSACTION READ ONLY"
    } else {
        "START TRANSACTION READ WRITE"
    };
    if remaining.is_none() && isolation.sql().is_none() {
        // The common case: a constant, no text built per transaction.
        return Cow::Borrowed(start);
    }
    let mut sql = String::new();
    if let Some(remaining) = remaining {
        // Save the session's bound (restored after the transaction), then bound statements by
        // the time left, or by the session's own bound when that is tighter (0: none).
        let ms = remaining.as_millis().clamp(1, u32::MAX as u128);
        let _ = match bound {
            StatementBound::MariaDb => write!(
                sql,
                "SET @tx_saved_max_statement_time = @@SESSION.max_statement_time; \
                 SET SESSION max_statement_time = IF(@tx_saved_max_statement_time > 0, \
                 LEAST(@tx_saved_max_statement_time, {s:.3}), {s:.3}); ",
                s = ms as f64 / 1000.0
            ),
            StatementBound::MySql => write!(
                sql,
                "SET @tx_saved_max_execution_time = @@SESSION.max_execution_time; \
                 SET SESSION max_execution_time = IF(@tx_saved_max_execution_time > 0, \
                 LEAST(@tx_saved_max_execution_time, {ms}), {ms}); "
            ),
        };
    }
    if let Some(level) = isolation.sql() {
        // Without SESSION/GLOBAL: applies to the next transaction only.
        let _ = write!(sql, "SET TRANSACTION ISOLATION LEVEL {level}; ");
    }
    sql.push_str(start);
    Cow::Owned(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (isolation, read-only, time left, statement bound, the begin statements)
    const CASES: &[(Isolation, bool, Option<u64>, StatementBound, &str)] = &[
        (
            Isolation::Default,
            false,
            None,
            StatementBound::MariaDb,
            "START TRANSACTION READ WRITE",
        ),
        (
            Isolation::ReadCommitted,
            true,
            Some(1500),
            StatementBound::MariaDb,
            "SET @tx_saved_max_statement_time = @@SESSION.max_statement_time; \
             SET SESSION max_statement_time = IF(@tx_saved_max_statement_time > 0, \
             LEAST(@tx_saved_max_statement_time, 1.500), 1.500); \
             SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION READ ONLY",
        ),
        (
            Isolation::Default,
            false,
            Some(20),
            StatementBound::MySql,
            "SET @tx_saved_max_execution_time = @@SESSION.max_execution_time; \
             SET SESSION max_execution_time = IF(@tx_saved_max_execution_time > 0, \
             LEAST(@tx_saved_max_execution_time, 20), 20); START TRANSACTION READ WRITE",
        ),
    ];

    #[test]
    fn statements() {
        for &(isolation, read_only, ms, bound, expected) in CASES {
            let remaining = ms.map(Duration::from_millis);
            assert_eq!(begin_sql(isolation, read_only, remaining, bound), expected);
        }
    }
}
