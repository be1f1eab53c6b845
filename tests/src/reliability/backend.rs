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
    fn create_bank(&self, n: i64, initial: i64) -> BoxFut<'_, Books>;

    /// Posts `entry` through `&TxPool`: its delta on its account, then its ledger line;
    /// returns the account's new balance.
    fn post<'a>(&'a self, books: &'a Books, entry: Entry) -> BoxFut<'a, Result<i64, sqlx::Error>>;

    /// Every `(id, balance)`, from a fresh connection.
    fn balances<'a>(&'a self, books: &'a Books) -> BoxFut<'a, Vec<(i64, i64)>>;

    /// Every `(transfer_id, account, delta)`, from a fresh connection.
    fn ledger_rows<'a>(&'a self, books: &'a Books) -> BoxFut<'a, Vec<(i64, i64, i64)>>;
}

/// The bank's tables: the accounts and the ledger.
#[derive(Clone, Debug)]
pub struct Books {
    /// `accounts(id, balance)`.
    pub accounts: String,
    /// `ledger(id, transfer_id, account, delta)`.
    pub ledger: String,
}

/// One ledger line: `delta` on `account`, by transfer `transfer`.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// The transfer's id (0: the initial deposits).
    pub transfer: i64,
    /// The account.
    pub account: i64,
    /// What it adds to the balance.
    pub delta: i64,
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

/// The session state `sql` (a one-row, one-text-column query) reads on `conn`.
async fn session_state<DB: sqlx::Database>(
    conn: &mut DB::Connection,
    sql: &'static str,
) -> Result<String, sqlx::Error>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'r> String: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::Row;
    sqlx::raw_sql(sql).fetch_one(conn).await?.try_get(0)
}

/// What a scenario left behind once the pool and the server settled: `Err` names the open
/// transactions and the connections not back in the pool, if any.
pub(crate) async fn nothing_left<B: Server>(b: &B) -> Result<(), String> {
    let open = no_open_transactions(b).await;
    let (size, idle) = settle(b).await;
    if open != 0 || size as usize != idle {
        return Err(format!(
            "left {open} open transaction(s), pool size {size} idle {idle}"
        ));
    }
    Ok(())
}

/// Takes every connection of `pool` at once (so none is skipped) and checks that `sql` reads
/// the same session state on each as on `fresh`, a brand-new connection; `fields` names what
/// the state is made of, for the message.
pub(crate) async fn every_connection_clean<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    fresh: &mut DB::Connection,
    sql: &'static str,
    fields: &str,
) -> Result<(), String>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'r> String: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let expected = session_state(fresh, sql)
        .await
        .expect("clean state of a fresh connection");
    let mut conns = Vec::new();
    for _ in 0..pool.size() {
        match tokio::time::timeout(Duration::from_secs(5), pool.acquire()).await {
            Ok(Ok(c)) => conns.push(c),
            Ok(Err(e)) => return Err(format!("acquiring a pooled connection failed: {e}")),
            Err(_) => return Err("a pooled connection could not be acquired in 5 s".into()),
        }
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        let state = session_state(&mut **conn, sql)
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

/// Runs the statements of `sql` on `conn`, a connection of its own (simple protocol).
pub(crate) fn script<'a, C>(mut conn: C, sql: String) -> BoxFut<'a, Result<(), sqlx::Error>>
where
    C: Send + 'a,
    for<'c> &'c mut C: sqlx::Executor<'c>,
{
    Box::pin(async move {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .map(|_| ())
    })
}

/// The [`Backend`] methods, the same on every database but for `$fresh` (a closure of the
/// backend: the future of a brand-new connection outside the pool), its name `$name`, the
/// `$create` statement of the `(id, tag)` table (`{table}` is replaced by its name; any table
/// of that name is dropped first) and the
/// `$placeholder` of its first bind parameter. Reads and table changes go through a fresh
/// connection, inserts through the transaction-aware `&TxPool` (`self.db`). Expands inside an
/// `impl Backend`.
macro_rules! backend_methods {
    ($fresh:expr, $name:literal, $create:literal, $placeholder:literal) => {
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
                let create = $create.replace("{table}", &table);
                let sql = format!("DROP TABLE IF EXISTS {table}; {create}");
                script(($fresh)(self).await, sql)
                    .await
                    .expect("create table");
                table
            })
        }

        fn drop_table<'a>(&'a self, table: &'a str) -> $crate::reliability::BoxFut<'a, ()> {
            let sql = format!("DROP TABLE IF EXISTS {table}");
            Box::pin(async move {
                let _ = script(($fresh)(self).await, sql).await;
            })
        }

        fn clear<'a>(&'a self, table: &'a str) -> $crate::reliability::BoxFut<'a, ()> {
            let sql = format!("DELETE FROM {table}");
            Box::pin(async move {
                script(($fresh)(self).await, sql)
                    .await
                    .expect("clear table")
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
                    .fetch_all(&mut ($fresh)(self).await)
                    .await
                    .expect("read table")
            })
        }
    };
}
pub(crate) use backend_methods;

/// The [`Server`] methods that are the same on every server but for their SQL, given as:
///
/// * `clean`: the session state a brand-new connection shows, one text (`(fields)` names its
///   parts, for the messages);
/// * `session`: the session id of the connection, a `$session_ty`;
/// * `alive`: how many sessions have the id of its one parameter;
/// * `sleep`: a sleep of its one parameter's seconds;
/// * `tables`: the bank's tables `{accounts}` and `{ledger}`;
/// * `add`: adds its first parameter to the balance of the account of its second, and returns
///   the new balance, or is followed by `then` reading it (the account its one parameter);
/// * `line`: inserts a ledger line `(transfer_id, account, delta)`.
///
/// Probes and reads go through a fresh connection (`Self::fresh()`), the rest through the
/// transaction-aware `&TxPool` (`self.db`). Expands inside an `impl Server`.
macro_rules! server_methods {
    (
        clean: $clean:literal ($fields:literal),
        session: $session:literal as $session_ty:ty,
        alive: $alive:literal,
        sleep: $sleep:literal,
        tables: $tables:literal,
        add: $add:literal $(then $read:literal)?,
        line: $line:literal $(,)?
    ) => {
        fn check_clean(&self) -> BoxFut<'_, Result<(), String>> {
            Box::pin(async move {
                let mut fresh = Self::fresh().await;
                every_connection_clean(self.db.pool(), &mut fresh, $clean, $fields).await
            })
        }

        fn session_id(&self) -> BoxFut<'_, Result<i64, sqlx::Error>> {
            Box::pin(async move {
                let id: $session_ty = sqlx::query_scalar($session).fetch_one(&self.db).await?;
                Ok(i64::try_from(id).expect("a session id"))
            })
        }

        fn session_alive(&self, id: i64) -> BoxFut<'_, bool> {
            Box::pin(async move {
                let n: i64 = sqlx::query_scalar($alive)
                    .bind(id)
                    .fetch_one(&mut Self::fresh().await)
                    .await
                    .expect("count the sessions");
                n > 0
            })
        }

        fn sleep(&self, secs: f64) -> BoxFut<'_, Result<(), sqlx::Error>> {
            Box::pin(async move {
                sqlx::query($sleep)
                    .bind(secs)
                    .execute(&self.db)
                    .await
                    .map(|_| ())
            })
        }

        fn create_bank(&self, n: i64, initial: i64) -> BoxFut<'_, Books> {
            Box::pin(async move {
                let books = Books {
                    accounts: $crate::unique_table("acct"),
                    ledger: $crate::unique_table("ledger"),
                };
                let (accounts, ledger) = (&books.accounts, &books.ledger);
                let values = |f: &dyn Fn(i64) -> String| (1..=n).map(f).collect::<Vec<_>>().join(",");
                let sql = format!(
                    "{}; INSERT INTO {accounts} (id, balance) VALUES {}; \
                     INSERT INTO {ledger} (transfer_id, account, delta) VALUES {}",
                    $tables.replace("{accounts}", accounts).replace("{ledger}", ledger),
                    values(&|i| format!("({i}, {initial})")),
                    values(&|i| format!("(0, {i}, {initial})")),
                );
                script(Self::fresh().await, sql).await.expect("create bank");
                books
            })
        }

        fn post<'a>(
            &'a self,
            books: &'a Books,
            entry: Entry,
        ) -> BoxFut<'a, Result<i64, sqlx::Error>> {
            Box::pin(async move {
                let add = AssertSqlSafe($add.replace("{accounts}", &books.accounts));
                let read: Option<&str> = None $(.or(Some($read)))?;
                let balance = match read {
                    None => {
                        sqlx::query_scalar(add)
                            .bind(entry.delta)
                            .bind(entry.account)
                            .fetch_one(&self.db)
                            .await?
                    }
                    Some(read) => {
                        let read = AssertSqlSafe(read.replace("{accounts}", &books.accounts));
                        sqlx::query(add)
                            .bind(entry.delta)
                            .bind(entry.account)
                            .execute(&self.db)
                            .await?;
                        sqlx::query_scalar(read)
                            .bind(entry.account)
                            .fetch_one(&self.db)
                            .await?
                    }
                };
                sqlx::query(AssertSqlSafe($line.replace("{ledger}", &books.ledger)))
                    .bind(entry.transfer)
                    .bind(entry.account)
                    .bind(entry.delta)
                    .execute(&self.db)
                    .await?;
                Ok(balance)
            })
        }

        fn balances<'a>(&'a self, books: &'a Books) -> BoxFut<'a, Vec<(i64, i64)>> {
            let sql = format!("SELECT id, balance FROM {} ORDER BY id", books.accounts);
            Box::pin(async move {
                sqlx::query_as(AssertSqlSafe(sql))
                    .fetch_all(&mut Self::fresh().await)
                    .await
                    .expect("read balances")
            })
        }

        fn ledger_rows<'a>(&'a self, books: &'a Books) -> BoxFut<'a, Vec<(i64, i64, i64)>> {
            let sql = format!(
                "SELECT transfer_id, account, delta FROM {} ORDER BY id",
                books.ledger
            );
            Box::pin(async move {
                sqlx::query_as(AssertSqlSafe(sql))
                    .fetch_all(&mut Self::fresh().await)
                    .await
                    .expect("read ledger")
            })
        }
    };
}
pub(crate) use server_methods;
