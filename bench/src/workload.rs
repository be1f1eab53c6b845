//! The place-order workload (`BENCHMARKS.md`, "The workload"), written once and instantiated
//! per backend by [`place_order_workload!`](crate::place_order_workload): a hand-written sqlx
//! peer ([`Peer`] `Hand`) and a tx peer (`Shop`), which send the same statements in the same
//! transactions.

use std::future::Future;

use tx_sqlx::TxError;

/// Rows in `products` and in `users`.
pub const ROWS: i32 = 1000;

/// Why a unit of work failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An `UPDATE` found no row (stock or balance exhausted).
    #[error("no stock / no balance")]
    NoRow,
    /// A statement failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The transaction engine failed.
    #[error(transparent)]
    Tx(#[from] TxError),
}

/// What one unit of work does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Variant {
    /// The order: three statements, an audit in its own transaction, an after-commit counter.
    PlaceOrder,
    /// The same, with the charge in a savepoint.
    Nested,
    /// A transaction whose body runs no statement.
    Empty,
    /// For tx, each of the three statements in a `Required` method joining the outer
    /// transaction; hand-written sqlx runs `PlaceOrder`.
    Joined,
}

impl Variant {
    /// Every variant, in the order the bench runs them by default.
    pub const ALL: [Variant; 4] = [
        Variant::PlaceOrder,
        Variant::Nested,
        Variant::Empty,
        Variant::Joined,
    ];

    /// The variant's name on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            Variant::PlaceOrder => "place_order",
            Variant::Nested => "nested",
            Variant::Empty => "empty",
            Variant::Joined => "joined",
        }
    }

    /// The variant called `name`.
    pub fn parse(name: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// A random user and product.
pub fn pick() -> (i32, i32) {
    (fastrand::i32(1..=ROWS), fastrand::i32(1..=ROWS))
}

/// One implementation of the workload on one database.
pub trait Peer: Clone + Send + Sync + 'static {
    /// Runs one unit of work.
    fn unit(&self, variant: Variant) -> impl Future<Output = Result<(), BenchError>> + Send;
    /// Rows in `orders` and in `audit`.
    fn rows(&self) -> impl Future<Output = (u64, u64)> + Send;
    /// Units whose after-commit step ran.
    fn committed(&self) -> u64;
}

/// The statements of a unit, in one backend's parameter syntax.
#[derive(Clone, Copy)]
pub struct Statements {
    /// Step 1: take one from the stock of the product given as the first parameter.
    pub deduct: &'static str,
    /// Step 2: create the order of the user (first parameter) for the product (second),
    /// returning its id.
    pub create: &'static str,
    /// Step 3: charge the user given as the first parameter.
    pub charge: &'static str,
    /// Step 4: the audit row (the first parameter is its note).
    pub audit: &'static str,
    /// The read-only report: `SELECT count(*) FROM audit`.
    pub audited: &'static str,
}

/// The statements written once, spelled with parameter markers `$p1` and `$p2`.
macro_rules! statements {
    ($p1:literal, $p2:literal) => {
        Statements {
            deduct: concat!(
                "UPDATE products SET stock = stock - 1 WHERE id = ",
                $p1,
                " AND stock >= 1"
            ),
            create: concat!(
                "INSERT INTO orders (user_id, product_id, qty) VALUES (",
                $p1,
                ", ",
                $p2,
                ", 1) ",
                "RETURNING id"
            ),
            charge: concat!(
                "UPDATE users SET balance = balance - 100 WHERE id = ",
                $p1,
                " AND balance >= 100"
            ),
            audit: concat!("INSERT INTO audit (note) VALUES (", $p1, ")"),
            audited: "SELECT count(*) FROM audit",
        }
    };
}

impl Statements {
    /// With numbered parameters (`$1`, `$2`): PostgreSQL and SQLite.
    pub const NUMBERED: Statements = statements!("$1", "$2");
    /// With `?` parameters: MySQL/MariaDB (`INSERT .. RETURNING` is MariaDB's, from 10.5).
    pub const QUESTION_MARKS: Statements = statements!("?", "?");
}

/// The `CREATE TABLE` statements of `products`, `users`, `orders` and `audit`, written once:
/// `$int` and `$big` are a backend's 32- and 64-bit integer types, `$key` its auto-numbered
/// primary key, `$text` its text type.
macro_rules! schema {
    ($int:literal, $big:literal, $key:literal, $text:literal) => {
        [
            concat!(
                "CREATE TABLE products (id ",
                $int,
                " PRIMARY KEY, stock ",
                $big,
                " NOT NULL CHECK (stock >= 0))"
            ),
            concat!(
                "CREATE TABLE users (id ",
                $int,
                " PRIMARY KEY, balance ",
                $big,
                " NOT NULL CHECK (balance >= 0))"
            ),
            concat!(
                "CREATE TABLE orders (id ",
                $key,
                ", user_id ",
                $int,
                " NOT NULL, product_id ",
                $int,
                " NOT NULL, qty ",
                $int,
                " NOT NULL)"
            ),
            concat!(
                "CREATE TABLE audit (id ",
                $key,
                ", note ",
                $text,
                " NOT NULL)"
            ),
        ]
    };
}
pub(crate) use schema;

/// How many transactions may write at once on a backend.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Writers {
    /// Any number (row locks): the audit's own transaction runs while the order's is open, and
    /// hand-written sqlx begins with sqlx's own `BEGIN`.
    Many,
    /// One at a time (SQLite's database lock). The audit's transaction runs right after the
    /// order's commits: tx refuses a `RequiresNew` writer inside a writer transaction, and
    /// hand-written sqlx would wait for the write lock its own outer transaction holds.
    /// Hand-written sqlx begins with `BEGIN IMMEDIATE`, as tx does for writers: a deferred
    /// writer fails with `SQLITE_BUSY` when another writer committed since its first read.
    One,
}

/// The SQL a backend runs: the four statements of a unit, the schema and its seed data.
pub struct Dialect {
    /// The unit's statements.
    pub statements: Statements,
    /// `CREATE TABLE` statements for `products`, `users`, `orders`, `audit`.
    pub schema: [&'static str; 4],
    /// Whether writers queue for one lock.
    pub writers: Writers,
}

impl Dialect {
    /// The dialect of a backend with these statements, tables and writers.
    pub const fn new(statements: Statements, schema: [&'static str; 4], writers: Writers) -> Self {
        Dialect {
            statements,
            schema,
            writers,
        }
    }

    /// The statement hand-written sqlx begins its transactions with (`None`: sqlx's own
    /// `BEGIN`); tx picks its own per backend.
    pub const fn hand_begin(&self) -> Option<&'static str> {
        match self.writers {
            Writers::Many => None,
            Writers::One => Some("BEGIN IMMEDIATE"),
        }
    }

    /// Whether the audit's own transaction runs while the order's is open.
    pub const fn audit_inside(&self) -> bool {
        matches!(self.writers, Writers::Many)
    }

    /// `prelude`, then the statements that create the tables and fill `products` and
    /// `users` (a `VALUES` list every backend accepts).
    pub fn setup_sql(&self, prelude: &str) -> String {
        let rows = |value: u64| {
            (1..=ROWS)
                .map(|i| format!("({i}, {value})"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut sql = format!("{prelude}\n");
        for table in self.schema {
            sql.push_str(table);
            sql.push_str(";\n");
        }
        sql.push_str(&format!(
            "INSERT INTO products (id, stock) VALUES {};\nINSERT INTO users (id, balance) VALUES {};",
            rows(1_000_000_000_000),
            rows(1_000_000_000_000_000)
        ));
        sql
    }
}

/// Opens a connection with `options` and runs `sql` (several statements) on it.
pub async fn run_script<C>(options: &C::Options, sql: String) -> C
where
    C: sqlx::Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
{
    let mut conn = C::connect_with(options).await.expect("database reachable");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("schema");
    conn
}

/// Defines, in the current module, `Hand` (hand-written sqlx) and `Shop` (tx) for one
/// backend: `$pool` is the sqlx pool type, `$tx_pool` tx's pool type, `$dialect` a
/// [`Dialect`](crate::workload::Dialect) constant.
#[macro_export]
macro_rules! place_order_workload {
    ($pool:ty, $tx_pool:ty, $dialect:expr) => {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};

        use sqlx::{Connection as _, Row as _};
        use tx_sqlx::transactional;

        use $crate::workload::{BenchError, Peer, Variant, pick};

        const SQL: $crate::workload::Statements = $dialect.statements;
        const HAND_BEGIN: Option<&str> = $dialect.hand_begin();
        const AUDIT_INSIDE: bool = $dialect.audit_inside();

        type Db = <$pool as $crate::workload::PoolDb>::Db;

        // The unit's statements, shared by both peers (on a transaction's connection, or on
        // tx's pool, which runs them in the current transaction).

        /// Runs the `UPDATE` `sql` on row `id`, which must change one row.
        async fn update_one<'e>(
            e: impl sqlx::Executor<'e, Database = Db>,
            sql: &'static str,
            id: i32,
        ) -> Result<(), BenchError> {
            let n = sqlx::query(sql).bind(id).execute(e).await?.rows_affected();
            if n == 1 {
                Ok(())
            } else {
                Err(BenchError::NoRow)
            }
        }

        async fn create<'e>(
            e: impl sqlx::Executor<'e, Database = Db>,
            u: i32,
            p: i32,
        ) -> Result<i64, BenchError> {
            Ok(sqlx::query(SQL.create)
                .bind(u)
                .bind(p)
                .fetch_one(e)
                .await?
                .get(0))
        }

        async fn audit_row<'e>(
            e: impl sqlx::Executor<'e, Database = Db>,
            id: i64,
        ) -> Result<(), BenchError> {
            sqlx::query(SQL.audit)
                .bind(format!("order {id}"))
                .execute(e)
                .await?;
            Ok(())
        }

        /// Hand-written sqlx: `pool.begin()`, `Transaction::begin` for the savepoint, a second
        /// `pool.begin()` for the audit, the counter bumped after `commit()`.
        #[derive(Clone)]
        pub struct Hand {
            /// The peer's pool.
            pub pool: $pool,
            counter: Arc<AtomicU64>,
        }

        impl Hand {
            /// The peer on `pool` (its schema already created).
            pub fn new(pool: $pool) -> Hand {
                Hand {
                    pool,
                    counter: Arc::default(),
                }
            }

            async fn begin(&self) -> Result<sqlx::Transaction<'static, Db>, sqlx::Error> {
                match HAND_BEGIN {
                    Some(statement) => self.pool.begin_with(statement).await,
                    None => self.pool.begin().await,
                }
            }

            /// A short transaction: deduct stock of product `p`, commit.
            pub async fn short(&self, p: i32) -> Result<(), BenchError> {
                let mut tx = self.begin().await?;
                update_one(&mut *tx, SQL.deduct, p).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn audit(&self, id: i64) -> Result<(), BenchError> {
                let mut audit = self.begin().await?;
                audit_row(&mut *audit, id).await?;
                audit.commit().await?;
                Ok(())
            }
        }

        impl Peer for Hand {
            async fn unit(&self, variant: Variant) -> Result<(), BenchError> {
                let (u, p) = pick();
                let mut tx = self.begin().await?;
                if variant == Variant::Empty {
                    tx.commit().await?;
                    self.counter.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                update_one(&mut *tx, SQL.deduct, p).await?;
                let id = create(&mut *tx, u, p).await?;
                if variant == Variant::Nested {
                    let mut sp = tx.begin().await?;
                    update_one(&mut *sp, SQL.charge, u).await?;
                    sp.commit().await?;
                } else {
                    update_one(&mut *tx, SQL.charge, u).await?;
                }
                if AUDIT_INSIDE {
                    self.audit(id).await?;
                }
                tx.commit().await?;
                self.counter.fetch_add(1, Ordering::Relaxed);
                if !AUDIT_INSIDE {
                    self.audit(id).await?;
                }
                Ok(())
            }

            async fn rows(&self) -> (u64, u64) {
                $crate::workload::rows(&self.pool).await
            }

            fn committed(&self) -> u64 {
                self.counter.load(Ordering::Relaxed)
            }
        }

        /// tx: `#[transactional]` services with a `RequiresNew` audit, a `Nested` step and an
        /// `after_commit` hook.
        #[derive(Clone)]
        pub struct Shop {
            db: $tx_pool,
            audit: Audit,
            counter: Arc<AtomicU64>,
        }

        #[derive(Clone)]
        struct Audit {
            db: $tx_pool,
        }

        impl Audit {
            #[transactional(manager = self.db, propagation = RequiresNew)]
            async fn record(&self, id: i64) -> Result<(), BenchError> {
                audit_row(&self.db, id).await
            }
        }

        impl Shop {
            /// The peer on `pool` (its schema already created).
            pub fn new(pool: $pool) -> Shop {
                let db = <$tx_pool>::new(pool);
                Shop {
                    db: db.clone(),
                    audit: Audit { db },
                    counter: Arc::default(),
                }
            }

            /// The manager the peer's methods use.
            pub fn db(&self) -> &$tx_pool {
                &self.db
            }

            /// A transaction whose body runs no statement.
            #[transactional(manager = self.db)]
            pub async fn empty(&self) -> Result<(), BenchError> {
                Ok(())
            }

            /// A read-only, serializable report: the audit rows (what a backend sends to set
            /// a transaction's isolation and access mode).
            #[transactional(manager = self.db, isolation = Serializable, read_only)]
            pub async fn audited(&self) -> Result<i64, BenchError> {
                Ok(sqlx::query_scalar(SQL.audited).fetch_one(&self.db).await?)
            }

            /// A short transaction: deduct stock of product `p`, commit.
            #[transactional(manager = self.db)]
            pub async fn short(&self, p: i32) -> Result<(), BenchError> {
                update_one(&self.db, SQL.deduct, p).await
            }

            /// `depth` nested `Required` calls (each level boxed: async recursion), joining
            /// the caller's transaction; the innermost runs no statement.
            #[transactional(manager = self.db)]
            pub async fn join_chain(&self, depth: u32) -> Result<(), BenchError> {
                if depth > 1 {
                    Box::pin(self.join_chain(depth - 1)).await?;
                }
                Ok(())
            }

            /// [`join_chain`](Self::join_chain) without the attribute: the recursion's own
            /// cost (a box and a poll per level).
            pub async fn plain_chain(&self, depth: u32) -> Result<(), BenchError> {
                if depth > 1 {
                    Box::pin(self.plain_chain(depth - 1)).await?;
                }
                Ok(())
            }

            /// `depth` nested `Nested` calls (a savepoint each); the innermost runs
            /// [`select_one`](Self::select_one).
            #[transactional(manager = self.db, propagation = Nested)]
            pub async fn nest_chain(&self, depth: u32) -> Result<(), BenchError> {
                if depth > 1 {
                    Box::pin(self.nest_chain(depth - 1)).await?;
                } else {
                    self.select_one().await?;
                }
                Ok(())
            }

            /// `SELECT 1` in the current transaction.
            pub async fn select_one(&self) -> Result<(), BenchError> {
                sqlx::query("SELECT 1").execute(&self.db).await?;
                Ok(())
            }

            /// Runs `body` `iters` times inside one transaction and returns the time the
            /// loop took; with `touch`, the transaction first runs a statement (so it has
            /// begun on the database).
            #[transactional(manager = self.db)]
            pub async fn in_transaction<F, Fut>(
                &self,
                touch: bool,
                iters: u64,
                body: F,
            ) -> Result<std::time::Duration, BenchError>
            where
                F: Fn() -> Fut + Send + Sync,
                Fut: std::future::Future<Output = Result<(), BenchError>> + Send,
            {
                if touch {
                    self.select_one().await?;
                }
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    body().await?;
                }
                Ok(start.elapsed())
            }

            #[transactional(manager = self.db)]
            async fn place_order(&self, variant: Variant) -> Result<i64, BenchError> {
                let (u, p) = pick();
                let id = if variant == Variant::Joined {
                    self.deduct(p).await?;
                    let id = self.create(u, p).await?;
                    self.charge(u).await?;
                    id
                } else {
                    update_one(&self.db, SQL.deduct, p).await?;
                    let id = create(&self.db, u, p).await?;
                    if variant == Variant::Nested {
                        self.charge_nested(u).await?;
                    } else {
                        update_one(&self.db, SQL.charge, u).await?;
                    }
                    id
                };
                if AUDIT_INSIDE {
                    self.audit.record(id).await?;
                }
                let counter = self.counter.clone();
                tx_sqlx::after_commit(async move {
                    counter.fetch_add(1, Ordering::Relaxed);
                })?;
                Ok(id)
            }

            #[transactional(manager = self.db, propagation = Nested)]
            async fn charge_nested(&self, u: i32) -> Result<(), BenchError> {
                update_one(&self.db, SQL.charge, u).await
            }

            #[transactional(manager = self.db)]
            async fn deduct(&self, p: i32) -> Result<(), BenchError> {
                update_one(&self.db, SQL.deduct, p).await
            }

            #[transactional(manager = self.db)]
            async fn create(&self, u: i32, p: i32) -> Result<i64, BenchError> {
                create(&self.db, u, p).await
            }

            #[transactional(manager = self.db)]
            async fn charge(&self, u: i32) -> Result<(), BenchError> {
                update_one(&self.db, SQL.charge, u).await
            }
        }

        impl Peer for Shop {
            async fn unit(&self, variant: Variant) -> Result<(), BenchError> {
                if variant == Variant::Empty {
                    self.empty().await?;
                    self.counter.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                let id = self.place_order(variant).await?;
                if !AUDIT_INSIDE {
                    self.audit.record(id).await?;
                }
                Ok(())
            }

            async fn rows(&self) -> (u64, u64) {
                $crate::workload::rows(self.db.pool()).await
            }

            fn committed(&self) -> u64 {
                self.counter.load(Ordering::Relaxed)
            }
        }
    };
}

/// The database of a pool type (for the macro, which is given the pool type).
pub trait PoolDb {
    /// The database.
    type Db: sqlx::Database;
}

impl<DB: sqlx::Database> PoolDb for sqlx::Pool<DB> {
    type Db = DB;
}

/// Rows in `orders` and in `audit` of the database behind `pool`.
pub async fn rows<'p, DB>(pool: &'p sqlx::Pool<DB>) -> (u64, u64)
where
    DB: sqlx::Database,
    &'p sqlx::Pool<DB>: sqlx::Executor<'p, Database = DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let mut counts = [0u64; 2];
    for (n, table) in counts.iter_mut().zip(["orders", "audit"]) {
        let sql = sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}"));
        let c: i64 = sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await
            .expect("count rows");
        *n = c as u64;
    }
    (counts[0], counts[1])
}
