//! [`SagaEngine`]: registered sagas on one database; starting, inspecting and resuming them.

use std::any::TypeId;
use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tx_sqlx::{TxError, TxPool};

use crate::backend::SagaBackend;
use crate::backend::private::{Col, Value};
use crate::definition::{ErasedSaga, Saga};
use crate::id::SagaId;
use crate::observe;
use crate::registry::{Registry, invalid};
use crate::sql::check_table;
use crate::status::{SagaStatus, StuckSaga};
use crate::worker::Worker;

/// The sagas of one database: registers definitions, starts instances, runs workers, and
/// answers what state each saga is in.
///
/// Cheap to clone; clones share the registry. Every process that starts sagas or runs workers
/// builds the same engine (same table, same registered sagas).
///
/// ```no_run
/// use serde::{Deserialize, Serialize};
/// use tx_saga::{Saga, SagaEngine, SagaStatus, StepContext};
/// use tx_sqlx::{SqliteTxPool, TransactionTemplate, TxError};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct Order { item: i64 }
///
/// # async fn run() -> Result<(), TxError> {
/// let db = SqliteTxPool::new(sqlx::SqlitePool::connect("sqlite://shop.db?mode=rwc").await?);
/// let engine = SagaEngine::new(db.clone()).register(
///     Saga::<Order>::named("order").step(
///         "reserve",
///         |ctx: StepContext<Order>| async move { Ok(ctx.into_state()) },
///         |ctx: StepContext<Order>| async move { Ok(ctx.into_state()) },
///     ),
/// );
/// engine.install().await?;
///
/// // The saga is recorded in the caller's transaction: it exists if and only if this commits.
/// let id = TransactionTemplate::new(db.clone())
///     .execute(|_| {
///         let engine = engine.clone();
///         async move { engine.start("order", Order { item: 7 }).await }
///     })
///     .await?;
///
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let worker = tokio::spawn({
///     let engine = engine.clone();
///     async move { engine.run(stopped).await }
/// });
/// while !engine.status(id).await?.is_final() {
///     tokio::time::sleep(std::time::Duration::from_millis(50)).await;
/// }
/// assert_eq!(engine.status(id).await?, SagaStatus::Completed);
/// let _ = stop.send(());
/// worker.await.expect("worker")?;
/// # Ok(()) }
/// ```
pub struct SagaEngine<DB: SagaBackend> {
    inner: Arc<Registry<DB>>,
}

impl<DB: SagaBackend> Clone for SagaEngine<DB> {
    fn clone(&self) -> Self {
        SagaEngine {
            inner: self.inner.clone(),
        }
    }
}

impl<DB: SagaBackend> fmt::Debug for SagaEngine<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaEngine")
            .field("db", &DB::NAME)
            .field("table", &self.inner.table)
            .field("sagas", &self.inner.sagas.keys().collect::<Vec<_>>())
            .field("lease", &self.inner.lease)
            .field("concurrency", &self.inner.concurrency)
            .finish()
    }
}

impl<DB: SagaBackend> SagaEngine<DB> {
    /// An engine keeping its sagas in `db`, in the table `tx_saga`, with a 60 s lease, workers
    /// polling every 500 ms and running up to 8 sagas at once.
    ///
    /// ```
    /// # fn f(db: tx_sqlx::PgTxPool) {
    /// let engine = tx_saga::SagaEngine::new(db);
    /// # let _ = engine; }
    /// ```
    #[must_use]
    pub fn new(db: TxPool<DB>) -> Self {
        SagaEngine {
            inner: Arc::new(Registry::new(db)),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Registry<DB>)) -> Self {
        let inner = Arc::make_mut(&mut self.inner);
        inner.forget_statements();
        f(inner);
        self
    }

    /// Keeps the sagas in table `name` instead of `tx_saga` (letters, digits and `_`).
    ///
    /// ```
    /// # fn f(db: tx_sqlx::PgTxPool) {
    /// let engine = tx_saga::SagaEngine::new(db).table("billing_sagas");
    /// # let _ = engine; }
    /// ```
    #[must_use]
    pub fn table(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.edit(|i| {
            if let Err(e) = check_table(&name) {
                i.problems.push(e);
            }
            i.table = name;
        })
    }

    /// How long a worker holds a saga it claimed without recording progress. A worker that
    /// dies loses its sagas after at most this long (or, during a step whose timeout is
    /// longer, that timeout plus a few seconds); another worker then resumes them from their
    /// last recorded step. At least 100 ms.
    ///
    /// ```
    /// # fn f(db: tx_sqlx::PgTxPool) {
    /// let engine = tx_saga::SagaEngine::new(db).lease(std::time::Duration::from_secs(10));
    /// # let _ = engine; }
    /// ```
    #[must_use]
    pub fn lease(self, lease: Duration) -> Self {
        self.edit(|i| i.lease = lease)
    }

    /// How often an idle worker looks for due sagas (sagas started through this engine in this
    /// process wake its workers at once).
    ///
    /// ```
    /// # fn f(db: tx_sqlx::PgTxPool) {
    /// let engine = tx_saga::SagaEngine::new(db).poll_interval(std::time::Duration::from_millis(100));
    /// # let _ = engine; }
    /// ```
    #[must_use]
    pub fn poll_interval(self, interval: Duration) -> Self {
        self.edit(|i| i.poll_interval = interval)
    }

    /// How many sagas one worker ([`run`](Self::run)) drives at the same time (at least 1).
    /// Each saga in flight holds a connection of the engine's pool while its step runs: keep
    /// this below the pool's size, leaving room for the claims.
    ///
    /// ```
    /// # fn f(db: tx_sqlx::PgTxPool) {
    /// let engine = tx_saga::SagaEngine::new(db).concurrency(4);
    /// # let _ = engine; }
    /// ```
    #[must_use]
    pub fn concurrency(self, sagas: usize) -> Self {
        self.edit(|i| {
            if sagas == 0 {
                i.problems
                    .push("SagaEngine::concurrency must be at least 1".to_owned());
            }
            i.concurrency = sagas.max(1);
        })
    }

    /// Registers `saga` under its name. A definition mistake (no step, two steps of one name,
    /// a zero attempt limit, a name registered twice) is reported by every later call as
    /// [`TxError::InvalidArgument`].
    ///
    /// ```
    /// use tx_saga::{Saga, SagaEngine, StepContext};
    /// # fn f(db: tx_sqlx::PgTxPool) {
    /// let engine = SagaEngine::new(db).register(Saga::<u64>::named("count").step(
    ///     "add",
    ///     |ctx: StepContext<u64>| async move { Ok(ctx.into_state() + 1) },
    ///     |ctx: StepContext<u64>| async move { Ok(ctx.into_state() - 1) },
    /// ));
    /// # let _ = engine; }
    /// ```
    #[must_use]
    pub fn register<S>(self, saga: Saga<S>) -> Self
    where
        S: Serialize + DeserializeOwned + Send + 'static,
    {
        self.edit(|i| {
            i.problems
                .extend(ErasedSaga::problems(&saga).iter().cloned());
            if saga.is_empty() {
                i.problems.push(format!(
                    "saga `{}` has no step: add one with .step(..)",
                    saga.name()
                ));
            }
            let name: Arc<str> = Arc::from(saga.name());
            if i.sagas.contains_key(&name) {
                i.problems.push(format!(
                    "two sagas are registered under the name `{name}`; saga names must be unique"
                ));
            }
            i.sagas.insert(name, Arc::new(saga));
        })
    }

    /// Creates the saga table and its index if they are absent (idempotent, also when several
    /// processes install at once). Call it outside any transaction: on MySQL/MariaDB DDL
    /// commits implicitly.
    ///
    /// # Errors
    ///
    /// [`TxError::InvalidArgument`] for a misconfigured engine; the database's error if the
    /// DDL fails.
    ///
    /// # Cancel safety
    ///
    /// Safe to cancel and call again: each statement is idempotent.
    pub async fn install(&self) -> Result<(), TxError> {
        let sql = self.inner.sql()?;
        let mut attempt = 0;
        loop {
            let mut result = Ok(());
            for stmt in &sql.create {
                result = DB::saga_execute(&self.inner.db, stmt.clone(), Vec::new())
                    .await
                    .map(|_| ());
                if result.is_err() {
                    break;
                }
            }
            match result {
                // Two processes creating the table at once can collide in the catalog
                // (PostgreSQL reports a duplicate type): the statements are idempotent, so the
                // loser runs them again and finds everything there.
                Err(e) if attempt < 2 && !tx_sqlx::is_actual_transaction_active() => {
                    tracing::debug!(target: "tx_saga", error = %e, "creating the saga table failed; trying again");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// Records a new instance of the saga registered as `name`, with its initial `state`, and
    /// returns its id. The row is written through `&db`: inside a transaction on the engine's
    /// pool it joins that transaction, so the saga exists if and only if the caller commits
    /// (and no worker sees it before); outside one it is committed at once. Workers of this
    /// process are woken when it is committed.
    ///
    /// # Errors
    ///
    /// [`TxError::InvalidArgument`] when no saga is registered as `name`, when `S` is not the
    /// state type it was registered with, or when `state` does not serialize; the database's
    /// error if the insert fails.
    ///
    /// # Cancel safety
    ///
    /// Inside a transaction, cancelling leaves the transaction to decide (it is rolled back if
    /// its scope is dropped). Outside one, a cancelled call may or may not have recorded the
    /// saga.
    pub async fn start<S>(&self, name: impl AsRef<str>, state: S) -> Result<SagaId, TxError>
    where
        S: Serialize + 'static,
    {
        let name = name.as_ref();
        let sql = self.inner.sql()?;
        let Some(saga) = self.inner.sagas.get(name) else {
            let known: Vec<&str> = self.inner.sagas.keys().map(|k| &**k).collect();
            return Err(invalid(format!(
                "no saga named `{name}` is registered with this engine (registered: {}); \
                 register it with SagaEngine::register before starting it",
                known.join(", ")
            )));
        };
        let (expected, expected_name) = saga.state_type();
        if expected != TypeId::of::<S>() {
            return Err(invalid(format!(
                "saga `{name}` was registered with state type {expected_name}, but was started \
                 with {}",
                std::any::type_name::<S>()
            )));
        }
        let json = serde_json::to_string(&state).map_err(|e| {
            invalid(format!(
                "the initial state of saga `{name}` does not serialize as JSON: {e}"
            ))
        })?;
        let id = SagaId::random();
        DB::saga_execute(
            &self.inner.db,
            sql.insert.clone(),
            vec![
                Value::Text(id.to_string()),
                Value::Text(name.to_owned()),
                Value::Text(json),
            ],
        )
        .await?;
        let wake = self.inner.wake.clone();
        let saga_name: Arc<str> = saga.name().clone();
        let committed = async move {
            observe::started(&saga_name);
            wake.notify_waiters();
        };
        match tx_sqlx::after_commit(committed) {
            Ok(()) => {}
            // Autocommit: it is there already.
            Err(TxError::NoTransaction) => {
                observe::started(saga.name());
                self.inner.wake.notify_waiters();
            }
            Err(e) => return Err(e),
        }
        tracing::debug!(target: "tx_saga", saga_id = %id, saga = name, "saga started");
        Ok(id)
    }

    /// Runs a worker until `shutdown` completes: it claims due sagas (up to
    /// [`concurrency`](Self::concurrency) at a time, each under a [lease](Self::lease)) and
    /// drives each step by step, forward and, after a failure, through the compensations.
    /// Any number of workers, in this process or others, may run on one database: a saga's
    /// steps run on one worker at a time. A worker claims only sagas whose names are
    /// registered with its engine (a saga no running worker knows waits, `Running`, until one
    /// does).
    ///
    /// When `shutdown` completes (its output is ignored: a `oneshot::Receiver`, a cancellation
    /// token's `cancelled()` or `tokio::signal::ctrl_c()` all do), the worker claims nothing more, lets the step each saga is
    /// in finish, hands those sagas back (they are due again at once, for any worker) and
    /// returns. Database failures while claiming are logged and retried at the next poll; they
    /// do not end the worker.
    ///
    /// # Errors
    ///
    /// [`TxError::InvalidArgument`] at once for a misconfigured engine or one with no saga
    /// registered.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the steps in flight: their transactions are rolled back and
    /// their sagas are resumed by a worker once their leases expire. Prefer `shutdown`.
    pub async fn run<F: Future>(&self, shutdown: F) -> Result<(), TxError> {
        let sql = self.inner.sql()?;
        if self.inner.sagas.is_empty() {
            return Err(invalid(
                "SagaEngine::run: no saga is registered, so this worker could run nothing; \
                 register sagas before running"
                    .to_owned(),
            ));
        }
        Worker::new(self.inner.clone(), sql)
            .run(async move {
                shutdown.await;
            })
            .await
    }

    /// The status of saga `id`.
    ///
    /// # Errors
    ///
    /// [`TxError::InvalidArgument`] when there is no saga `id` (it was never started, or its
    /// starting transaction rolled back); the database's error if the read fails.
    ///
    /// # Cancel safety
    ///
    /// Safe to cancel: it only reads.
    pub async fn status(&self, id: impl Borrow<SagaId>) -> Result<SagaStatus, TxError> {
        let id = *id.borrow();
        let sql = self.inner.sql()?;
        let mut rows = DB::saga_fetch(
            &self.inner.db,
            sql.status.clone(),
            vec![Value::Text(id.to_string())],
            &[Col::Text, Col::Text],
        )
        .await?;
        let Some(mut row) = rows.pop() else {
            return Err(invalid(format!(
                "there is no saga {id} in table `{}`: it was never started, or the transaction \
                 that started it rolled back",
                self.inner.table
            )));
        };
        let status = row[0].text().unwrap_or_default();
        SagaStatus::from_row(&status, row[1].text())
            .ok_or_else(|| invalid(format!("saga {id} has an unknown status {status:?}")))
    }

    /// The sagas that are [`Stuck`](SagaStatus::Stuck) and have been for at least
    /// `older_than`, oldest first: the ones that need a person.
    ///
    /// # Errors
    ///
    /// [`TxError::InvalidArgument`] for a misconfigured engine; the database's error if the
    /// read fails.
    ///
    /// # Cancel safety
    ///
    /// Safe to cancel: it only reads.
    pub async fn stuck(&self, older_than: Duration) -> Result<Vec<StuckSaga>, TxError> {
        let sql = self.inner.sql()?;
        let ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX / 2);
        let rows = DB::saga_fetch(
            &self.inner.db,
            sql.stuck.clone(),
            vec![Value::I64(ms)],
            &[
                Col::Text,
                Col::Text,
                Col::I64,
                Col::I64,
                Col::I64,
                Col::Text,
                Col::I64,
            ],
        )
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for mut row in rows {
            let id_text = row[0].text().unwrap_or_default();
            let id: SagaId = id_text.parse()?;
            let name = row[1].text().unwrap_or_default();
            let step = row[2].i64();
            let compensating = row[3].i64() == 1;
            let index = if compensating { step - 1 } else { step };
            let step_name = self
                .inner
                .sagas
                .get(name.as_str())
                .filter(|s| index >= 0 && (index as usize) < s.len())
                .map(|s| s.step_name(index as usize).to_string())
                .unwrap_or_else(|| format!("#{index}"));
            out.push(StuckSaga {
                id,
                name,
                step: step_name,
                compensating,
                attempts: u32::try_from(row[4].i64()).unwrap_or(u32::MAX),
                error: row[5].text().unwrap_or_default(),
                stuck_for: Duration::from_millis(u64::try_from(row[6].i64()).unwrap_or(0)),
            });
        }
        Ok(out)
    }

    /// Puts a [`Stuck`](SagaStatus::Stuck) saga back to work once its cause is fixed: it goes
    /// on where it stopped (the same compensation, or the same forward step) with a fresh
    /// attempt budget, on the next worker that polls.
    ///
    /// # Errors
    ///
    /// [`TxError::InvalidArgument`] when saga `id` does not exist or is not stuck (the message
    /// says its status); the database's error if the update fails.
    ///
    /// # Cancel safety
    ///
    /// Safe to cancel: the single update either happened or did not; calling again on a saga
    /// that was resumed reports that it is no longer stuck.
    pub async fn resume(&self, id: impl Borrow<SagaId>) -> Result<(), TxError> {
        let id = *id.borrow();
        let sql = self.inner.sql()?;
        let changed = DB::saga_execute(
            &self.inner.db,
            sql.resume.clone(),
            vec![Value::Text(id.to_string())],
        )
        .await?;
        if changed == 1 {
            tracing::info!(target: "tx_saga", saga_id = %id, "stuck saga resumed");
            self.inner.wake.notify_waiters();
            return Ok(());
        }
        let status = self.status(id).await?;
        Err(invalid(format!(
            "saga {id} is not stuck (it is {status}); only a stuck saga can be resumed"
        )))
    }
}
