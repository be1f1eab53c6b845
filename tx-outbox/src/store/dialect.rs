//! The SQL dialects: the database clock and placeholder style of each.

/// Which SQL dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

impl Dialect {
    /// The database clock in milliseconds since the epoch.
    pub(super) fn now_ms(self) -> &'static str {
        match self {
            Dialect::Postgres => "(extract(epoch from clock_timestamp()) * 1000)::bigint",
            Dialect::MySql => "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        }
    }

    /// Rewrites `?` placeholders for the dialect (`$1`, `$2`, ... on PostgreSQL).
    pub(super) fn params(self, sql: &str) -> String {
        if self == Dialect::Postgres {
            tx_sqlx::sql_text::numbered_placeholders(sql)
        } else {
            sql.to_owned()
        }
    }
}
