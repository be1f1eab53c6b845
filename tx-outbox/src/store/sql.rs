//! The SQL texts of one outbox table set (and its inbox), built once per dialect, and the
//! statements built per call (lists of partitions, ids, skipped keys).

use std::time::Duration;

use super::ddl::{inbox_tables, outbox_tables};
use super::dialect::Dialect;

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
        let install = outbox_tables(dialect, t);
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
        let inbox_install = inbox_tables(dialect, i);
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
    pub(super) fn claim_many(&self, parts: &[i32]) -> String {
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
    pub(super) fn fetch_sql(&self, skip: usize) -> String {
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
    pub(super) fn delivered(&self, ids: &[i64], delete: bool) -> String {
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
pub(super) fn safe(sql: &str) -> sqlx::AssertSqlSafe<&str> {
    sqlx::AssertSqlSafe(sql)
}

pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}
