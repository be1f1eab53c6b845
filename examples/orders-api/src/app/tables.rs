// The tables and the seed data, compiled once per backend (`ID_COLUMN` is its auto-increment
// key, `sql(..)` adapts the placeholders).

use tx_sqlx::TxError;

use crate::schema::{POINTS_CAP, ids};

/// Creates the tables on `db`, and `audit_log` on `audit_db` (a second SQLite database, or
/// the same database), then inserts the seed data. Expects empty databases.
///
/// # Errors
///
/// A failed statement.
pub async fn create(db: &Db, audit_db: &Db) -> Result<(), TxError> {
    let tables = [
        "CREATE TABLE account (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, \
         balance BIGINT NOT NULL CHECK (balance >= 0))"
            .to_owned(),
        format!(
            "CREATE TABLE loyalty (account_id BIGINT PRIMARY KEY, \
             points BIGINT NOT NULL CHECK (points <= {POINTS_CAP}))"
        ),
        format!(
            "CREATE TABLE points_ledger ({ID_COLUMN}, account_id BIGINT NOT NULL, \
             order_id BIGINT NOT NULL, points BIGINT NOT NULL)"
        ),
        "CREATE TABLE product (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, \
         stock BIGINT NOT NULL CHECK (stock >= 0), price BIGINT NOT NULL)"
            .to_owned(),
        format!(
            "CREATE TABLE orders ({ID_COLUMN}, account_id BIGINT NOT NULL, \
             product_id BIGINT NOT NULL, quantity BIGINT NOT NULL, total BIGINT NOT NULL)"
        ),
    ];
    // DDL built from constants, never from input.
    for ddl in tables {
        sqlx::query(sqlx::AssertSqlSafe(ddl)).execute(db).await?;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE audit_log ({ID_COLUMN}, action VARCHAR(50) NOT NULL, \
         detail VARCHAR(200) NOT NULL)"
    )))
    .execute(audit_db)
    .await?;

    for (id, name, balance, points) in ids::accounts() {
        sqlx::query(sql(
            "INSERT INTO account (id, name, balance) VALUES ($1, $2, $3)",
        ))
        .bind(id)
        .bind(name)
        .bind(balance)
        .execute(db)
        .await?;
        sqlx::query(sql(
            "INSERT INTO loyalty (account_id, points) VALUES ($1, $2)",
        ))
        .bind(id)
        .bind(points)
        .execute(db)
        .await?;
    }
    for (id, name, stock, price) in ids::PRODUCTS {
        sqlx::query(sql(
            "INSERT INTO product (id, name, stock, price) VALUES ($1, $2, $3, $4)",
        ))
        .bind(id)
        .bind(name)
        .bind(stock)
        .bind(price)
        .execute(db)
        .await?;
    }
    Ok(())
}
