//! The tables of an outbox and of an inbox, per dialect: created by `install`, each statement
//! idempotent.

use super::dialect::Dialect;
use super::partition::PARTITIONS;

/// The outbox table `t`, its indexes, and its partition table with one row per partition.
pub(super) fn outbox_tables(dialect: Dialect, t: &str) -> Vec<String> {
    let parts_values: Vec<String> = (0..PARTITIONS).map(|i| format!("({i})")).collect();
    let parts_values = parts_values.join(", ");
    match dialect {
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
            partial_index(t, "pending", "(part, id) WHERE state = 0"),
            partial_index(t, "key", "(part, msg_key, id) WHERE state = 0"),
            partial_index(t, "failed", "(id) WHERE state = 2"),
            partitions_table(t, "BIGINT"),
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
            partial_index(t, "pending", "(part, id) WHERE state = 0"),
            partial_index(t, "key", "(part, msg_key, id) WHERE state = 0"),
            partial_index(t, "failed", "(id) WHERE state = 2"),
            partitions_table(t, "INTEGER"),
            format!("INSERT OR IGNORE INTO {t}_partitions (part) VALUES {parts_values}"),
        ],
    }
}

/// The index `{t}_{name}` of table `t` on `on` (columns and a condition): PostgreSQL and
/// SQLite index only the rows in the state the relay looks for.
fn partial_index(t: &str, name: &str, on: &str) -> String {
    format!("CREATE INDEX IF NOT EXISTS {t}_{name} ON {t} {on}")
}

/// The partition table of PostgreSQL and SQLite (its lease and bound columns of type
/// `int`): one row per partition, with the relay that leased it and until when.
fn partitions_table(t: &str, int: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {t}_partitions (
            part INTEGER PRIMARY KEY,
            owner TEXT,
            lease_until {int} NOT NULL DEFAULT 0,
            bound {int} NOT NULL DEFAULT 0)"
    )
}

/// The inbox table `i` (one row per consumer and message) and its index on the receive time.
pub(super) fn inbox_tables(dialect: Dialect, i: &str) -> Vec<String> {
    match dialect {
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
    }
}
