// The tables and the seed data, compiled once per backend (`ID_COLUMN` is its auto-increment
// key, `sql(..)` adapts the placeholders): the shop's store (accounts, products, the audit
// log) and the API's own tables.

use tx_sqlx::TxError;

use super::store;
use crate::schema::{POINTS_CAP, ids};

/// Creates the tables on `db`, and `audit_log` on `audit_db` (a second SQLite database, or
/// the same database), then inserts the seed data. Expects empty databases.
///
/// # Errors
///
/// A failed statement.
pub async fn create(db: &Db, audit_db: &Db) -> Result<(), TxError> {
    let own_tables = [
        format!(
            "CREATE TABLE loyalty (account_id BIGINT PRIMARY KEY, \
             points BIGINT NOT NULL CHECK (points <= {POINTS_CAP}))"
        ),
        format!(
            "CREATE TABLE points_ledger ({ID_COLUMN}, account_id BIGINT NOT NULL, \
             order_id BIGINT NOT NULL, points BIGINT NOT NULL)"
        ),
        format!(
            "CREATE TABLE orders ({ID_COLUMN}, account_id BIGINT NOT NULL, \
             product_id BIGINT NOT NULL, quantity BIGINT NOT NULL, total BIGINT NOT NULL)"
        ),
    ];
    store::create_tables(db, audit_db, &own_tables).await?;
    let accounts = ids::accounts();
    let balances: Vec<_> = accounts
        .iter()
        .map(|(id, name, balance, _)| (*id, name.as_str(), *balance))
        .collect();
    store::seed(db, &balances, &ids::PRODUCTS).await?;
    for (id, _, _, points) in accounts {
        sqlx::query(sql(
            "INSERT INTO loyalty (account_id, points) VALUES ($1, $2)",
        ))
        .bind(id)
        .bind(points)
        .execute(db)
        .await?;
    }
    Ok(())
}
