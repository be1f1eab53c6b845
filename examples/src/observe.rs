//! Observing transactions: a bank on SQLite whose transactions are reported to a process-wide
//! [`TransactionListener`] and, through the `metrics` facade, to whatever recorder the program
//! installed (the `observe` example installs a Prometheus one and prints what it scrapes).
//!
//! The bank moves money with the shop's store statements (`shop::sqlite::store`).
//!
//! [`run_demo`] runs five calls with known outcomes: a transfer that commits, one that rolls
//! back (insufficient balance), an account opening whose welcome bonus fails inside a
//! `Nested` savepoint while the opening commits, and a report that runs past its deadline.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tx_sqlx::prelude::*;
use tx_sqlx::{BoxError, RollbackCause, SqliteTxPool, TransactionExecution, TransactionListener};

use crate::per_backend::sqlite_file_pool;
use crate::shop::ShopError;
use crate::shop::sqlite::store;

/// The bank's errors.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    /// The account cannot pay the amount.
    #[error("insufficient balance in account {0}")]
    InsufficientBalance(i64),
    /// The welcome bonus budget is spent.
    #[error("no welcome bonus left")]
    NoBonusLeft,
    /// The engine's or the database's error.
    #[error(transparent)]
    Tx(#[from] TxError),
    /// A call of the demo did not end as it should have.
    #[error("{0}")]
    Unexpected(String),
}

crate::from_sqlx_through_tx!(BankError);

/// The store's refusals: a short balance is the bank's own failure, anything else a surprise.
impl From<ShopError> for BankError {
    fn from(e: ShopError) -> Self {
        match e {
            ShopError::InsufficientBalance { account, .. } => {
                BankError::InsufficientBalance(account)
            }
            ShopError::Tx(e) => BankError::Tx(e),
            other => BankError::Unexpected(other.to_string()),
        }
    }
}

/// A listener that writes one line per transaction event: `tx <id> [<name>] on <backend>:
/// <what>`, savepoints marked as such. The lines are kept for [`ListenerLog::lines`].
#[derive(Clone, Default)]
pub struct ListenerLog(Arc<Mutex<Vec<String>>>);

impl ListenerLog {
    /// The lines so far.
    #[must_use]
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn push(&self, tx: &TransactionExecution<'_>, what: &str) -> Result<(), BoxError> {
        let scope = if tx.is_savepoint() {
            format!("savepoint {} of tx {}", tx.scope_id(), tx.id())
        } else {
            format!("tx {}", tx.id())
        };
        let line = format!("{scope} [{}] on {}: {what}", tx.name(), tx.backend());
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        Ok(())
    }
}

impl TransactionListener for ListenerLog {
    fn after_begin(
        &self,
        tx: &TransactionExecution<'_>,
        failure: Option<&TxError>,
    ) -> Result<(), BoxError> {
        match failure {
            None => self.push(tx, "began"),
            Some(e) => self.push(tx, &format!("could not begin: {e}")),
        }
    }

    fn after_commit(
        &self,
        tx: &TransactionExecution<'_>,
        failure: Option<&TxError>,
    ) -> Result<(), BoxError> {
        match failure {
            None => self.push(tx, "committed"),
            Some(e) => self.push(tx, &format!("outcome unknown: {e}")),
        }
    }

    fn after_rollback(
        &self,
        tx: &TransactionExecution<'_>,
        cause: RollbackCause,
    ) -> Result<(), BoxError> {
        self.push(tx, &format!("rolled back ({cause})"))
    }
}

/// The bank's services on one SQLite database.
#[derive(Debug, Clone)]
pub struct Bank {
    db: SqliteTxPool,
}

impl Bank {
    /// Moves `amount` between two accounts, with the shop's store statements.
    #[transactional(manager = self.db, name = "bank::transfer")]
    pub async fn transfer(&self, from: i64, to: i64, amount: i64) -> Result<(), BankError> {
        store::debit::<BankError>(&self.db, from, amount).await?;
        store::credit(&self.db, to, amount).await
    }

    /// Opens an account; the welcome bonus is tried in a savepoint, and the account is opened
    /// whether or not it is granted.
    #[transactional(manager = self.db, name = "bank::open_account")]
    pub async fn open_account(&self, id: i64, name: &str) -> Result<bool, BankError> {
        sqlx::query("INSERT INTO account (id, name, balance) VALUES ($1, $2, 0)")
            .bind(id)
            .bind(name)
            .execute(&self.db)
            .await?;
        match self.welcome_bonus(id).await {
            Ok(()) => Ok(true),
            Err(BankError::NoBonusLeft) => Ok(false),
            Err(e) => Err(e),
        }
    }

    #[transactional(manager = self.db, name = "bank::welcome_bonus", propagation = Nested)]
    async fn welcome_bonus(&self, id: i64) -> Result<(), BankError> {
        sqlx::query("UPDATE account SET balance = balance + 10 WHERE id = $1")
            .bind(id)
            .execute(&self.db)
            .await?;
        let left: i64 = sqlx::query_scalar("SELECT balance FROM account WHERE id = 0")
            .fetch_one(&self.db)
            .await?;
        if left < 10 {
            // The credit above is rolled back with the savepoint.
            return Err(BankError::NoBonusLeft);
        }
        sqlx::query("UPDATE account SET balance = balance - 10 WHERE id = 0")
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// A report that takes longer than its deadline allows.
    #[transactional(manager = self.db, name = "bank::slow_report", read_only, timeout = "50ms")]
    pub async fn slow_report(&self) -> Result<i64, BankError> {
        let total: i64 = sqlx::query_scalar("SELECT SUM(balance) FROM account")
            .fetch_one(&self.db)
            .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(total)
    }

    /// `(id, balance)` of every account.
    ///
    /// # Errors
    ///
    /// The database's.
    ///
    /// # Cancel safety
    ///
    /// A read in autocommit: nothing to undo.
    pub async fn balances(&self) -> Result<Vec<(i64, i64)>, BankError> {
        Ok(
            sqlx::query_as("SELECT id, balance FROM account ORDER BY id")
                .fetch_all(&self.db)
                .await?,
        )
    }
}

/// What the demo did, for printing and for the tests.
#[derive(Debug)]
pub struct DemoOutcome {
    /// `(id, balance)` of every account at the end.
    pub balances: Vec<(i64, i64)>,
    /// Whether the new account got its welcome bonus (no: the budget was spent).
    pub bonus_granted: bool,
    /// The error of the transfer that could not be paid.
    pub failed_transfer: String,
    /// The error of the report that ran past its deadline.
    pub timed_out_report: String,
}

/// Creates the bank in the SQLite database `dir/bank.db` and runs the five calls. The
/// listener and the metrics recorder must already be installed to see them.
///
/// # Errors
///
/// A database failure while setting up, or a call that did not end as the demo expects.
///
/// # Cancel safety
///
/// Not cancel safe as a whole: dropped mid-way, the demo's database is left part-written (each
/// call on its own rolls back when dropped).
pub async fn run_demo(dir: &Path) -> Result<DemoOutcome, BankError> {
    let bank = Bank {
        db: sqlite_file_pool(&dir.join("bank.db"), 2, Duration::from_secs(5)).await?,
    };
    sqlx::query("CREATE TABLE account (id INTEGER PRIMARY KEY, name TEXT NOT NULL, balance INTEGER NOT NULL)")
        .execute(&bank.db)
        .await?;
    // Account 0 is the bonus budget: 5, less than one bonus.
    sqlx::query("INSERT INTO account (id, name, balance) VALUES (0, 'bonus budget', 5), (1, 'alice', 100), (2, 'bob', 50)")
        .execute(&bank.db)
        .await?;

    bank.transfer(1, 2, 30).await?;
    let failed_transfer = match bank.transfer(2, 1, 500).await {
        Err(e @ BankError::InsufficientBalance(_)) => e.to_string(),
        other => return Err(unexpected("the transfer of 500", other)),
    };
    let bonus_granted = bank.open_account(3, "carol").await?;
    let timed_out_report = match bank.slow_report().await {
        Err(e @ BankError::Tx(TxError::Timeout)) => e.to_string(),
        other => return Err(unexpected("the slow report", other)),
    };
    let balances = bank.balances().await?;
    bank.db.pool().close().await;
    Ok(DemoOutcome {
        balances,
        bonus_granted,
        failed_transfer,
        timed_out_report,
    })
}

fn unexpected<T: std::fmt::Debug>(what: &str, got: Result<T, BankError>) -> BankError {
    BankError::Unexpected(format!("{what} ended unexpectedly: {got:?}"))
}
