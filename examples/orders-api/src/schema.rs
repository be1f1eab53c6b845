//! The seed data's ids and amounts, and the loyalty rules.

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

    /// The accounts: id, name, balance, loyalty points.
    pub fn accounts() -> Vec<(i64, String, i64, i64)> {
        let mut accounts = vec![
            (ZHANG_SAN, "zhang san".to_owned(), 5000, 0),
            (LI_SI, "li si".to_owned(), 100, 0),
            (
                WANG_WU,
                "wang wu".to_owned(),
                100_000,
                super::POINTS_CAP - 10,
            ),
        ];
        for i in 0..TRANSFER_ACCOUNTS {
            let id = FIRST_TRANSFER_ACCOUNT + i;
            accounts.push((id, format!("transfer {id}"), TRANSFER_BALANCE, 0));
        }
        accounts
    }

    /// The products: id, name, stock, price.
    pub const PRODUCTS: [(i64, &str, i64, i64); 2] =
        [(LAPTOP, "laptop", 10, 1000), (BOOK, "book", 1000, 10)];
}
