//! Inside an annotated `impl` block, a method's own `#[transactional(...)]` replaces every key of
//! the block's except `manager`, which it inherits when it names none (as a Spring method-level
//! annotation keeps the class's transaction manager).
use tx_sqlx::prelude::*;

include!("../support/manager.rs");
use manager::{RecordingManager, Statement};

struct Orders {
    db: RecordingManager,
    other: RecordingManager,
}

#[transactional(manager = self.db, read_only, timeout = 5)]
impl Orders {
    /// the block's keys
    async fn list(&self) -> Result<u32, TxError> {
        self.db.statement().await;
        Ok(1)
    }

    /// own keys, the block's manager: not read-only
    #[transactional(isolation = Serializable)]
    async fn place(&self) -> Result<u32, TxError> {
        self.db.statement().await;
        Ok(2)
    }

    /// `#[transactional]` alone: the defaults, on the block's manager
    #[transactional]
    async fn plain(&mut self) -> Result<u32, TxError> {
        self.db.statement().await;
        Ok(3)
    }

    /// own manager
    #[transactional(manager = self.other)]
    async fn elsewhere(&self) -> Result<u32, TxError> {
        self.other.statement().await;
        Ok(4)
    }

    /// `retry` on the block's manager
    #[tx_sqlx::transactional(retry = 2)]
    async fn retried(&self, s: String) -> Result<usize, TxError> {
        self.db.statement().await;
        Ok(s.len())
    }
}

struct Named;

#[transactional(manager = "orders")]
impl Named {
    /// a registered name is inherited too
    #[transactional(propagation = RequiresNew)]
    async fn fresh() -> Result<bool, TxError> {
        ORDERS.statement().await;
        Ok(tx_sqlx::current_status().is_some_and(|s| s.is_new_transaction()))
    }
}

static ORDERS: std::sync::LazyLock<RecordingManager> = std::sync::LazyLock::new(RecordingManager::default);

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // the default manager must not be used by any of these
    let default = RecordingManager::default();
    tx_sqlx::set_default_manager(default.clone());
    tx_sqlx::register_manager("orders", ORDERS.clone());

    let mut o = Orders { db: RecordingManager::default(), other: RecordingManager::default() };
    assert_eq!(o.list().await.unwrap(), 1);
    assert_eq!(o.db.take(), ["BEGIN Default READ ONLY", "COMMIT"]);
    assert_eq!(o.place().await.unwrap(), 2);
    assert_eq!(o.db.take(), ["BEGIN Serializable", "COMMIT"]);
    assert_eq!(o.plain().await.unwrap(), 3);
    assert_eq!(o.db.take(), ["BEGIN Default", "COMMIT"]);
    assert_eq!(o.elsewhere().await.unwrap(), 4);
    assert_eq!(o.other.take(), ["BEGIN Default", "COMMIT"]);
    assert_eq!(o.db.take(), Vec::<String>::new());
    assert_eq!(o.retried("abc".into()).await.unwrap(), 3);
    assert_eq!(o.db.take(), ["BEGIN Default", "COMMIT"]);

    assert!(Named::fresh().await.unwrap());
    assert_eq!(ORDERS.take(), ["BEGIN Default", "COMMIT"]);
    assert_eq!(default.take(), Vec::<String>::new());
}
