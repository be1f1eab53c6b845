//! What an engine knows: its pool, table and tuning, the registered sagas, the statements
//! built from them, and the wake-up for this process's idle workers. The engine's public
//! calls and its workers both read it.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tx_sqlx::{TxError, TxPool};

use crate::backend::SagaBackend;
use crate::definition::ErasedSaga;
use crate::sql::Sql;

/// The configuration and registered sagas of one engine, shared by its clones and workers.
pub(crate) struct Registry<DB: SagaBackend> {
    pub db: TxPool<DB>,
    pub table: String,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub concurrency: usize,
    pub sagas: BTreeMap<Arc<str>, Arc<dyn ErasedSaga>>,
    /// Misconfigurations found by the builder, reported by every async call.
    pub problems: Vec<String>,
    sql: OnceLock<Arc<Sql>>,
    /// Wakes this process's idle workers when a saga is started here.
    pub wake: Arc<Notify>,
}

impl<DB: SagaBackend> Clone for Registry<DB> {
    fn clone(&self) -> Self {
        Registry {
            db: self.db.clone(),
            table: self.table.clone(),
            lease: self.lease,
            poll_interval: self.poll_interval,
            concurrency: self.concurrency,
            sagas: self.sagas.clone(),
            problems: self.problems.clone(),
            // Rebuilt from the changed configuration.
            sql: OnceLock::new(),
            wake: self.wake.clone(),
        }
    }
}

/// A misuse error whose message says what to do.
pub(crate) fn invalid(message: String) -> TxError {
    TxError::InvalidArgument {
        message: message.into(),
    }
}

impl<DB: SagaBackend> Registry<DB> {
    /// The defaults: table `tx_saga`, a 60 s lease, polling every 500 ms, 8 sagas at once.
    pub(crate) fn new(db: TxPool<DB>) -> Self {
        Registry {
            db,
            table: "tx_saga".to_owned(),
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            concurrency: 8,
            sagas: BTreeMap::new(),
            problems: Vec::new(),
            sql: OnceLock::new(),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Drops the statements built so far: the configuration is about to change.
    pub(crate) fn forget_statements(&mut self) {
        self.sql = OnceLock::new();
    }

    /// The statements, after checking the configuration.
    pub(crate) fn sql(&self) -> Result<Arc<Sql>, TxError> {
        let inner = self;
        if !inner.problems.is_empty() {
            return Err(invalid(format!(
                "the saga engine is misconfigured: {}",
                inner.problems.join("; ")
            )));
        }
        if inner.lease < Duration::from_millis(100) {
            return Err(invalid(format!(
                "the saga engine's lease of {:?} is too short: it must cover a claim and a step's \
                 bookkeeping (at least 100 ms; the default is 60 s)",
                inner.lease
            )));
        }
        Ok(inner
            .sql
            .get_or_init(|| {
                let names: Vec<&str> = inner.sagas.keys().map(|k| &**k).collect();
                Arc::new(Sql::new(&DB::DIALECT, &inner.table, &names))
            })
            .clone())
    }

    /// The saga registered as `name`.
    pub(crate) fn saga(&self, name: &str) -> Option<&Arc<dyn ErasedSaga>> {
        self.sagas.get(name)
    }
}
