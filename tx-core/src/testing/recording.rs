//! A manager that logs every physical operation the engine sends, for tests that assert on
//! exactly what went out (deferred `BEGIN`, savepoints, completion order).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::log::{OperationLog, push, take};

use crate::connection::bound_transaction;
use crate::error::{Operation, TxError};
use crate::manager::{
    BeginOptions, BoxFuture, ManagerKey, PhysicalTransaction, TransactionManager,
};

/// A [`TransactionManager`] that records what the engine sends instead of sending it.
///
/// Each operation is one line of its [`log`](RecordingManager::log): `BEGIN {isolation:?}`
/// (with ` READ ONLY` for a read-only transaction), `COMMIT`, `ROLLBACK`, `SAVEPOINT {name}`,
/// `ROLLBACK TO {name}`, `RELEASE {name}`, and `DROPPED` for a physical transaction dropped
/// without completing. Statements are simulated with [`stmt`](RecordingManager::stmt)
/// (`STMT {sql}` inside a transaction, `AUTO {sql}` outside one). Clones share the identity and
/// the log.
///
/// ```
/// use tx_core::testing::RecordingManager;
/// use tx_core::{TransactionTemplate, TxError};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let db = RecordingManager::default();
/// TransactionTemplate::new(db.clone())
///     .execute(|_| async { db.stmt("INSERT").await })
///     .await
///     .unwrap();
/// assert_eq!(db.take(), ["BEGIN Default", "STMT INSERT", "COMMIT"]);
/// # }
/// ```
#[derive(Clone, Default)]
pub struct RecordingManager {
    id: Arc<()>,
    log: OperationLog,
    /// How long ROLLBACK takes, in milliseconds.
    rollback_ms: Arc<AtomicU64>,
    /// What `backend_name()` reports (empty: `"custom"`).
    backend: &'static str,
}

impl std::fmt::Debug for RecordingManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingManager")
            .field("backend", &self.backend_name())
            .finish_non_exhaustive()
    }
}

/// The physical transaction of a [`RecordingManager`].
struct RecordingTx {
    log: OperationLog,
    done: bool,
    rollback_ms: u64,
}

impl Drop for RecordingTx {
    fn drop(&mut self) {
        if !self.done {
            // Like a pooled connection, giving the connection back needs the runtime.
            let _ = tokio::runtime::Handle::current();
            push(&self.log, "DROPPED");
        }
    }
}

impl PhysicalTransaction for RecordingTx {
    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>> {
        self.done = true;
        push(&self.log, "COMMIT");
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
            push(&log, "ROLLBACK");
            Ok(())
        })
    }
    fn create_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<(), TxError>> {
        push(&self.log, format!("SAVEPOINT {name}"));
        Box::pin(async { Ok(()) })
    }
    fn rollback_to_savepoint<'a>(
        &'a mut self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), TxError>> {
        push(&self.log, format!("ROLLBACK TO {name}"));
        Box::pin(async { Ok(()) })
    }
    fn release_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<(), TxError>> {
        push(&self.log, format!("RELEASE {name}"));
        Box::pin(async { Ok(()) })
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl TransactionManager for RecordingManager {
    fn key(&self) -> ManagerKey {
        ManagerKey::of(&self.id)
    }
    fn begin(
        &self,
        o: BeginOptions,
    ) -> BoxFuture<'static, Result<Box<dyn PhysicalTransaction>, TxError>> {
        let log = self.log.clone();
        push(
            &log,
            format!(
                "BEGIN {:?}{}",
                o.isolation,
                if o.read_only { " READ ONLY" } else { "" }
            ),
        );
        let rollback_ms = self.rollback_ms.load(Ordering::Relaxed);
        Box::pin(async move {
            Ok(Box::new(RecordingTx {
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

impl RecordingManager {
    /// A recorder whose `backend_name()` is `backend` (`"postgres"`, `"mysql"`, `"sqlite"`).
    #[must_use]
    pub fn with_backend(backend: &'static str) -> RecordingManager {
        RecordingManager {
            backend,
            ..RecordingManager::default()
        }
    }

    /// The log, shared by every clone (for hooks and listeners that record into it too).
    #[must_use]
    pub fn log(&self) -> &OperationLog {
        &self.log
    }

    /// A statement: `STMT {sql}` in the bound transaction, or `AUTO {sql}` in autocommit.
    ///
    /// # Errors
    ///
    /// What taking the transaction's connection fails with (e.g. [`TxError::Timeout`]).
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
    ///
    /// # Errors
    ///
    /// As [`stmt`](Self::stmt).
    ///
    /// # Panics
    ///
    /// Outside a transaction of this manager.
    pub async fn slow_stmt(&self, sql: &str, ms: u64) -> Result<(), TxError> {
        let bt = bound_transaction(self.key()).expect("in a transaction");
        let _g = bt.lock().await?;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.push(format!("STMT {sql}"));
        Ok(())
    }

    /// A statement that fails with a serialization failure (SQLSTATE 40001), logged as
    /// `FAIL {sql}`.
    ///
    /// # Errors
    ///
    /// Always: the retryable database error.
    ///
    /// # Panics
    ///
    /// Outside a transaction of this manager.
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

    /// Appends `entry` to the log (for the test's own markers).
    pub fn push(&self, entry: impl Into<String>) {
        push(&self.log, entry);
    }

    /// The log so far, emptying it.
    #[must_use]
    pub fn take(&self) -> Vec<String> {
        take(&self.log)
    }
}
