//! Methods: `&self`, `&mut self`, `self`, `mut self`, `self: Arc<Self>`, generic methods,
//! trait-impl methods, trait default bodies, and `retry` on each receiver it accepts.
use std::sync::Arc;
use tx_sqlx::prelude::*;

include!("../support/manager.rs");
use manager::{RecordingManager, Statement};

static DB: std::sync::LazyLock<RecordingManager> = std::sync::LazyLock::new(RecordingManager::default);

#[derive(Clone)]
struct Service {
    db: RecordingManager,
    calls: u32,
}

impl Service {
    /// Doc comments and other attributes are kept.
    #[transactional(manager = self.db)]
    #[inline]
    pub async fn by_ref(&self, n: u32) -> Result<u32, TxError> {
        self.db.statement().await;
        Ok(n + self.calls)
    }

    #[transactional(manager = self.db)]
    pub(crate) async fn by_mut(&mut self) -> Result<u32, TxError> {
        self.db.statement().await;
        self.calls += 1;
        Ok(self.calls)
    }

    #[transactional(manager = self.db)]
    async fn by_value(self) -> Result<u32, TxError> {
        self.db.statement().await;
        Ok(self.calls)
    }

    #[transactional(manager = self.db)]
    async fn by_mut_value(mut self) -> Result<u32, TxError> {
        self.db.statement().await;
        self.calls += 10;
        Ok(self.calls)
    }

    #[transactional(manager = self.db)]
    async fn by_arc(self: Arc<Self>) -> Result<u32, TxError> {
        self.db.statement().await;
        Ok(self.calls)
    }

    #[transactional(manager = self.db)]
    async fn explicit_ref(self: &Self) -> Result<u32, TxError> {
        self.db.statement().await;
        Ok(self.calls)
    }

    #[transactional(manager = self.db)]
    async fn generic<T: std::fmt::Display>(&self, value: T) -> Result<String, TxError> {
        self.db.statement().await;
        Ok(format!("{value}"))
    }

    #[transactional(manager = self.db)]
    async fn lifetimes<'a>(&self, s: &'a str) -> Result<&'a str, TxError> {
        self.db.statement().await;
        Ok(s.trim())
    }

    #[transactional(manager = self.db)]
    async fn patterns(&self, (a, b): (u32, u32), Wrapper(c): Wrapper) -> Result<u32, TxError> {
        self.db.statement().await;
        Ok(a + b + c)
    }

    /// `self` calls another transactional method on `self`: no proxy, no self-invocation trap.
    #[transactional(manager = self.db)]
    async fn calls_self(&self) -> Result<u32, TxError> {
        self.db.statement().await;
        let inner = self.by_ref(1).await?;
        Ok(inner + 1)
    }

    #[transactional(manager = self.db, retry = 3)]
    async fn retry_ref(&self, name: String, tag: &str) -> Result<String, TxError> {
        self.db.statement().await;
        Ok(format!("{name}{tag}{}", self.calls))
    }

    #[transactional(manager = self.db, retry = 3)]
    async fn retry_arc(self: Arc<Self>, mut name: String) -> Result<String, TxError> {
        self.db.statement().await;
        name.push('!');
        let me = &self;
        Ok(format!("{name}{}{}", self.calls, me.calls))
    }

    #[transactional(manager = self.db, retry = 3)]
    async fn retry_value(mut self, Wrapper(c): Wrapper) -> Result<u32, TxError> {
        self.db.statement().await;
        self.calls += c;
        Ok(self.calls)
    }

    #[transactional(retry = 2)]
    async fn retry_assoc(n: u32) -> Result<u32, TxError> {
        DB.statement().await;
        Ok(n)
    }
}

#[derive(Clone)]
struct Wrapper(u32);

trait Repo {
    async fn load(&self, id: u32) -> Result<u32, TxError>;

    /// A default body may be transactional too.
    #[transactional(propagation = Supports)]
    async fn exists(&self, id: u32) -> Result<bool, TxError> {
        DB.statement().await;
        Ok(self.load(id).await? > 0)
    }
}

impl Repo for Service {
    #[transactional(manager = self.db, read_only)]
    async fn load(&self, id: u32) -> Result<u32, TxError> {
        self.db.statement().await;
        Ok(id * 2)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let db = DB.clone();
    tx_sqlx::set_default_manager(db.clone());
    let one = ["BEGIN Default", "COMMIT"];

    let mut svc = Service { db: db.clone(), calls: 0 };
    assert_eq!(svc.by_ref(1).await.unwrap(), 1);
    assert_eq!(db.take(), one);
    assert_eq!(svc.by_mut().await.unwrap(), 1);
    assert_eq!(svc.calls, 1);
    assert_eq!(db.take(), one);
    assert_eq!(svc.clone().by_value().await.unwrap(), 1);
    assert_eq!(svc.clone().by_mut_value().await.unwrap(), 11);
    assert_eq!(Arc::new(svc.clone()).by_arc().await.unwrap(), 1);
    assert_eq!(svc.explicit_ref().await.unwrap(), 1);
    assert_eq!(svc.generic(2.5).await.unwrap(), "2.5");
    assert_eq!(svc.lifetimes("  x ").await.unwrap(), "x");
    assert_eq!(svc.patterns((1, 2), Wrapper(3)).await.unwrap(), 6);
    assert_eq!(db.take().len(), 14);

    // the inner call joins the outer transaction: one begin, one commit
    assert_eq!(svc.calls_self().await.unwrap(), 3);
    assert_eq!(db.take(), one);

    assert_eq!(svc.retry_ref("a".into(), "b").await.unwrap(), "ab1");
    assert_eq!(Arc::new(svc.clone()).retry_arc("n".into()).await.unwrap(), "n!11");
    assert_eq!(svc.clone().retry_value(Wrapper(4)).await.unwrap(), 5);
    assert_eq!(Service::retry_assoc(9).await.unwrap(), 9);
    assert_eq!(db.take().len(), 8);

    assert!(svc.exists(2).await.unwrap());
    assert_eq!(db.take(), ["BEGIN Default READ ONLY", "COMMIT"]);
}
