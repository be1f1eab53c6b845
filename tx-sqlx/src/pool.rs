//! [`TxPool`]: a sqlx pool that is also a transaction manager, and its connection guard.

use std::any::Any;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use sqlx::Database;
use sqlx::pool::PoolConnection;
use tx_core::connection::{LockPurpose, TransactionGuard};
use tx_core::manager::{BeginOptions, ManagerKey};
use tx_core::{Operation, TxError};

use crate::backend::ServerFacts;
use crate::capacity::{Admission, Capacity};
use crate::error::{acquire_error, db_error};
use crate::physical::SqlxTransaction;

/// A sqlx connection pool that is also the transaction manager for it.
///
/// * As a **transaction manager** it is what you give to
///   [`TransactionTemplate::new`](crate::TransactionTemplate::new),
///   [`set_default_manager`](crate::set_default_manager) or `#[transactional(manager = ..)]`:
///   it begins, commits and rolls back physical transactions on its pool's connections.
/// * As an **executor** (`&TxPool`) it runs each query on the transaction bound to this pool
///   in the current task, or on a pooled connection in autocommit when there is none, so
///   queries are written exactly as with a plain `&Pool`:
///   `sqlx::query("..").execute(&db).await?`.
///
/// Cloning is cheap (an `Arc`), and every clone, like every `TxPool` made from the same sqlx
/// pool, is the same manager: a scope on one joins a transaction begun on another.
///
/// Inside a transaction, statements of one task on the same `TxPool` take turns on the
/// transaction's single connection (concurrent futures, e.g. `join!`, are serialized). A
/// stream (`fetch`) holds the connection until it ends or is dropped: finish it before running
/// the next statement on `&db`, as you would with `&mut *conn` in plain sqlx (a statement on
/// `&db` while the stream sits between two rows would wait for itself, so it fails at once with
/// [`TxError::WouldBlock`]).
///
/// ```no_run
/// use tx_sqlx::{PgTxPool, Propagation, TransactionTemplate, TxError};
///
/// # async fn run() -> Result<(), TxError> {
/// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
/// let db = PgTxPool::new(pool);
///
/// let id: i64 = TransactionTemplate::new(db.clone())
///     .propagation(Propagation::Required)
///     .execute(|_status| async {
///         let (id,): (i64,) = sqlx::query_as("insert into orders(total) values (10) returning id")
///             .fetch_one(&db)
///             .await?;
///         sqlx::query("insert into audit(order_id) values ($1)").bind(id).execute(&db).await?;
///         Ok::<_, TxError>(id)
///     })
///     .await?;
/// # let _ = id; Ok(()) }
/// ```
pub struct TxPool<DB: Database> {
    pub(crate) inner: Arc<Inner<DB>>,
}

pub(crate) struct Inner<DB: Database> {
    pub(crate) pool: sqlx::Pool<DB>,
    /// What the backend learned about the server (probed once, when first needed).
    pub(crate) facts: ServerFacts,
    /// The reservation for inner transactions and the starvation detection.
    pub(crate) capacity: Capacity,
}

/// The identity of a sqlx pool: the address of its shared state (the options it keeps behind
/// its `Arc`), the same for every clone and unique while the pool lives.
fn pool_identity<DB: Database>(pool: &sqlx::Pool<DB>) -> usize {
    std::ptr::from_ref(pool.options()).cast::<()>() as usize
}

/// The one `Inner` of each live pool, so that every `TxPool` made from (a clone of) one sqlx
/// pool is the same manager. Entries are weak: the `Inner` (and the pool clone in it) goes
/// away with the last `TxPool`; while it lives it keeps the pool, so its identity cannot be
/// reused by another pool.
static MANAGERS: Mutex<Vec<(usize, Weak<dyn Any + Send + Sync>)>> = Mutex::new(Vec::new());

impl<DB: Database> Inner<DB> {
    /// The shared `Inner` of `pool`, made on first use.
    fn of(pool: sqlx::Pool<DB>) -> Arc<Inner<DB>> {
        let id = pool_identity(&pool);
        let mut managers = MANAGERS.lock().unwrap_or_else(PoisonError::into_inner);
        managers.retain(|(_, inner)| inner.strong_count() > 0);
        let existing = managers
            .iter()
            .filter(|(key, _)| *key == id)
            .find_map(|(_, inner)| inner.upgrade()?.downcast::<Inner<DB>>().ok());
        if let Some(inner) = existing {
            return inner;
        }
        let inner = Arc::new(Inner {
            pool,
            facts: ServerFacts::default(),
            capacity: Capacity::default(),
        });
        let erased: Arc<dyn Any + Send + Sync> = inner.clone();
        managers.push((id, Arc::downgrade(&erased)));
        inner
    }
}

impl<DB: Database> TxPool<DB> {
    /// Wraps `pool`; the pool keeps all its own settings (size, timeouts, connect options,
    /// `before_acquire` and the other hooks: every transaction takes its connection through
    /// `Pool::acquire`, as `pool.begin()` does, so an idle connection is pinged first unless
    /// the pool was built with `test_before_acquire(false)`).
    ///
    /// Every `TxPool` made from the same sqlx pool (or a clone of it) is the same manager: a
    /// scope on one joins a transaction begun on another.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), sqlx::Error> {
    /// let pool = sqlx::SqlitePool::connect("sqlite://app.db").await?;
    /// let db = tx_sqlx::SqliteTxPool::new(pool.clone());
    /// let same = tx_sqlx::SqliteTxPool::new(pool);
    /// # let _ = (db, same); Ok(()) }
    /// ```
    #[must_use]
    pub fn new(pool: sqlx::Pool<DB>) -> Self {
        TxPool {
            inner: Inner::of(pool),
        }
    }

    /// Reserves `n` of the pool's connections for inner transactions (`RequiresNew` inside a
    /// transaction of this pool), so that they always find a connection.
    ///
    /// A `RequiresNew` scope takes a second connection while its task holds the first one (in
    /// the suspended transaction). Without a reservation, when all connections are held by
    /// tasks waiting for a second one, none can come back: the last begin to wait fails at
    /// once with [`TxError::PoolStarvation`]. With `n >= 1`, transactions of tasks that hold no
    /// connection of this pool take at most `max_connections - n` connections (more wait their
    /// turn, up to the pool's acquire timeout), so inner transactions one level deep always
    /// make progress. See the README's pool sizing section for figures.
    ///
    /// The reservation belongs to the pool: it applies to every `TxPool` on it. Set it at
    /// start-up, before transactions begin; `0` removes it.
    ///
    /// # Panics
    ///
    /// When `n` is not smaller than the pool's `max_connections` (no outer transaction could
    /// begin).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), sqlx::Error> {
    /// let pool = sqlx::postgres::PgPoolOptions::new()
    ///     .max_connections(10)
    ///     .connect("postgres://postgres@127.0.0.1/test")
    ///     .await?;
    /// // Up to 8 outer transactions at once; 2 connections kept for their RequiresNew audits.
    /// let db = tx_sqlx::PgTxPool::new(pool).reserve_for_nested(2);
    /// assert_eq!(db.reserved_for_nested(), 2);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn reserve_for_nested(self, n: u32) -> Self {
        let max = self.inner.pool.options().get_max_connections();
        self.inner.capacity.reserve(max, n);
        self
    }

    /// How many connections are reserved for inner transactions (see
    /// [`reserve_for_nested`](Self::reserve_for_nested)).
    ///
    /// ```no_run
    /// # async fn run(db: tx_sqlx::PgTxPool) {
    /// assert_eq!(db.reserved_for_nested(), 0); // none unless configured
    /// # }
    /// ```
    #[must_use]
    pub fn reserved_for_nested(&self) -> u32 {
        self.inner.capacity.reserved()
    }

    /// The underlying sqlx pool. Queries run directly on it never take part in a transaction
    /// (use `&TxPool` for that).
    ///
    /// ```no_run
    /// # async fn run(db: tx_sqlx::PgTxPool) {
    /// println!("{} connections, {} idle", db.pool().size(), db.pool().num_idle());
    /// # }
    /// ```
    #[must_use]
    pub fn pool(&self) -> &sqlx::Pool<DB> {
        &self.inner.pool
    }

    /// A connection for a new transaction, taken with `Pool::acquire` so that the pool's
    /// guarantees hold (`test_before_acquire`, `before_acquire`; lifetimes are enforced by
    /// the pool itself). There is no shortcut through `try_acquire`: it skips those checks,
    /// and sqlx does not tell whether a `before_acquire` hook is set. A task that holds connections of this pool in suspended transactions
    /// is registered as waiting while it waits, so that starvation is detected; one that holds
    /// none first passes the reservation's gate.
    pub(crate) async fn connection_for_begin(
        &self,
        options: &BeginOptions,
    ) -> Result<(PoolConnection<DB>, Admission), TxError> {
        let inner = &*self.inner;
        let held = &options.suspended_connections[..];
        let (admission, _waiting) = if held.is_empty() {
            (inner.capacity.admit(&inner.pool).await?, None)
        } else {
            let waiting = inner
                .capacity
                .wait_holding(&inner.pool, held, &options.name)?;
            (None, Some(waiting))
        };
        let conn = inner
            .pool
            .acquire()
            .await
            .map_err(|e| db_error(Operation::Begin, e))?;
        Ok((conn, admission))
    }

    /// The identity of this manager: the same for every `TxPool` on this pool.
    pub(crate) fn manager_key(&self) -> ManagerKey {
        ManagerKey::of(&self.inner)
    }

    /// A connection for connection-level work (streaming, `COPY`, `LISTEN`, advisory locks):
    /// the connection of the transaction bound to this pool in the current task (after
    /// sending its deferred `BEGIN`), or a pooled connection in autocommit when there is none.
    ///
    /// While the guard lives it has exclusive use of the transaction's connection: run
    /// statements on it (`&mut *conn`), not on `&db`, and drop it before beginning a `Nested`
    /// scope and before the transactional body returns. Those requests would wait for the
    /// guard forever, so they fail at once with [`TxError::WouldBlock`]. Statements run on the
    /// guard are not watched by the engine (retryable errors are only recognised through the
    /// error you return).
    ///
    /// # Errors
    ///
    /// In a transaction: [`TxError::Timeout`] past its deadline, or the failure of its
    /// deferred `BEGIN`. Outside one: the pool's failure to hand out a connection
    /// (`TxError::Database` with `sqlx::Error::PoolTimedOut` as its source, or
    /// [`TxError::PoolClosed`]), or [`TxError::WouldBlock`] where waiting could only end at
    /// a timeout (SQLite's write lock held by this task's suspended transaction).
    ///
    /// # Cancel safety
    ///
    /// Dropped before it returns, no connection is taken: a pooled one goes back to the
    /// pool, the transaction's stays with the transaction.
    ///
    /// ```no_run
    /// use tx_sqlx::{PgTxPool, TxError};
    ///
    /// # async fn run(db: PgTxPool) -> Result<(), TxError> {
    /// let mut conn = db.acquire().await?;
    /// let n: i64 = sqlx::query_scalar("select count(*) from orders").fetch_one(&mut *conn).await?;
    /// # let _ = n; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// * [`TxError::WouldBlock`] at once when a stream or another guard of this transaction
    ///   holds its connection; on SQLite also in a `NotSupported` scope (or an after-commit
    ///   hook) while this task's suspended writer transaction holds the database's only write
    ///   lock, where any write on the connection would wait for this task itself (read
    ///   through `&db` there instead);
    /// * [`TxError::Timeout`] past the transaction's deadline; the backend's error if the
    ///   deferred `BEGIN` fails or no connection can be acquired.
    ///
    /// # Cancel safety
    /// Dropping the future before it completes leaves the transaction usable and takes no
    /// connection.
    pub async fn acquire(&self) -> Result<TxConnection<DB>, TxError> {
        let key = self.manager_key();
        if let Some(bound) = tx_core::connection::bound_transaction(key) {
            let mut guard = bound.lock_for(LockPurpose::Connection).await?;
            let conn = SqlxTransaction::<DB>::from_guard(&mut guard)?.take_connection()?;
            return Ok(TxConnection {
                inner: ConnInner::Bound {
                    guard,
                    conn: Some(conn),
                },
            });
        }
        if single_writer::<DB>() && tx_core::connection::suspended_holds_connection(key) {
            return Err(crate::error::sqlite_would_block(
                "A connection from TxPool::acquire() outside the transaction (a NotSupported \
                 scope, or a hook after a scope completed, inside a writer transaction) hands \
                 out a connection whose first write",
            ));
        }
        let conn = self.inner.pool.acquire().await.map_err(acquire_error)?;
        Ok(TxConnection {
            inner: ConnInner::Pooled(conn),
        })
    }
}

/// Whether `DB` allows one writer per database (SQLite): a connection outside the task's own
/// writer transaction cannot write until that transaction ends.
fn single_writer<DB: Database>() -> bool {
    #[cfg(feature = "sqlite")]
    {
        DB::NAME == <sqlx::Sqlite as Database>::NAME
    }
    #[cfg(not(feature = "sqlite"))]
    {
        false
    }
}

impl<DB: Database> Clone for TxPool<DB> {
    fn clone(&self) -> Self {
        TxPool {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<DB: Database> fmt::Debug for TxPool<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxPool")
            .field("db", &DB::NAME)
            .field("pool", &self.inner.pool)
            .finish()
    }
}

impl<DB: Database> From<sqlx::Pool<DB>> for TxPool<DB> {
    fn from(pool: sqlx::Pool<DB>) -> Self {
        TxPool::new(pool)
    }
}

/// A [`TxPool`] on PostgreSQL.
///
/// ```no_run
/// # async fn run() -> Result<(), sqlx::Error> {
/// let db = tx_sqlx::PgTxPool::new(sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?);
/// # let _ = db; Ok(()) }
/// ```
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub type PgTxPool = TxPool<sqlx::Postgres>;

/// A [`TxPool`] on MySQL or MariaDB.
///
/// ```no_run
/// # async fn run() -> Result<(), sqlx::Error> {
/// let db = tx_sqlx::MySqlTxPool::new(sqlx::MySqlPool::connect("mysql://root@127.0.0.1/test").await?);
/// # let _ = db; Ok(()) }
/// ```
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub type MySqlTxPool = TxPool<sqlx::MySql>;

/// A [`TxPool`] on SQLite.
///
/// ```no_run
/// # async fn run() -> Result<(), sqlx::Error> {
/// let db = tx_sqlx::SqliteTxPool::new(sqlx::SqlitePool::connect("sqlite://app.db").await?);
/// # let _ = db; Ok(()) }
/// ```
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub type SqliteTxPool = TxPool<sqlx::Sqlite>;

/// A connection handed out by [`TxPool::acquire`]: the bound transaction's connection, or a
/// pooled one in autocommit. Derefs (mutably) to the driver's connection, so `&mut *conn` is
/// a sqlx executor.
///
/// Dropping it gives the transaction's connection back to the transaction (or the pooled
/// connection back to the pool).
///
/// ```no_run
/// # async fn run(db: tx_sqlx::PgTxPool) -> Result<(), tx_sqlx::TxError> {
/// let mut conn = db.acquire().await?;
/// sqlx::query("select pg_advisory_xact_lock(42)").execute(&mut *conn).await?;
/// # Ok(()) }
/// ```
pub struct TxConnection<DB: Database> {
    inner: ConnInner<DB>,
}

enum ConnInner<DB: Database> {
    Bound {
        guard: TransactionGuard,
        conn: Option<PoolConnection<DB>>,
    },
    Pooled(PoolConnection<DB>),
}

impl<DB: Database> TxConnection<DB> {
    /// True when this is the connection of a transaction bound to the current task.
    ///
    /// ```no_run
    /// # async fn run(db: tx_sqlx::PgTxPool) -> Result<(), tx_sqlx::TxError> {
    /// let conn = db.acquire().await?;
    /// assert!(!conn.in_transaction()); // outside every transactional scope
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn in_transaction(&self) -> bool {
        matches!(self.inner, ConnInner::Bound { .. })
    }

    fn conn(&self) -> &PoolConnection<DB> {
        match &self.inner {
            ConnInner::Bound { conn, .. } => conn.as_ref().expect("connection present until drop"),
            ConnInner::Pooled(conn) => conn,
        }
    }

    fn conn_mut(&mut self) -> &mut PoolConnection<DB> {
        match &mut self.inner {
            ConnInner::Bound { conn, .. } => conn.as_mut().expect("connection present until drop"),
            ConnInner::Pooled(conn) => conn,
        }
    }
}

impl<DB: Database> Deref for TxConnection<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        self.conn()
    }
}

impl<DB: Database> DerefMut for TxConnection<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        self.conn_mut()
    }
}

impl<DB: Database> AsMut<DB::Connection> for TxConnection<DB> {
    fn as_mut(&mut self) -> &mut DB::Connection {
        self.conn_mut()
    }
}

impl<DB: Database> fmt::Debug for TxConnection<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxConnection")
            .field("in_transaction", &self.in_transaction())
            .finish()
    }
}

impl<DB: Database> Drop for TxConnection<DB> {
    fn drop(&mut self) {
        if let ConnInner::Bound { guard, conn } = &mut self.inner
            && let Some(conn) = conn.take()
        {
            match SqlxTransaction::<DB>::from_guard(guard) {
                Ok(tx) => tx.put_connection(conn),
                // Unreachable: the guard was downcast in `acquire`.
                Err(_) => drop(conn),
            }
        }
    }
}
