//! How a relay leases partitions, and on MySQL the commit-order gate that comes with it.

use std::time::Duration;

use futures_util::future::BoxFuture;
use tx_sqlx::TxError;

use super::sql::{ms, safe};
use super::sql_store::SqlStore;

/// How a backend leases partitions.
pub(super) trait Claim {
    fn lease<'a>(
        &'a self,
        token: &'a str,
        parts: &'a [i32],
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), TxError>>;
}

/// `Claim` by the function that leases on that backend.
macro_rules! impl_claim {
    ($db:ty, $lease:ident) => {
        impl Claim for SqlStore<$db> {
            fn lease<'a>(
                &'a self,
                token: &'a str,
                parts: &'a [i32],
                lease: Duration,
            ) -> BoxFuture<'a, Result<(), TxError>> {
                Box::pin($lease(self, token, parts, lease))
            }
        }
    };
}

impl_claim!(sqlx::Postgres, claim_many);
impl_claim!(sqlx::Sqlite, claim_many);
impl_claim!(sqlx::MySql, claim_mysql);

/// PostgreSQL and SQLite: one `UPDATE` over the partitions that are free.
async fn claim_many<DB>(
    store: &SqlStore<DB>,
    token: &str,
    parts: &[i32],
    lease: Duration,
) -> Result<(), TxError>
where
    DB: sqlx::Database + sqlx::database::HasStatementCache,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query(sqlx::AssertSqlSafe(store.sql.claim_many(parts)))
        .persistent(false)
        .bind(token)
        .bind(ms(lease))
        .execute(store.db.pool())
        .await?;
    Ok(())
}

/// MySQL: leases partitions one at a time on the relay's own session. Each `UPDATE` waits
/// (at most a second) for the publishers that hold the partition row's shared lock, so once
/// it has the row every message with an id up to the recorded bound is final; one row at a
/// time, so a relay never holds one partition while waiting for another (no lock cycle with
/// a publisher writing to two partitions).
async fn claim_mysql(
    store: &SqlStore<sqlx::MySql>,
    token: &str,
    parts: &[i32],
    lease: Duration,
) -> Result<(), TxError> {
    let mut slot = store.claim_conn.lock().await;
    if slot.is_none() {
        let mut conn = store.db.pool().acquire().await?.detach();
        sqlx::raw_sql("SET SESSION innodb_lock_wait_timeout = 1")
            .execute(&mut conn)
            .await?;
        *slot = Some(conn);
    }
    let conn = slot.as_mut().expect("set above");
    for &part in parts {
        let res = sqlx::query(safe(&store.sql.claim_one))
            .bind(token)
            .bind(ms(lease))
            .bind(part)
            .bind(part)
            .execute(&mut *conn)
            .await;
        match res {
            Ok(_) => {}
            // Lock wait timeout (1205) or deadlock (1213): a publisher is still running in
            // this partition; try it next round.
            Err(sqlx::Error::Database(e))
                if e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                    .is_some_and(|m| matches!(m.number(), 1205 | 1213)) =>
            {
                tracing::debug!(target: "tx_outbox", part, error = %e, "partition busy with publishers");
            }
            Err(e) => {
                // Unknown session state: drop the connection rather than reuse it.
                drop(slot.take());
                return Err(e.into());
            }
        }
    }
    Ok(())
}
