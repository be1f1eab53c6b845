//! On an `impl` block the attribute is the default for its `async fn`s returning `Result`; a
//! method's own attribute replaces it entirely; other methods are left alone.
use tx_sqlx::prelude::*;

include!("../support/manager.rs");
use manager::{RecordingManager, Statement};

static DB: std::sync::LazyLock<RecordingManager> = std::sync::LazyLock::new(RecordingManager::default);

struct UserQueries {
    db: RecordingManager,
}

#[transactional(read_only, isolation = RepeatableRead, manager = self.db)]
impl UserQueries {
    /// from the block: read-only, repeatable read
    pub async fn count(&self) -> Result<u32, TxError> {
        self.db.statement().await;
        Ok(1)
    }

    async fn count_mut(&mut self) -> Result<u32, TxError> {
        self.db.statement().await;
        Ok(2)
    }

    /// its own attribute replaces the block's (not read-only, default isolation)
    #[transactional(manager = self.db)]
    async fn rename(&self) -> Result<(), TxError> {
        self.db.statement().await;
        Ok(())
    }

    /// the own attribute may also use a path
    #[tx_sqlx::transactional(propagation = NEVER)]
    async fn outside(&self) -> Result<(), TxError> {
        self.db.statement().await;
        Ok(())
    }

    /// not async: left alone
    fn table(&self) -> &'static str {
        "users"
    }

    /// async but not a `Result`: left alone
    async fn label(&self) -> String {
        String::from("users")
    }
}

trait Counter {
    async fn bump(&self, by: u32) -> Result<u32, TxError>;
    fn name(&self) -> &'static str;
}

struct Pg;

// on a trait impl, with the default manager (so associated functions are covered as well)
#[transactional(propagation = RequiresNew, retry = 2)]
impl Counter for Pg {
    async fn bump(&self, by: u32) -> Result<u32, TxError> {
        DB.statement().await;
        Ok(by + 1)
    }
    fn name(&self) -> &'static str {
        "pg"
    }
}

#[transactional(timeout = "2s")]
impl Pg {
    async fn create(n: u32) -> Result<Pg, TxError> {
        DB.statement().await;
        let _ = n;
        Ok(Pg)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let db = DB.clone();
    tx_sqlx::set_default_manager(db.clone());
    let mut q = UserQueries { db: db.clone() };

    assert_eq!(q.count().await.unwrap(), 1);
    assert_eq!(db.take(), ["BEGIN RepeatableRead READ ONLY", "COMMIT"]);
    assert_eq!(q.count_mut().await.unwrap(), 2);
    assert_eq!(db.take(), ["BEGIN RepeatableRead READ ONLY", "COMMIT"]);
    q.rename().await.unwrap();
    assert_eq!(db.take(), ["BEGIN Default", "COMMIT"]);
    q.outside().await.unwrap();
    assert_eq!(db.take(), Vec::<String>::new());
    assert_eq!(q.table(), "users");
    assert_eq!(q.label().await, "users");
    assert_eq!(db.take(), Vec::<String>::new());

    assert_eq!(Pg.bump(1).await.unwrap(), 2);
    assert_eq!(Pg.name(), "pg");
    assert_eq!(db.take(), ["BEGIN Default", "COMMIT"]);
    let _pg = Pg::create(1).await.unwrap();
    assert_eq!(db.take(), ["BEGIN Default", "COMMIT"]);
}
