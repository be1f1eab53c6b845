//! The future of a transactional call is `Send` when the function's `T` and `E` are `Send` but
//! not `Sync` (a boxed `dyn Error + Send`, a response body behind `dyn Read + Send`), with and
//! without `retry`, as the plain `async fn` would be; so it can go into `tokio::spawn`.
use std::cell::Cell;
use std::error::Error;
use tx_sqlx::prelude::*;

include!("../support/manager.rs");
use manager::{RecordingManager, Statement};

/// Send, not Sync: a boxed `dyn Error + Send`.
#[derive(Debug)]
struct BoxError(Box<dyn Error + Send>);
impl From<TxError> for BoxError {
    fn from(e: TxError) -> Self {
        BoxError(Box::new(e))
    }
}

/// Send, not Sync: like a streaming HTTP response body.
struct Body(Box<dyn std::io::Read + Send>, Cell<u32>);

#[derive(Debug)]
struct Failure(Cell<u32>);
impl From<TxError> for Failure {
    fn from(_: TxError) -> Self {
        Failure(Cell::new(0))
    }
}

struct Svc {
    db: RecordingManager,
}

impl Svc {
    #[transactional(manager = self.db)]
    async fn plain(&self, n: u32) -> Result<Body, BoxError> {
        self.db.statement().await;
        tokio::task::yield_now().await;
        Ok(Body(Box::new(std::io::empty()), Cell::new(n)))
    }

    #[transactional(manager = self.db, retry = 3)]
    async fn retried(&self, s: String) -> Result<Body, BoxError> {
        self.db.statement().await;
        tokio::task::yield_now().await;
        Ok(Body(Box::new(std::io::empty()), Cell::new(s.len() as u32)))
    }

    #[transactional(manager = self.db, retry = 3)]
    async fn retried_err(&self) -> Result<Cell<u32>, Failure> {
        self.db.statement().await;
        tokio::task::yield_now().await;
        Err(Failure(Cell::new(7)))
    }
}

#[transactional(retry = 2)]
async fn free_retried(fail: bool) -> Result<Cell<u8>, BoxError> {
    tokio::task::yield_now().await;
    if fail {
        return Err(BoxError(Box::new(std::fmt::Error)));
    }
    Ok(Cell::new(1))
}

/// The same shapes without the attribute, for comparison: `Send` too.
async fn undecorated(db: &RecordingManager) -> Result<Body, BoxError> {
    db.statement().await;
    tokio::task::yield_now().await;
    Ok(Body(Box::new(std::io::empty()), Cell::new(0)))
}

fn assert_send<T: Send>(t: T) -> T {
    t
}

#[tokio::main]
async fn main() {
    let db = RecordingManager::default();
    tx_sqlx::set_default_manager(db.clone());
    let svc = std::sync::Arc::new(Svc { db: db.clone() });

    let s = svc.clone();
    let body = tokio::spawn(async move { assert_send(s.plain(4)).await }).await.unwrap().unwrap();
    assert_eq!(body.1.get(), 4);
    let s = svc.clone();
    let body = tokio::spawn(async move { assert_send(s.retried("abc".into())).await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body.1.get(), 3);
    let s = svc.clone();
    let err = tokio::spawn(async move { assert_send(s.retried_err()).await }).await.unwrap().unwrap_err();
    assert_eq!(err.0.get(), 7, "the body's own error, not retried (not a retryable failure)");
    assert_eq!(tokio::spawn(assert_send(free_retried(false))).await.unwrap().unwrap().get(), 1);
    assert_eq!(tokio::spawn(assert_send(free_retried(true))).await.unwrap().unwrap_err().0.to_string(), std::fmt::Error.to_string());
    let d = db.clone();
    assert_eq!(tokio::spawn(async move { assert_send(undecorated(&d)).await.unwrap().1.get() }).await.unwrap(), 0);

    assert_eq!(
        db.take(),
        ["BEGIN Default", "COMMIT", "BEGIN Default", "COMMIT", "BEGIN Default", "ROLLBACK"]
    );
}
