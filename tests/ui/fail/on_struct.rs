use tx_sqlx::prelude::*;

#[transactional]
struct UserService {
    name: String,
}

fn main() {}
