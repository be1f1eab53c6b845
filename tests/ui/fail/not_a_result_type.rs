use sqlx::postgres::PgQueryResult;
use tx_sqlx::prelude::*;

/// A type named `...Result` that is not a `Result`.
#[transactional]
async fn execute() -> PgQueryResult {
    PgQueryResult::default()
}

fn main() {}
