//! The tables and the seed data, written once for every backend.

use tx_examples::shop::{Store, sql};
use tx_sqlx::TxError;

/// The most loyalty points an account may hold.
pub const POINTS_CAP: i64 = 1000;

/// Loyalty points per order: one per 10 yuan spent.
pub const YUAN_PER_POINT: i64 = 10;

/// Ids and amounts of the seed data.
pub mod ids {
    /// Zhang San: 5000 yuan, no points.
    pub const ZHANG_SAN: i64 = 1;
    /// Li Si: 100 yuan, too little for a laptop.
    pub const LI_SI: i64 = 2;
    /// Wang Wu: 100000 yuan and 990 points, 10 short of the cap.
    pub const WANG_WU: i64 = 3;
    /// The first of [`TRANSFER_ACCOUNTS`] accounts of 1000 yuan each, for transfers.
    pub const FIRST_TRANSFER_ACCOUNT: i64 = 10;
    /// How many transfer accounts there are.
    pub const TRANSFER_ACCOUNTS: i64 = 4;
    /// The balance of each transfer account.
    pub const TRANSFER_BALANCE: i64 = 1000;

    /// Laptop: 10 in stock at 1000.
    pub const LAPTOP: i64 = 100;
    /// Book: 1000 in stock at 10.
    pub const BOOK: i64 = 200;
}

/// Creates the tables on `db`, and `audit_log` on `audit_db` (a second SQLite database, or
/// the same database), then inserts the seed data. Expects empty databases.
///
/// # Errors
///
/// A failed statement.
pub async fn create<S: Store>(db: &S, audit_db: &S) -> Result<(), TxError> {
    let id = db.dialect().id_column();
    let tables = [
        "CREATE TABLE account (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, \
         balance BIGINT NOT NULL CHECK (balance >= 0))"
            .to_owned(),
        format!(
            "CREATE TABLE loyalty (account_id BIGINT PRIMARY KEY, \
             points BIGINT NOT NULL CHECK (points <= {POINTS_CAP}))"
        ),
        format!(
            "CREATE TABLE points_ledger ({id}, account_id BIGINT NOT NULL, \
             order_id BIGINT NOT NULL, points BIGINT NOT NULL)"
        ),
        "CREATE TABLE product (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, \
         stock BIGINT NOT NULL CHECK (stock >= 0), price BIGINT NOT NULL)"
            .to_owned(),
        format!(
            "CREATE TABLE orders ({id}, account_id BIGINT NOT NULL, product_id BIGINT NOT NULL, \
             quantity BIGINT NOT NULL, total BIGINT NOT NULL)"
        ),
    ];
    for ddl in tables {
        db.execute(sql(ddl)).await?;
    }
    let audit_id = audit_db.dialect().id_column();
    audit_db
        .execute(sql(format!(
            "CREATE TABLE audit_log ({audit_id}, action VARCHAR(50) NOT NULL, \
             detail VARCHAR(200) NOT NULL)"
        )))
        .await?;

    use ids::*;
    let mut accounts = vec![
        (ZHANG_SAN, "zhang san".to_owned(), 5000, 0),
        (LI_SI, "li si".to_owned(), 100, 0),
        (WANG_WU, "wang wu".to_owned(), 100_000, POINTS_CAP - 10),
    ];
    for i in 0..TRANSFER_ACCOUNTS {
        let id = FIRST_TRANSFER_ACCOUNT + i;
        accounts.push((id, format!("transfer {id}"), TRANSFER_BALANCE, 0));
    }
    for (id, name, balance, points) in accounts {
        db.execute(
            sql("INSERT INTO account (id, name, balance) VALUES (?, ?, ?)")
                .bind(id)
                .bind(name)
                .bind(balance),
        )
        .await?;
        db.execute(
            sql("INSERT INTO loyalty (account_id, points) VALUES (?, ?)")
                .bind(id)
                .bind(points),
        )
        .await?;
    }
    for (id, name, stock, price) in [(LAPTOP, "laptop", 10, 1000), (BOOK, "book", 1000, 10)] {
        db.execute(
            sql("INSERT INTO product (id, name, stock, price) VALUES (?, ?, ?, ?)")
                .bind(id)
                .bind(name)
                .bind(stock)
                .bind(price),
        )
        .await?;
    }
    Ok(())
}
