//! `Store` for each sqlx backend: one body (`impl_store!`) over the concrete database types.

use std::time::Duration;

use futures_util::future::BoxFuture;
use tx_sqlx::{Operation, TransactionManager, TxError};

use super::checks::invalid;
use super::contract::{Listener, Store};
use super::dialect::Dialect;
use super::lease::Claim;
use super::listen::listener_for;
use super::rows::{FAILED, FailedRow, Failure, PENDING, PendingRow, Purge, StatsRow, Window};
use super::sql::{Sql, ms, safe};
use super::sql_store::SqlStore;
use crate::message::{Message, MessageId};

fn no_transaction() -> TxError {
    TxError::NoTransaction
}

/// Checks that a transaction of `db` is bound to this task and writable.
fn require_transaction<M: TransactionManager>(db: &M, what: &str) -> Result<(), TxError> {
    match tx_sqlx::connection::bound_transaction(db.key()) {
        None => {
            tracing::debug!(target: "tx_outbox", "{what} outside a transaction");
            Err(no_transaction())
        }
        Some(tx) if tx.is_read_only() => Err(invalid(format!(
            "{what} in a read-only transaction: the row must be written in the business \
             transaction, which must be read-write"
        ))),
        Some(_) => Ok(()),
    }
}

macro_rules! impl_store {
    ($db:ty, $dialect:expr) => {
        impl Store for SqlStore<$db> {
            fn dialect(&self) -> Dialect {
                $dialect
            }

            fn table(&self) -> &str {
                &self.sql.table
            }

            fn install(&self) -> BoxFuture<'_, Result<(), TxError>> {
                Box::pin(async move {
                    // One statement at a time, outside any transaction of the caller (MySQL
                    // commits DDL implicitly). A lock serializes concurrent installers.
                    let mut conn = self.db.pool().acquire().await?;
                    install_lock::<$db>(&mut conn, &self.sql, true).await?;
                    let mut result = Ok(());
                    for stmt in &self.sql.install {
                        if let Err(e) = sqlx::raw_sql(safe(stmt)).execute(&mut *conn).await {
                            result = Err(TxError::from(e));
                            break;
                        }
                    }
                    install_lock::<$db>(&mut conn, &self.sql, false).await?;
                    result
                })
            }

            fn insert<'a>(
                &'a self,
                msg: &'a Message,
                id: MessageId,
                part: i32,
            ) -> BoxFuture<'a, Result<(), TxError>> {
                Box::pin(async move {
                    require_transaction(&self.db, "Outbox::publish")?;
                    let headers = serde_json::to_string(&msg.headers)
                        .map_err(|e| TxError::database(Operation::Statement, false, e))?;
                    if $dialect == Dialect::MySql {
                        sqlx::query(safe(&self.sql.insert_lock))
                            .bind(part)
                            .execute(&self.db)
                            .await?;
                    }
                    sqlx::query(safe(&self.sql.insert))
                        .bind(id.to_string())
                        .bind(&msg.topic)
                        .bind(msg.key.as_deref())
                        .bind(part)
                        .bind(headers)
                        .bind(&msg.payload)
                        .execute(&self.db)
                        .await?;
                    Ok(())
                })
            }

            fn partitions_with_work(&self) -> BoxFuture<'_, Result<Vec<i32>, TxError>> {
                Box::pin(async move {
                    let rows: Vec<(i32,)> = sqlx::query_as(safe(&self.sql.with_work))
                        .fetch_all(self.db.pool())
                        .await?;
                    Ok(rows.into_iter().map(|r| r.0).collect())
                })
            }

            fn claim<'a>(
                &'a self,
                token: &'a str,
                parts: &'a [i32],
                lease: Duration,
            ) -> BoxFuture<'a, Result<Vec<i32>, TxError>> {
                Box::pin(async move {
                    if parts.is_empty() {
                        return Ok(Vec::new());
                    }
                    Claim::lease(self, token, parts, lease).await?;
                    let rows: Vec<(i32,)> = sqlx::query_as(safe(&self.sql.owned))
                        .bind(token)
                        .fetch_all(self.db.pool())
                        .await?;
                    Ok(rows.into_iter().map(|r| r.0).collect())
                })
            }

            fn release<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<(), TxError>> {
                Box::pin(async move {
                    sqlx::query(safe(&self.sql.release))
                        .bind(token)
                        .execute(self.db.pool())
                        .await?;
                    Ok(())
                })
            }

            fn fetch<'a>(
                &'a self,
                window: Window<'a>,
            ) -> BoxFuture<'a, Result<Vec<(PendingRow, bool)>, TxError>> {
                let Window {
                    token,
                    after,
                    skip,
                    limit,
                } = window;
                Box::pin(async move {
                    let sql = self.sql.fetch_sql(skip.len());
                    let mut q = sqlx::query_as::<
                        _,
                        (
                            i64,
                            String,
                            String,
                            Option<String>,
                            String,
                            Vec<u8>,
                            i32,
                            i64,
                            i64,
                        ),
                    >(sqlx::AssertSqlSafe(sql))
                    .persistent(skip.is_empty())
                    .bind(token)
                    .bind(after);
                    for k in skip {
                        q = q.bind(k.as_str());
                    }
                    let rows = q
                        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                        .fetch_all(self.db.pool())
                        .await?;
                    Ok(rows
                        .into_iter()
                        .map(|r| {
                            let row = PendingRow {
                                id: r.0,
                                message_id: r.1,
                                topic: r.2,
                                key: r.3,
                                headers: r.4,
                                payload: r.5,
                                attempts: r.6,
                                created_ms: r.7,
                            };
                            (row, r.8 != 0)
                        })
                        .collect())
                })
            }

            fn mark_delivered<'a>(
                &'a self,
                ids: &'a [i64],
                delete: bool,
            ) -> BoxFuture<'a, Result<(), TxError>> {
                Box::pin(async move {
                    if ids.is_empty() {
                        return Ok(());
                    }
                    sqlx::raw_sql(sqlx::AssertSqlSafe(self.sql.delivered(ids, delete)))
                        .execute(self.db.pool())
                        .await?;
                    Ok(())
                })
            }

            fn mark_failed<'a>(
                &'a self,
                id: i64,
                failure: Failure<'a>,
            ) -> BoxFuture<'a, Result<(), TxError>> {
                Box::pin(async move {
                    let error: String = failure.error.chars().take(2000).collect();
                    sqlx::query(safe(&self.sql.failed_update))
                        .bind(failure.attempts)
                        .bind(if failure.park { FAILED } else { PENDING })
                        .bind(ms(failure.retry_in))
                        .bind(error)
                        .bind(id)
                        .execute(self.db.pool())
                        .await?;
                    Ok(())
                })
            }

            fn stats(&self) -> BoxFuture<'_, Result<StatsRow, TxError>> {
                Box::pin(async move {
                    let (pending, oldest, now): (i64, Option<i64>, i64) =
                        sqlx::query_as(safe(&self.sql.stats_pending))
                            .fetch_one(self.db.pool())
                            .await?;
                    let (failed,): (i64,) = sqlx::query_as(safe(&self.sql.stats_failed))
                        .fetch_one(self.db.pool())
                        .await?;
                    Ok(StatsRow {
                        pending,
                        failed,
                        oldest_pending_ms: oldest,
                        now_ms: now,
                    })
                })
            }

            fn failed(&self, limit: usize) -> BoxFuture<'_, Result<Vec<FailedRow>, TxError>> {
                Box::pin(async move {
                    let rows: Vec<(
                        String,
                        String,
                        Option<String>,
                        Vec<u8>,
                        i32,
                        Option<String>,
                        i64,
                    )> = sqlx::query_as(safe(&self.sql.failed_list))
                        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                        .fetch_all(self.db.pool())
                        .await?;
                    Ok(rows
                        .into_iter()
                        .map(|r| FailedRow {
                            message_id: r.0,
                            topic: r.1,
                            key: r.2,
                            payload: r.3,
                            attempts: r.4,
                            last_error: r.5,
                            created_ms: r.6,
                        })
                        .collect())
                })
            }

            fn retry_failed(&self, id: MessageId) -> BoxFuture<'_, Result<bool, TxError>> {
                Box::pin(async move {
                    let done = sqlx::query(safe(&self.sql.retry_failed))
                        .bind(id.to_string())
                        .execute(&self.db)
                        .await?;
                    Ok(done.rows_affected() > 0)
                })
            }

            fn purge(
                &self,
                what: Purge,
                older_than: Duration,
            ) -> BoxFuture<'_, Result<u64, TxError>> {
                let sql = match what {
                    Purge::Delivered => &self.sql.purge,
                    Purge::Inbox => &self.sql.inbox_purge,
                };
                Box::pin(async move {
                    let done = sqlx::query(safe(sql))
                        .bind(ms(older_than))
                        .execute(self.db.pool())
                        .await?;
                    Ok(done.rows_affected())
                })
            }

            fn listener(&self) -> BoxFuture<'_, Result<Option<Box<dyn Listener>>, TxError>> {
                Box::pin(async move { listener_for(&self.db, &self.sql.table).await })
            }

            fn inbox_install(&self) -> BoxFuture<'_, Result<(), TxError>> {
                Box::pin(async move {
                    let mut conn = self.db.pool().acquire().await?;
                    for stmt in &self.sql.inbox_install {
                        sqlx::raw_sql(safe(stmt)).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            }

            fn inbox_record<'a>(
                &'a self,
                consumer: &'a str,
                message_id: &'a str,
            ) -> BoxFuture<'a, Result<bool, TxError>> {
                Box::pin(async move {
                    require_transaction(&self.db, "Inbox::receive")?;
                    let done = sqlx::query(safe(&self.sql.inbox_record))
                        .bind(consumer)
                        .bind(message_id)
                        .execute(&self.db)
                        .await?;
                    Ok(done.rows_affected() > 0)
                })
            }
        }
    };
}

impl_store!(sqlx::Postgres, Dialect::Postgres);
impl_store!(sqlx::MySql, Dialect::MySql);
impl_store!(sqlx::Sqlite, Dialect::Sqlite);

/// Serializes concurrent `install()` calls (PostgreSQL's `CREATE .. IF NOT EXISTS` races on
/// its catalogs; MySQL takes a named lock). SQLite's writer lock already does.
async fn install_lock<DB: sqlx::Database>(
    conn: &mut sqlx::pool::PoolConnection<DB>,
    sql: &Sql,
    take: bool,
) -> Result<(), TxError>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let name = format!("tx_outbox_install_{}", sql.table);
    let stmt = match (sql.dialect, take) {
        (Dialect::Postgres, true) => format!("SELECT pg_advisory_lock(hashtext('{name}'))"),
        (Dialect::Postgres, false) => format!("SELECT pg_advisory_unlock(hashtext('{name}'))"),
        (Dialect::MySql, true) => format!("SELECT GET_LOCK('{name}', 30)"),
        (Dialect::MySql, false) => format!("SELECT RELEASE_LOCK('{name}')"),
        (Dialect::Sqlite, _) => return Ok(()),
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(stmt))
        .execute(&mut **conn)
        .await?;
    Ok(())
}
