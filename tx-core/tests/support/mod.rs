//! A recording transaction manager: logs every physical operation, so engine tests see
//! exactly what the engine sends (deferred BEGIN, savepoints, completion order).

#![allow(dead_code)] // each test binary uses part of it

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tx_core::connection::bound_transaction;
use tx_core::manager::{
    BeginOptions, BoxFuture, ManagerKey, PhysicalTransaction, TransactionManager,
};
use tx_core::{Operation, TransactionTemplate, TxError};

pub type Log = Arc<Mutex<Vec<String>>>;

#[derive(Clone, Default)]
pub struct Recorder {
    id: Arc<()>,
    pub log: Log,
    /// How long ROLLBACK takes, in milliseconds.
    rollback_ms: Arc<AtomicU64>,
    /// What `backend_name()` reports (empty: the trait's default).
    pub backend: &'static str,
}

pub struct RecTx {
    log: Log,
    done: bool,
    rollback_ms: u64,
}

impl Drop for RecTx {
    fn drop(&mut self) {
        if !self.done {
            // Like a pooled connection, giving the connection back needs the runtime.
            let _ = tokio::runtime::Handle::current();
            self.log.lock().unwrap().push("DROPPED".into());
        }
    }
}

impl PhysicalTransaction for RecTx {
    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>> {
        self.done = true;
        self.log.lock().unwrap().push("COMMIT".into());
        Box::pin(async { Ok(()) })
    }
    fn rollback(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>> {
        self.done = true;
        let ms = self.rollback_ms;
        let log = self.log.clone();
        Box::pin(async move {
            if ms > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            log.lock().unwrap().push("ROLLBACK".into());
            Ok(())
        })
    }
    fn create_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<(), TxError>> {
        self.log.lock().unwrap().push(format!("SAVEPOINT {name}"));
        Box::pin(async { Ok(()) })
    }
    fn rollback_to_savepoint<'a>(
        &'a mut self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), TxError>> {
        self.log.lock().unwrap().push(format!("ROLLBACK TO {name}"));
        Box::pin(async { Ok(()) })
    }
    fn release_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<(), TxError>> {
        self.log.lock().unwrap().push(format!("RELEASE {name}"));
        Box::pin(async { Ok(()) })
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl TransactionManager for Recorder {
    fn key(&self) -> ManagerKey {
        ManagerKey::of(&self.id)
    }
    fn begin(
        &self,
        o: BeginOptions,
    ) -> BoxFuture<'static, Result<Box<dyn PhysicalTransaction>, TxError>> {
        let log = self.log.clone();
        log.lock().unwrap().push(format!(
            "BEGIN {:?}{}",
            o.isolation,
            if o.read_only { " READ ONLY" } else { "" }
        ));
        let rollback_ms = self.rollback_ms.load(Ordering::Relaxed);
        Box::pin(async move {
            Ok(Box::new(RecTx {
                log,
                done: false,
                rollback_ms,
            }) as Box<dyn PhysicalTransaction>)
        })
    }
    fn backend_name(&self) -> &'static str {
        if self.backend.is_empty() {
            "custom"
        } else {
            self.backend
        }
    }
}

impl Recorder {
    /// A recorder whose `backend_name()` is `backend`.
    pub fn with_backend(backend: &'static str) -> Recorder {
        Recorder {
            backend,
            ..Recorder::default()
        }
    }

    /// A statement: in the bound transaction, or in autocommit.
    pub async fn stmt(&self, sql: &str) -> Result<(), TxError> {
        match bound_transaction(self.key()) {
            Some(bt) => {
                let _g = bt.lock().await?;
                self.push(format!("STMT {sql}"));
            }
            None => self.push(format!("AUTO {sql}")),
        }
        Ok(())
    }

    /// A statement that holds the connection for `ms` milliseconds.
    pub async fn slow_stmt(&self, sql: &str, ms: u64) -> Result<(), TxError> {
        let bt = bound_transaction(self.key()).expect("in a transaction");
        let _g = bt.lock().await?;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.push(format!("STMT {sql}"));
        Ok(())
    }

    /// A statement that fails with a serialization failure (SQLSTATE 40001).
    pub async fn serialization_failure(&self, sql: &str) -> Result<(), TxError> {
        let bt = bound_transaction(self.key()).expect("in a transaction");
        let mut g = bt.lock().await?;
        self.push(format!("FAIL {sql}"));
        g.note_retryable_error(Some("40001"));
        Err(TxError::database(
            Operation::Statement,
            true,
            "could not serialize access due to concurrent update",
        ))
    }

    /// Makes every later ROLLBACK take `ms` milliseconds.
    pub fn slow_rollback(&self, ms: u64) {
        self.rollback_ms.store(ms, Ordering::Relaxed);
    }

    pub fn push(&self, entry: impl Into<String>) {
        self.log.lock().unwrap().push(entry.into());
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

pub fn t(m: &Recorder) -> TransactionTemplate {
    TransactionTemplate::new(m.clone())
}

/// An `FnOnce` body as the `FnMut` a template accepts (called once unless retried).
pub fn once<A, R>(f: impl FnOnce(A) -> R) -> impl FnMut(A) -> R {
    let mut f = Some(f);
    move |a| f.take().expect("a body without retries is called once")(a)
}
