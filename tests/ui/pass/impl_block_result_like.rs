//! On an `impl` block, only methods returning a `Result` are made transactional: a type whose
//! name merely ends in `Result` (sqlx's `PgQueryResult`, a user's `ImportResult`) is left alone,
//! while `Result<T, E>`, `io::Result<T>`-style paths and one-parameter aliases are wrapped.
use sqlx::postgres::PgQueryResult;
use tx_sqlx::prelude::*;

include!("../support/manager.rs");
use manager::{RecordingManager, Statement};

#[derive(Debug, PartialEq)]
struct ImportResult {
    rows: u32,
}

type AppResult<T> = std::result::Result<T, TxError>;

struct Repo {
    db: RecordingManager,
}

#[transactional(manager = self.db)]
impl Repo {
    /// not a `Result`: runs outside any transaction
    async fn execute(&self) -> PgQueryResult {
        self.db.statement().await;
        assert!(!tx_sqlx::is_actual_transaction_active());
        PgQueryResult::default()
    }

    async fn import(&self) -> ImportResult {
        self.db.statement().await;
        assert!(tx_sqlx::current_status().is_none());
        ImportResult { rows: 3 }
    }

    async fn qualified(&self) -> std::result::Result<u32, TxError> {
        self.db.statement().await;
        Ok(1)
    }

    async fn aliased(&self) -> AppResult<u32> {
        self.db.statement().await;
        Ok(2)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let db = RecordingManager::default();
    let repo = Repo { db: db.clone() };
    assert_eq!(repo.execute().await.rows_affected(), 0);
    assert_eq!(repo.import().await, ImportResult { rows: 3 });
    assert_eq!(db.take(), Vec::<String>::new());
    assert_eq!(repo.qualified().await.unwrap(), 1);
    assert_eq!(repo.aliased().await.unwrap(), 2);
    assert_eq!(db.take(), ["BEGIN Default", "COMMIT", "BEGIN Default", "COMMIT"]);
}
