//! `manager = self.db` where the field is a reference to the manager (`db: &'a RecordingManager`), a
//! `Box` or an `Arc` of it, on `&self`, `&mut self` and by-value receivers, with `retry` and on an
//! `impl` block.
use std::sync::Arc;
use tx_sqlx::prelude::*;

include!("../support/manager.rs");
use manager::{RecordingManager, Statement};

struct Borrowing<'a> {
    db: &'a RecordingManager,
    nested: Inner<'a>,
}

struct Inner<'a> {
    db: &'a RecordingManager,
}

impl<'a> Borrowing<'a> {
    #[transactional(manager = self.db)]
    async fn by_ref(&self) -> Result<u32, TxError> {
        self.db.statement().await;
        Ok(1)
    }

    #[transactional(manager = self.nested.db)]
    async fn by_nested_ref(&self) -> Result<u32, TxError> {
        self.db.statement().await;
        Ok(2)
    }

    #[transactional(manager = self.db)]
    async fn by_mut(&mut self) -> Result<u32, TxError> {
        self.db.statement().await;
        Ok(3)
    }

    #[transactional(manager = self.db)]
    async fn by_value(self) -> Result<u32, TxError> {
        self.db.statement().await;
        Ok(4)
    }

    #[transactional(manager = self.db, retry = 2)]
    async fn retried(&self, s: String) -> Result<usize, TxError> {
        self.db.statement().await;
        Ok(s.len())
    }
}

struct Boxed {
    db: Box<RecordingManager>,
    shared: Arc<RecordingManager>,
}

#[transactional(manager = self.db)]
impl Boxed {
    async fn boxed(&self) -> Result<u32, TxError> {
        self.db.statement().await;
        Ok(5)
    }

    #[transactional(manager = self.shared, read_only)]
    async fn arc(&self) -> Result<u32, TxError> {
        self.shared.statement().await;
        Ok(6)
    }
}

struct Block<'a> {
    db: &'a RecordingManager,
}

#[transactional(manager = self.db, read_only)]
impl Block<'_> {
    async fn count(&self) -> Result<u32, TxError> {
        self.db.statement().await;
        Ok(7)
    }
}

fn assert_send<T: Send>(t: T) -> T {
    t
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let db = RecordingManager::default();
    let mut b = Borrowing { db: &db, nested: Inner { db: &db } };
    assert_eq!(assert_send(b.by_ref()).await.unwrap(), 1);
    assert_eq!(b.by_nested_ref().await.unwrap(), 2);
    assert_eq!(b.by_mut().await.unwrap(), 3);
    assert_eq!(b.retried("ab".into()).await.unwrap(), 2);
    assert_eq!(b.by_value().await.unwrap(), 4);
    assert_eq!(db.take(), ["BEGIN Default", "COMMIT", "BEGIN Default", "COMMIT", "BEGIN Default", "COMMIT", "BEGIN Default", "COMMIT", "BEGIN Default", "COMMIT"]);

    let shared = RecordingManager::default();
    let boxed = Boxed { db: Box::new(db.clone()), shared: Arc::new(shared.clone()) };
    assert_eq!(boxed.boxed().await.unwrap(), 5);
    assert_eq!(db.take(), ["BEGIN Default", "COMMIT"]);
    assert_eq!(boxed.arc().await.unwrap(), 6);
    assert_eq!(shared.take(), ["BEGIN Default READ ONLY", "COMMIT"]);

    assert_eq!(Block { db: &db }.count().await.unwrap(), 7);
    assert_eq!(db.take(), ["BEGIN Default READ ONLY", "COMMIT"]);
}
