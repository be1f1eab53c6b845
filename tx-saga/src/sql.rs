//! The statements of one engine (its table, its dialect, its registered saga names), built
//! once.

use std::sync::Arc;

use crate::backend::private::{Claim, Dialect};
use crate::status::{COMPENSATING, RUNNING, STUCK};

/// Every statement the engine runs.
pub(crate) struct Sql {
    pub create: Vec<Arc<str>>,
    /// id, name, state
    pub insert: Arc<str>,
    /// status, backward, step, state, attempt, last_error, lease_token, lease_ms, delay_ms,
    /// id, token: every change of a claimed saga, fenced by the lease token.
    pub write: Arc<str>,
    /// lease_ms, id, token
    pub renew: Arc<str>,
    /// id, token
    pub release: Arc<str>,
    /// UpdateReturning: token, lease_ms, names.., limit.
    /// SelectThenUpdate: names.., limit (the SELECT; `claim_update` follows).
    pub claim: Arc<str>,
    /// SelectThenUpdate only: token, lease_ms, then the picked ids (built per count).
    claim_update_prefix: String,
    numbered: bool,
    pub claim_style: Claim,
    /// id
    pub status: Arc<str>,
    /// older_than_ms
    pub stuck: Arc<str>,
    /// id
    pub resume: Arc<str>,
}

/// The columns a claim returns, in order.
pub(crate) const CLAIM_COLUMNS: &str =
    "id, name, status, backward, step, state, attempt, last_error";

impl Sql {
    pub fn new(dialect: &Dialect, table: &str, names: &[&str]) -> Sql {
        let now = dialect.now_ms;
        let t = table;
        let r = |sql: String| -> Arc<str> { Arc::from(render(&sql, dialect.numbered)) };
        let names_list = vec!["?"; names.len().max(1)].join(", ");
        let due = format!(
            "status IN ('{RUNNING}', '{COMPENSATING}') AND name IN ({names_list}) \
             AND next_run_at <= {now} AND (lease_until IS NULL OR lease_until < {now})"
        );
        let claim = match dialect.claim {
            Claim::UpdateReturning if dialect.numbered => format!(
                "UPDATE {t} SET lease_token = ?, lease_until = {now} + ?, version = version + 1 \
                 WHERE id = ANY(ARRAY(SELECT id FROM {t} WHERE {due} ORDER BY next_run_at LIMIT ? \
                 FOR UPDATE SKIP LOCKED)) \
                 RETURNING {CLAIM_COLUMNS}"
            ),
            Claim::UpdateReturning => format!(
                "UPDATE {t} SET lease_token = ?, lease_until = {now} + ?, version = version + 1 \
                 WHERE id IN (SELECT id FROM {t} WHERE {due} ORDER BY next_run_at LIMIT ?) \
                 RETURNING {CLAIM_COLUMNS}"
            ),
            Claim::SelectThenUpdate => format!(
                "SELECT {CLAIM_COLUMNS} FROM {t} WHERE {due} ORDER BY next_run_at LIMIT ? \
                 FOR UPDATE SKIP LOCKED"
            ),
        };
        Sql {
            create: (dialect.create_table)(t)
                .into_iter()
                .map(Arc::from)
                .collect(),
            insert: r(format!(
                "INSERT INTO {t} (id, name, status, backward, step, state, attempt, last_error, \
                 lease_token, lease_until, next_run_at, version, created_at, updated_at) \
                 VALUES (?, ?, '{RUNNING}', 0, 0, ?, 0, NULL, NULL, NULL, {now}, 0, {now}, {now})"
            )),
            write: r(format!(
                "UPDATE {t} SET status = ?, backward = ?, step = ?, state = ?, attempt = ?, \
                 last_error = ?, lease_token = ?, lease_until = {now} + ?, next_run_at = {now} + ?, \
                 version = version + 1, updated_at = {now} WHERE id = ? AND lease_token = ?"
            )),
            renew: r(format!(
                "UPDATE {t} SET lease_until = {now} + ?, version = version + 1 \
                 WHERE id = ? AND lease_token = ?"
            )),
            release: r(format!(
                "UPDATE {t} SET lease_token = NULL, lease_until = NULL, version = version + 1 \
                 WHERE id = ? AND lease_token = ?"
            )),
            claim: r(claim),
            claim_update_prefix: format!(
                "UPDATE {t} SET lease_token = ?, lease_until = {now} + ?, version = version + 1 \
                 WHERE id IN ("
            ),
            numbered: dialect.numbered,
            claim_style: dialect.claim,
            status: r(format!("SELECT status, last_error FROM {t} WHERE id = ?")),
            stuck: r(format!(
                "SELECT id, name, step, backward, attempt, last_error, {now} - updated_at \
                 FROM {t} WHERE status = '{STUCK}' AND updated_at <= {now} - ? ORDER BY updated_at"
            )),
            resume: r(format!(
                "UPDATE {t} SET status = CASE WHEN backward = 1 THEN '{COMPENSATING}' ELSE '{RUNNING}' END, \
                 attempt = 0, next_run_at = {now}, lease_token = NULL, lease_until = NULL, \
                 version = version + 1, updated_at = {now} WHERE id = ? AND status = '{STUCK}'"
            )),
        }
    }

    /// The `UPDATE` that leases `count` rows picked by the claim `SELECT`.
    pub fn claim_update(&self, count: usize) -> Arc<str> {
        let ids = vec!["?"; count].join(", ");
        Arc::from(render(
            &format!("{}{ids})", self.claim_update_prefix),
            self.numbered,
        ))
    }
}

/// `?` placeholders as `$1, $2, ..` where the dialect numbers them.
fn render(sql: &str, numbered: bool) -> String {
    if numbered {
        tx_sqlx::sql_text::numbered_placeholders(sql)
    } else {
        sql.to_owned()
    }
}

/// A table name must be a plain identifier: it is spliced into SQL text.
pub(crate) fn check_table(name: &str) -> Result<(), String> {
    if tx_sqlx::sql_text::is_plain_identifier(name, 48) {
        Ok(())
    } else {
        Err(format!(
            "saga table name {name:?} must be 1 to 48 ASCII letters, digits or underscores, not starting with a digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(
            render("a = ? AND b IN (?, ?)", true),
            "a = $1 AND b IN ($2, $3)"
        );
        assert_eq!(render("a = ?", false), "a = ?");
    }

    #[test]
    fn table_names_are_identifiers() {
        assert!(check_table("tx_saga").is_ok());
        assert!(check_table("t1").is_ok());
        assert!(check_table("1t").is_err());
        assert!(check_table("a; drop table x").is_err());
        assert!(check_table("").is_err());
    }
}
