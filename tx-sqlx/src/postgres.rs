//! PostgreSQL: `BEGIN ISOLATION LEVEL .. READ ONLY|READ WRITE; SET LOCAL statement_timeout = ..`
//! in one round trip.

use std::fmt::Write as _;
use std::time::Duration;

use sqlx::Postgres;
use tx_core::manager::{
    BeginOptions, BoxFuture, ManagerKey, PhysicalTransaction, TransactionManager,
};
use tx_core::{Isolation, Operation, TxError};

use crate::error::db_error;
use crate::executor::{Backend, exec_raw, impl_executor};
use crate::physical::{Flavor, SqlxTransaction};
use crate::pool::TxPool;

static FLAVOR: Flavor = Flavor {
    name: "PostgreSQL",
    // Any error aborts a PostgreSQL transaction until ROLLBACK (TO SAVEPOINT).
    aborts: |e| matches!(e, sqlx::Error::Database(_)),
    // The server itself rejects further statements (SQLSTATE 25P02).
    refuse_after_abort: false,
    // query_canceled: statement_timeout (set from the deadline) fired.
    deadline_kill: |e| e.as_database_error().and_then(|db| db.code()).as_deref() == Some("57014"),
    close_on_failed_begin: true,
};

impl Backend for Postgres {}

impl_executor!(Postgres);

/// The one statement that begins a transaction with `options`.
pub(crate) fn begin_sql(
    isolation: Isolation,
    read_only: bool,
    remaining: Option<Duration>,
) -> String {
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
    sql
}

async fn begin(
    db: TxPool<Postgres>,
    options: BeginOptions,
) -> Result<SqlxTransaction<Postgres>, TxError> {
    let sql = begin_sql(options.isolation, options.read_only, options.remaining);
    let leased = db.connection_for_begin(&options).await?;
    let mut tx = SqlxTransaction::new(leased, exec_raw::<Postgres>, &FLAVOR);
    // A simple query: several statements, one round trip.
    tx.begin(sql)
        .await
        .map_err(|e| db_error(Operation::Begin, e))?;
    Ok(tx)
}

/// The transaction manager of a PostgreSQL pool.
impl TransactionManager for TxPool<Postgres> {
    fn key(&self) -> ManagerKey {
        self.manager_key()
    }

    fn begin(
        &self,
        options: BeginOptions,
    ) -> BoxFuture<'static, Result<Box<dyn PhysicalTransaction>, TxError>> {
        let db = self.clone();
        Box::pin(
            async move { Ok(Box::new(begin(db, options).await?) as Box<dyn PhysicalTransaction>) },
        )
    }

    fn backend_name(&self) -> &'static str {
        "postgres"
    }
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
