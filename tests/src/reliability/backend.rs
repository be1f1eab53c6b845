//! What a scenario needs from a database: the `Backend` and `Server` traits, and waiting for the pool and the server to settle.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tx_sqlx::TransactionTemplate;
use tx_sqlx::manager::TransactionManager;

/// A boxed `Send` future.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a scenario needs from a database: its transaction manager, a `(id, tag)` table, and
/// reads from a fresh connection.
pub trait Backend: Clone + Send + Sync + 'static {
    /// The `TxPool` type.
    type Pool: TransactionManager + Clone + Send + Sync + 'static;

    /// "PostgreSQL", "MariaDB", "SQLite".
    fn name(&self) -> &'static str;

    /// The transaction manager (the `TxPool`).
    fn manager(&self) -> &Self::Pool;

    /// A template on this backend's manager.
    fn template(&self) -> TransactionTemplate {
        TransactionTemplate::new(self.manager().clone())
    }

    /// `(size, idle)` of the sqlx pool.
    fn pool_counts(&self) -> (u32, usize);

    /// Closes the sqlx pool.
    fn close(&self) -> BoxFut<'_, ()>;

    /// Creates a fresh `(id auto-increment, tag text)` table, from a fresh connection.
    fn create_table<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, String>;

    /// Drops a table, from a fresh connection.
    fn drop_table<'a>(&'a self, table: &'a str) -> BoxFut<'a, ()>;

    /// Deletes every row, from a fresh connection.
    fn clear<'a>(&'a self, table: &'a str) -> BoxFut<'a, ()>;

    /// `INSERT INTO table (tag) VALUES (tag)` through the transaction-aware `&TxPool`.
    fn insert<'a>(&'a self, table: &'a str, tag: &'a str) -> BoxFut<'a, Result<(), sqlx::Error>>;

    /// The table's tags in id order, read from a fresh connection.
    fn tags<'a>(&'a self, table: &'a str) -> BoxFut<'a, Vec<String>>;
}

/// A server database: session probes, faults, and the bank's statements.
pub trait Server: Backend {
    /// Sessions of this pool inside a transaction, as the server sees them.
    fn open_transactions(&self) -> BoxFut<'_, i64>;

    /// Takes every connection of the pool at once and checks each is outside any transaction
    /// with the session settings of a brand-new connection; `Err` says what is wrong.
    fn check_clean(&self) -> BoxFut<'_, Result<(), String>>;

    /// The server session id of the connection the current transaction runs on.
    fn session_id(&self) -> BoxFut<'_, Result<i64, sqlx::Error>>;

    /// Whether session `id` still exists on the server.
    fn session_alive(&self, id: i64) -> BoxFut<'_, bool>;

    /// Kills session `id` from a fresh connection (`pg_terminate_backend` / `KILL`).
    fn kill(&self, id: i64) -> BoxFut<'_, ()>;

    /// A statement sleeping `secs` on the server, through `&TxPool`.
    fn sleep(&self, secs: f64) -> BoxFut<'_, Result<(), sqlx::Error>>;

    /// Creates `accounts(id, balance)` with `n` accounts of `initial` each and
    /// `ledger(id, transfer_id, account, delta)` holding their deposits (transfer 0).
    fn create_bank(&self, n: i64, initial: i64) -> BoxFut<'_, (String, String)>;

    /// `balance += delta` for account `id`, through `&TxPool`; returns the new balance.
    fn add<'a>(
        &'a self,
        accounts: &'a str,
        id: i64,
        delta: i64,
    ) -> BoxFut<'a, Result<i64, sqlx::Error>>;

    /// Appends a ledger line, through `&TxPool`.
    fn ledger<'a>(
        &'a self,
        ledger: &'a str,
        transfer: i64,
        account: i64,
        delta: i64,
    ) -> BoxFut<'a, Result<(), sqlx::Error>>;

    /// Every `(id, balance)`, from a fresh connection.
    fn balances<'a>(&'a self, accounts: &'a str) -> BoxFut<'a, Vec<(i64, i64)>>;

    /// Every `(transfer_id, account, delta)`, from a fresh connection.
    fn ledger_rows<'a>(&'a self, ledger: &'a str) -> BoxFut<'a, Vec<(i64, i64, i64)>>;
}

/// Waits until `cond` holds, up to `limit`; returns whether it did.
pub async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits (up to 5 s) until every connection of the pool is back and idle; `(size, idle)`.
pub async fn settle<B: Backend>(b: &B) -> (u32, usize) {
    eventually(Duration::from_secs(5), || async {
        let (size, idle) = b.pool_counts();
        size as usize == idle
    })
    .await;
    b.pool_counts()
}

/// Waits (up to 5 s) until the server shows no open transaction of this pool; the count left.
pub async fn no_open_transactions<B: Server>(b: &B) -> i64 {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let left = b.open_transactions().await;
        if left == 0 || Instant::now() > until {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Takes every connection of `pool` at once (so none is skipped) and checks that `probe`
/// reads the same session state on each as `expected`, the state of a brand-new connection;
/// `fields` names what the state is made of, for the message.
pub(crate) async fn every_connection_clean<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    expected: &str,
    fields: &str,
    probe: for<'c> fn(&'c mut DB::Connection) -> BoxFut<'c, Result<String, sqlx::Error>>,
) -> Result<(), String> {
    let mut conns = Vec::new();
    for _ in 0..pool.size() {
        match tokio::time::timeout(Duration::from_secs(5), pool.acquire()).await {
            Ok(Ok(c)) => conns.push(c),
            Ok(Err(e)) => return Err(format!("acquiring a pooled connection failed: {e}")),
            Err(_) => return Err("a pooled connection could not be acquired in 5 s".into()),
        }
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        let state = probe(&mut **conn)
            .await
            .map_err(|e| format!("pooled connection {i}: probe failed: {e}"))?;
        if state != expected {
            return Err(format!(
                "pooled connection {i} is not clean: {fields} = {state}, expected {expected}"
            ));
        }
    }
    Ok(())
}

/// The [`Backend`] methods, the same on every database but for its name `$name`, the
/// `$create` statement of the `(id, tag)` table (`{table}` is replaced by its name) and the
/// `$placeholder` of its first bind parameter. Reads and table changes go through a fresh
/// connection (`self.fresh_conn()`, an inherent method of each backend), inserts through the
/// transaction-aware `&TxPool` (`self.db`). Expands inside an `impl Backend`.
macro_rules! backend_methods {
    ($name:literal, $create:literal, $placeholder:literal) => {
        fn name(&self) -> &'static str {
            $name
        }

        fn manager(&self) -> &Self::Pool {
            &self.db
        }

        fn pool_counts(&self) -> (u32, usize) {
            (self.db.pool().size(), self.db.pool().num_idle())
        }

        fn close(&self) -> $crate::reliability::BoxFut<'_, ()> {
            Box::pin(self.db.pool().close())
        }

        fn create_table<'a>(&'a self, prefix: &'a str) -> $crate::reliability::BoxFut<'a, String> {
            Box::pin(async move {
                let table = $crate::unique_table(prefix);
                sqlx::raw_sql(sqlx::AssertSqlSafe($create.replace("{table}", &table)))
                    .execute(&mut self.fresh_conn().await)
                    .await
                    .expect("create table");
                table
            })
        }

        fn drop_table<'a>(&'a self, table: &'a str) -> $crate::reliability::BoxFut<'a, ()> {
            Box::pin(async move {
                let sql = format!("DROP TABLE IF EXISTS {table}");
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut self.fresh_conn().await)
                    .await;
            })
        }

        fn clear<'a>(&'a self, table: &'a str) -> $crate::reliability::BoxFut<'a, ()> {
            Box::pin(async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
                    .execute(&mut self.fresh_conn().await)
                    .await
                    .expect("clear table");
            })
        }

        fn insert<'a>(
            &'a self,
            table: &'a str,
            tag: &'a str,
        ) -> $crate::reliability::BoxFut<'a, Result<(), sqlx::Error>> {
            Box::pin(async move {
                let sql = format!(
                    concat!("INSERT INTO {} (tag) VALUES (", $placeholder, ")"),
                    table
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(tag)
                    .execute(&self.db)
                    .await
                    .map(|_| ())
            })
        }

        fn tags<'a>(&'a self, table: &'a str) -> $crate::reliability::BoxFut<'a, Vec<String>> {
            Box::pin(async move {
                let sql = format!("SELECT tag FROM {table} ORDER BY id");
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&mut self.fresh_conn().await)
                    .await
                    .expect("read table")
            })
        }
    };
}
pub(crate) use backend_methods;

/// The [`Server`] reads of the bank's tables, the same SQL on every server, from a fresh
/// connection (`self.fresh_conn()`). Expands inside an `impl Server`.
macro_rules! fresh_connection_bank_reads {
    () => {
        fn balances<'a>(
            &'a self,
            accounts: &'a str,
        ) -> $crate::reliability::BoxFut<'a, Vec<(i64, i64)>> {
            Box::pin(async move {
                let sql = format!("SELECT id, balance FROM {accounts} ORDER BY id");
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&mut self.fresh_conn().await)
                    .await
                    .expect("read balances")
            })
        }

        fn ledger_rows<'a>(
            &'a self,
            ledger: &'a str,
        ) -> $crate::reliability::BoxFut<'a, Vec<(i64, i64, i64)>> {
            Box::pin(async move {
                let sql = format!("SELECT transfer_id, account, delta FROM {ledger} ORDER BY id");
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&mut self.fresh_conn().await)
                    .await
                    .expect("read ledger")
            })
        }
    };
}
pub(crate) use fresh_connection_bank_reads;
