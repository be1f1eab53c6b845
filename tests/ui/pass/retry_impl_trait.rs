//! `retry` with `impl Trait` parameters: by value (cloned per attempt, so `impl Trait + Clone`),
//! by reference, and in a pattern; plus `impl Trait` in the error position of the body.
use std::fmt::Display;
use tx_sqlx::prelude::*;

include!("../support/manager.rs");
use manager::{RecordingManager, Statement};

static DB: std::sync::LazyLock<RecordingManager> = std::sync::LazyLock::new(RecordingManager::default);

#[transactional(retry = 2)]
async fn label(prefix: impl Display + Clone, suffix: &impl Display) -> Result<String, TxError> {
    DB.statement().await;
    Ok(format!("{prefix}-{suffix}"))
}

#[transactional(retry = 2)]
async fn many(items: impl IntoIterator<Item = u32> + Clone, (a, b): (impl Display + Clone, u8)) -> Result<u32, TxError> {
    DB.statement().await;
    let _ = format!("{a}{b}");
    Ok(items.into_iter().sum())
}

struct Svc {
    db: RecordingManager,
}

impl Svc {
    #[transactional(manager = self.db, retry = 1)]
    async fn method(&self, mut n: impl std::ops::AddAssign<u32> + Copy + Into<u64>) -> Result<u64, TxError> {
        self.db.statement().await;
        n += 1;
        Ok(n.into())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let db = DB.clone();
    tx_sqlx::set_default_manager(db.clone());
    assert_eq!(label("a", &5).await.unwrap(), "a-5");
    assert_eq!(label(String::from("b"), &"c").await.unwrap(), "b-c");
    assert_eq!(many(vec![1, 2, 3], ("x", 1)).await.unwrap(), 6);
    assert_eq!(Svc { db: db.clone() }.method(41u32).await.unwrap(), 42);
    assert_eq!(db.take(), ["BEGIN Default", "COMMIT", "BEGIN Default", "COMMIT", "BEGIN Default", "COMMIT", "BEGIN Default", "COMMIT"]);
}
