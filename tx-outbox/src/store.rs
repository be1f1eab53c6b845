//! The tables and every statement on them, per backend.
//!
//! The outbox and inbox types are generic over the sqlx database only in name: each backend
//! implements [`Store`] once (through `impl_store!`, so the three implementations share one
//! body over concrete types) and the rest of the crate talks to `dyn Store`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tx_sqlx::{Operation, TransactionManager, TxError, TxPool};

use crate::message::{Message, MessageId};

/// Number of partitions messages are spread over (by key). Relays lease partitions, so it
/// bounds how many relays can work at once.
pub(crate) const PARTITIONS: i32 = 32;

/// Row states.
pub(crate) const PENDING: i32 = 0;
pub(crate) const FAILED: i32 = 2;

/// Which SQL dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

impl Dialect {
    /// The database clock in milliseconds since the epoch.
    fn now_ms(self) -> &'static str {
        match self {
            Dialect::Postgres => "(extract(epoch from clock_timestamp()) * 1000)::bigint",
            Dialect::MySql => "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        }
    }

    /// Rewrites `?` placeholders for the dialect (`$1`, `$2`, ... on PostgreSQL).
    fn params(self, sql: &str) -> String {
        if self != Dialect::Postgres {
            return sql.to_owned();
        }
        let mut out = String::with_capacity(sql.len() + 16);
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

/// A validated table name (letters, digits, `_`; starts with a letter or `_`).
pub(crate) fn check_table_name(name: &str) -> Result<(), TxError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid outbox/inbox table name {name:?}: use 1 to 48 ASCII letters, digits and \
             underscores, starting with a letter or underscore"
        )))
    }
}

/// A misuse error with a message saying what to do.
pub(crate) fn invalid(message: String) -> TxError {
    TxError::database(
        Operation::Statement,
        false,
        std::io::Error::new(std::io::ErrorKind::InvalidInput, message),
    )
}

/// FNV-1a of a key: stable over processes and versions.
pub(crate) fn hash_key(key: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The partition of a message: by key, or at random without one.
pub(crate) fn partition_of(key: Option<&str>) -> i32 {
    match key {
        None => fastrand::i32(0..PARTITIONS),
        Some(k) => (hash_key(k) % PARTITIONS as u32) as i32,
    }
}

/// A pending message as the relay reads it.
#[derive(Debug, Clone)]
pub(crate) struct PendingRow {
    pub id: i64,
    pub message_id: String,
    pub topic: String,
    pub key: Option<String>,
    pub headers: String,
    pub payload: Vec<u8>,
    pub attempts: i32,
    pub created_ms: i64,
}

/// A parked message.
#[derive(Debug, Clone)]
pub(crate) struct FailedRow {
    pub message_id: String,
    pub topic: String,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_ms: i64,
}

/// What `stats()` reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StatsRow {
    pub pending: i64,
    pub failed: i64,
    pub oldest_pending_ms: Option<i64>,
    pub now_ms: i64,
}

/// Waits for "new work" notifications (PostgreSQL `LISTEN`).
pub(crate) trait Listener: Send {
    /// Resolves on the next notification (or after a lost connection was re-established).
    fn wait(&mut self) -> BoxFuture<'_, ()>;
}

/// Every statement the crate runs.
pub(crate) trait Store: Send + Sync + 'static {
    fn dialect(&self) -> Dialect;
    fn table(&self) -> &str;

    fn install(&self) -> BoxFuture<'_, Result<(), TxError>>;
    /// Inserts on the transaction bound to this task; `NoTransaction` when there is none.
    fn insert<'a>(
        &'a self,
        msg: &'a Message,
        id: MessageId,
        part: i32,
    ) -> BoxFuture<'a, Result<(), TxError>>;

    /// Free partitions that have due pending messages.
    fn partitions_with_work(&self) -> BoxFuture<'_, Result<Vec<i32>, TxError>>;
    /// Leases `parts` (those still free) to `token`; returns the ones leased.
    fn claim<'a>(
        &'a self,
        token: &'a str,
        parts: &'a [i32],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<i32>, TxError>>;
    fn release<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<(), TxError>>;
    /// Up to `limit` pending messages of the partitions leased to `token` with an id above
    /// `after`, leaving out the keys in `skip`, in publication order, each with whether it
    /// may be sent now (due, and final: no message with a smaller id can still appear).
    fn fetch<'a>(
        &'a self,
        token: &'a str,
        after: i64,
        skip: &'a [String],
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(PendingRow, bool)>, TxError>>;
    fn mark_delivered<'a>(
        &'a self,
        ids: &'a [i64],
        delete: bool,
    ) -> BoxFuture<'a, Result<(), TxError>>;
    fn mark_failed<'a>(
        &'a self,
        id: i64,
        attempts: i32,
        park: bool,
        retry_in: Duration,
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), TxError>>;

    fn stats(&self) -> BoxFuture<'_, Result<StatsRow, TxError>>;
    fn failed(&self, limit: usize) -> BoxFuture<'_, Result<Vec<FailedRow>, TxError>>;
    fn retry_failed(&self, id: MessageId) -> BoxFuture<'_, Result<bool, TxError>>;
    fn purge_delivered(&self, older_than: Duration) -> BoxFuture<'_, Result<u64, TxError>>;
    /// A notification listener, on backends that have one.
    fn listener(&self) -> BoxFuture<'_, Result<Option<Box<dyn Listener>>, TxError>>;

    fn inbox_install(&self) -> BoxFuture<'_, Result<(), TxError>>;
    /// Records `(consumer, message_id)` on the bound transaction; false if already recorded.
    fn inbox_record<'a>(
        &'a self,
        consumer: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, TxError>>;
    fn inbox_purge(&self, older_than: Duration) -> BoxFuture<'_, Result<u64, TxError>>;
}

/// The SQL texts of one table set, built once.
#[derive(Debug)]
pub(crate) struct Sql {
    pub dialect: Dialect,
    pub table: String,
    pub install: Vec<String>,
    pub insert: String,
    /// MySQL only: the shared lock on the partition row a publisher holds until it ends.
    pub insert_lock: String,
    pub with_work: String,
    pub claim_one: String,
    pub owned: String,
    pub release: String,
    pub fetch: String,
    pub failed_update: String,
    pub stats_pending: String,
    pub stats_failed: String,
    pub failed_list: String,
    pub retry_failed: String,
    pub purge: String,
    pub inbox_install: Vec<String>,
    pub inbox_record: String,
    pub inbox_purge: String,
}

impl Sql {
    pub(crate) fn new(dialect: Dialect, table: &str, inbox: &str) -> Sql {
        let t = table;
        let now = dialect.now_ms();
        let p = |s: String| dialect.params(&s);
        let parts_values: Vec<String> = (0..PARTITIONS).map(|i| format!("({i})")).collect();
        let parts_values = parts_values.join(", ");
        let install = match dialect {
            Dialect::Postgres => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (
                        id BIGSERIAL PRIMARY KEY,
                        message_id TEXT NOT NULL UNIQUE,
                        topic TEXT NOT NULL,
                        msg_key TEXT,
                        part INTEGER NOT NULL,
                        headers TEXT NOT NULL,
                        payload BYTEA NOT NULL,
                        created_ms BIGINT NOT NULL,
                        state SMALLINT NOT NULL DEFAULT 0,
                        attempts INTEGER NOT NULL DEFAULT 0,
                        next_attempt_ms BIGINT NOT NULL DEFAULT 0,
                        last_error TEXT,
                        delivered_ms BIGINT,
                        xid xid8 NOT NULL DEFAULT pg_current_xact_id())"
                ),
                format!("CREATE INDEX IF NOT EXISTS {t}_pending ON {t} (part, id) WHERE state = 0"),
                format!(
                    "CREATE INDEX IF NOT EXISTS {t}_key ON {t} (part, msg_key, id) WHERE state = 0"
                ),
                format!("CREATE INDEX IF NOT EXISTS {t}_failed ON {t} (id) WHERE state = 2"),
                format!(
                    "CREATE TABLE IF NOT EXISTS {t}_partitions (
                        part INTEGER PRIMARY KEY,
                        owner TEXT,
                        lease_until BIGINT NOT NULL DEFAULT 0,
                        bound BIGINT NOT NULL DEFAULT 0)"
                ),
                format!(
                    "INSERT INTO {t}_partitions (part) VALUES {parts_values} ON CONFLICT DO NOTHING"
                ),
            ],
            Dialect::MySql => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (
                        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                        message_id VARCHAR(64) NOT NULL,
                        topic VARCHAR(255) NOT NULL,
                        msg_key VARCHAR(255) NULL,
                        part INT NOT NULL,
                        headers TEXT NOT NULL,
                        payload LONGBLOB NOT NULL,
                        created_ms BIGINT NOT NULL,
                        state SMALLINT NOT NULL DEFAULT 0,
                        attempts INT NOT NULL DEFAULT 0,
                        next_attempt_ms BIGINT NOT NULL DEFAULT 0,
                        last_error TEXT NULL,
                        delivered_ms BIGINT NULL,
                        UNIQUE KEY {t}_mid (message_id),
                        KEY {t}_pending (state, part, id),
                        KEY {t}_key (part, msg_key, state, id)
                    ) ENGINE=InnoDB"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {t}_partitions (
                        part INT NOT NULL PRIMARY KEY,
                        owner VARCHAR(128) NULL,
                        lease_until BIGINT NOT NULL DEFAULT 0,
                        bound BIGINT NOT NULL DEFAULT 0
                    ) ENGINE=InnoDB"
                ),
                format!("INSERT IGNORE INTO {t}_partitions (part) VALUES {parts_values}"),
            ],
            Dialect::Sqlite => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        message_id TEXT NOT NULL UNIQUE,
                        topic TEXT NOT NULL,
                        msg_key TEXT,
                        part INTEGER NOT NULL,
                        headers TEXT NOT NULL,
                        payload BLOB NOT NULL,
                        created_ms INTEGER NOT NULL,
                        state INTEGER NOT NULL DEFAULT 0,
                        attempts INTEGER NOT NULL DEFAULT 0,
                        next_attempt_ms INTEGER NOT NULL DEFAULT 0,
                        last_error TEXT,
                        delivered_ms INTEGER)"
                ),
                format!("CREATE INDEX IF NOT EXISTS {t}_pending ON {t} (part, id) WHERE state = 0"),
                format!(
                    "CREATE INDEX IF NOT EXISTS {t}_key ON {t} (part, msg_key, id) WHERE state = 0"
                ),
                format!("CREATE INDEX IF NOT EXISTS {t}_failed ON {t} (id) WHERE state = 2"),
                format!(
                    "CREATE TABLE IF NOT EXISTS {t}_partitions (
                        part INTEGER PRIMARY KEY,
                        owner TEXT,
                        lease_until INTEGER NOT NULL DEFAULT 0,
                        bound INTEGER NOT NULL DEFAULT 0)"
                ),
                format!("INSERT OR IGNORE INTO {t}_partitions (part) VALUES {parts_values}"),
            ],
        };
        // PostgreSQL: the NOTIFY is queued with the row and sent at COMMIT (never for a
        // rollback); identical notifications of one transaction are folded into one.
        let insert = match dialect {
            Dialect::Postgres => format!(
                "INSERT INTO {t} (message_id, topic, msg_key, part, headers, payload, created_ms)
                 VALUES (?, ?, ?, ?, ?, ?, {now}) RETURNING pg_notify('{t}', '')::text"
            ),
            _ => format!(
                "INSERT INTO {t} (message_id, topic, msg_key, part, headers, payload, created_ms)
                 VALUES (?, ?, ?, ?, ?, ?, {now})"
            ),
        };
        let insert_lock =
            format!("SELECT part FROM {t}_partitions WHERE part = ? LOCK IN SHARE MODE");
        // Only messages that can no longer be overtaken are eligible:
        // * PostgreSQL: written by a transaction older than every transaction still running
        //   (xid below the snapshot's xmin), so no message with a smaller id can commit later;
        // * MySQL: at most the partition's bound, the largest id when the relay leased the
        //   partition, at which point every publisher of that partition had finished;
        // * SQLite: one writer at a time, ids are in commit order.
        let (eligible, bound) = match dialect {
            Dialect::Postgres => (
                format!(
                    "CAST(CASE WHEN m.next_attempt_ms <= {now}
                     AND m.xid < pg_snapshot_xmin(pg_current_snapshot()) THEN 1 ELSE 0 END AS BIGINT)"
                ),
                "",
            ),
            Dialect::MySql => (
                format!("CAST(CASE WHEN m.next_attempt_ms <= {now} THEN 1 ELSE 0 END AS SIGNED)"),
                "AND m.id <= p.bound",
            ),
            Dialect::Sqlite => (
                format!("CASE WHEN m.next_attempt_ms <= {now} THEN 1 ELSE 0 END"),
                "",
            ),
        };
        let with_work = format!(
            "SELECT p.part FROM {t}_partitions p WHERE p.lease_until < {now} AND EXISTS (
                 SELECT 1 FROM {t} m WHERE m.part = p.part AND m.state = 0
                 AND m.next_attempt_ms <= {now})"
        );
        let claim_one = match dialect {
            // The exclusive row lock waits for the publishers holding the shared one.
            Dialect::MySql => format!(
                "UPDATE {t}_partitions SET owner = ?, lease_until = {now} + ?,
                     bound = (SELECT COALESCE(MAX(m.id), 0) FROM {t} m WHERE m.part = ?)
                 WHERE part = ? AND lease_until < {now}"
            ),
            _ => String::new(),
        };
        let owned =
            format!("SELECT part FROM {t}_partitions WHERE owner = ? AND lease_until >= {now}");
        let release =
            format!("UPDATE {t}_partitions SET owner = NULL, lease_until = 0 WHERE owner = ?");
        // The relay walks these rows in id order: a row that may not be sent yet holds back
        // the later rows of its key. Rows past MySQL's bound come after every eligible row
        // of their partition, so they are left out here.
        let fetch = format!(
            "SELECT m.id, m.message_id, m.topic, m.msg_key, m.headers, m.payload, m.attempts,
                    m.created_ms, {eligible}
             FROM {t} m JOIN {t}_partitions p ON p.part = m.part
             WHERE p.owner = ? AND m.state = 0 AND m.id > ? {bound} {{skip}}
             ORDER BY m.id LIMIT ?"
        );
        let failed_update = format!(
            "UPDATE {t} SET attempts = ?, state = ?, next_attempt_ms = {now} + ?, last_error = ?
             WHERE id = ?"
        );
        let stats_pending =
            format!("SELECT COUNT(*), MIN(created_ms), {now} FROM {t} WHERE state = 0");
        let stats_failed = format!("SELECT COUNT(*) FROM {t} WHERE state = 2");
        let failed_list = format!(
            "SELECT message_id, topic, msg_key, payload, attempts, last_error, created_ms
             FROM {t} WHERE state = 2 ORDER BY id LIMIT ?"
        );
        let retry_failed = format!(
            "UPDATE {t} SET state = 0, attempts = 0, next_attempt_ms = 0, last_error = NULL
             WHERE message_id = ? AND state = 2"
        );
        let purge = format!("DELETE FROM {t} WHERE state = 1 AND delivered_ms <= {now} - ?");
        let i = inbox;
        let inbox_install = match dialect {
            Dialect::MySql => vec![format!(
                "CREATE TABLE IF NOT EXISTS {i} (
                    consumer VARCHAR(191) NOT NULL,
                    message_id VARCHAR(191) NOT NULL,
                    received_ms BIGINT NOT NULL,
                    PRIMARY KEY (consumer, message_id),
                    KEY {i}_received (received_ms)
                ) ENGINE=InnoDB"
            )],
            _ => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {i} (
                        consumer TEXT NOT NULL,
                        message_id TEXT NOT NULL,
                        received_ms BIGINT NOT NULL,
                        PRIMARY KEY (consumer, message_id))"
                ),
                format!("CREATE INDEX IF NOT EXISTS {i}_received ON {i} (received_ms)"),
            ],
        };
        let inbox_record = match dialect {
            Dialect::Postgres => format!(
                "INSERT INTO {i} (consumer, message_id, received_ms) VALUES (?, ?, {now})
                 ON CONFLICT DO NOTHING"
            ),
            Dialect::MySql => format!(
                "INSERT IGNORE INTO {i} (consumer, message_id, received_ms) VALUES (?, ?, {now})"
            ),
            Dialect::Sqlite => format!(
                "INSERT OR IGNORE INTO {i} (consumer, message_id, received_ms) VALUES (?, ?, {now})"
            ),
        };
        let inbox_purge = format!("DELETE FROM {i} WHERE received_ms <= {now} - ?");
        Sql {
            dialect,
            table: t.to_owned(),
            install,
            insert: p(insert),
            insert_lock,
            with_work,
            claim_one,
            owned: p(owned),
            release: p(release),
            fetch,
            failed_update: p(failed_update),
            stats_pending,
            stats_failed,
            failed_list: p(failed_list),
            retry_failed: p(retry_failed),
            purge: p(purge),
            inbox_install,
            inbox_record: p(inbox_record),
            inbox_purge: p(inbox_purge),
        }
    }

    /// `UPDATE .. SET owner, lease WHERE part IN (..) AND free` for PostgreSQL and SQLite
    /// (the partition numbers are ours, never user input).
    fn claim_many(&self, parts: &[i32]) -> String {
        let t = &self.table;
        let now = self.dialect.now_ms();
        let list: Vec<String> = parts.iter().map(i32::to_string).collect();
        self.dialect.params(&format!(
            "UPDATE {t}_partitions SET owner = ?, lease_until = {now} + ?
             WHERE part IN ({}) AND lease_until < {now}",
            list.join(", ")
        ))
    }

    /// The fetch statement, leaving out `skip` keys (bound as parameters).
    fn fetch_sql(&self, skip: usize) -> String {
        let skip = if skip == 0 {
            String::new()
        } else {
            format!(
                "AND (m.msg_key IS NULL OR m.msg_key NOT IN ({}))",
                vec!["?"; skip].join(", ")
            )
        };
        self.dialect.params(&self.fetch.replace("{skip}", &skip))
    }

    /// `UPDATE/DELETE .. WHERE id IN (..)` for delivered rows (ids read from the table).
    fn delivered(&self, ids: &[i64], delete: bool) -> String {
        let t = &self.table;
        let now = self.dialect.now_ms();
        let list: Vec<String> = ids.iter().map(i64::to_string).collect();
        let list = list.join(", ");
        if delete {
            format!("DELETE FROM {t} WHERE id IN ({list})")
        } else {
            format!("UPDATE {t} SET state = 1, delivered_ms = {now} WHERE id IN ({list})")
        }
    }
}

/// Our own SQL text (table names are validated, values are bound).
fn safe(sql: &str) -> sqlx::AssertSqlSafe<&str> {
    sqlx::AssertSqlSafe(sql)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// The backend-side state of one outbox (or inbox) on one pool.
pub(crate) struct SqlStore<DB: sqlx::Database> {
    pub db: TxPool<DB>,
    pub sql: Arc<Sql>,
    /// MySQL: the relays' own session for partition claims, with a short lock wait; detached
    /// from the pool, so it takes no place there.
    pub claim_conn: tokio::sync::Mutex<Option<DB::Connection>>,
}

impl<DB: sqlx::Database> SqlStore<DB> {
    pub(crate) fn new(db: TxPool<DB>, sql: Sql) -> Self {
        SqlStore {
            db,
            sql: Arc::new(sql),
            claim_conn: tokio::sync::Mutex::new(None),
        }
    }
}

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
                token: &'a str,
                after: i64,
                skip: &'a [String],
                limit: usize,
            ) -> BoxFuture<'a, Result<Vec<(PendingRow, bool)>, TxError>> {
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
                attempts: i32,
                park: bool,
                retry_in: Duration,
                error: &'a str,
            ) -> BoxFuture<'a, Result<(), TxError>> {
                Box::pin(async move {
                    let error: String = error.chars().take(2000).collect();
                    sqlx::query(safe(&self.sql.failed_update))
                        .bind(attempts)
                        .bind(if park { FAILED } else { PENDING })
                        .bind(ms(retry_in))
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

            fn purge_delivered(&self, older_than: Duration) -> BoxFuture<'_, Result<u64, TxError>> {
                Box::pin(async move {
                    let done = sqlx::query(safe(&self.sql.purge))
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

            fn inbox_purge(&self, older_than: Duration) -> BoxFuture<'_, Result<u64, TxError>> {
                Box::pin(async move {
                    let done = sqlx::query(safe(&self.sql.inbox_purge))
                        .bind(ms(older_than))
                        .execute(self.db.pool())
                        .await?;
                    Ok(done.rows_affected())
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

/// How a backend leases partitions.
trait Claim {
    fn lease<'a>(
        &'a self,
        token: &'a str,
        parts: &'a [i32],
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), TxError>>;
}

/// PostgreSQL and SQLite: one `UPDATE` over the partitions that are free.
macro_rules! impl_claim_many {
    ($db:ty) => {
        impl Claim for SqlStore<$db> {
            fn lease<'a>(
                &'a self,
                token: &'a str,
                parts: &'a [i32],
                lease: Duration,
            ) -> BoxFuture<'a, Result<(), TxError>> {
                Box::pin(async move {
                    sqlx::query(sqlx::AssertSqlSafe(self.sql.claim_many(parts)))
                        .persistent(false)
                        .bind(token)
                        .bind(ms(lease))
                        .execute(self.db.pool())
                        .await?;
                    Ok(())
                })
            }
        }
    };
}

impl_claim_many!(sqlx::Postgres);
impl_claim_many!(sqlx::Sqlite);

impl Claim for SqlStore<sqlx::MySql> {
    fn lease<'a>(
        &'a self,
        token: &'a str,
        parts: &'a [i32],
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), TxError>> {
        Box::pin(claim_mysql(self, token, parts, lease))
    }
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

/// The `LISTEN` side of `publish`'s `NOTIFY` (PostgreSQL only).
trait ListenerFor: sqlx::Database {
    fn listener_for<'a>(
        db: &'a TxPool<Self>,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn Listener>>, TxError>>;
}

async fn listener_for<DB: ListenerFor>(
    db: &TxPool<DB>,
    channel: &str,
) -> Result<Option<Box<dyn Listener>>, TxError> {
    DB::listener_for(db, channel).await
}

impl ListenerFor for sqlx::MySql {
    fn listener_for<'a>(
        _: &'a TxPool<Self>,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn Listener>>, TxError>> {
        Box::pin(async { Ok(None) })
    }
}

impl ListenerFor for sqlx::Sqlite {
    fn listener_for<'a>(
        _: &'a TxPool<Self>,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn Listener>>, TxError>> {
        Box::pin(async { Ok(None) })
    }
}

impl ListenerFor for sqlx::Postgres {
    fn listener_for<'a>(
        db: &'a TxPool<Self>,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn Listener>>, TxError>> {
        Box::pin(async move {
            let mut l = sqlx::postgres::PgListener::connect_with(db.pool()).await?;
            l.listen(channel).await?;
            Ok(Some(Box::new(PgWake(l)) as Box<dyn Listener>))
        })
    }
}

struct PgWake(sqlx::postgres::PgListener);

impl Listener for PgWake {
    fn wait(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match self.0.recv().await {
                // Fold a burst of notifications into one wake-up.
                Ok(_) => while self.0.next_buffered().is_some() {},
                Err(e) => {
                    // `recv` reconnects on its next call; the poll interval covers the gap.
                    tracing::debug!(target: "tx_outbox", error = %e, "LISTEN connection lost");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        })
    }
}
