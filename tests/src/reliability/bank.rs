//! The bank: concurrent transfers under faults, with invariants checked at the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Barrier;
use tx_sqlx::TxError;

use super::backend::{Books, Entry, Server, no_open_transactions, settle};
use super::errors::{AppError, INJECTED_PANIC, quiet_injected_panics};

/// A fault injected into a transfer's body.
#[derive(Debug, Clone)]
pub enum Fault {
    /// None.
    None,
    /// Fails after the debit.
    ErrorAfterDebit,
    /// A participant marks the transaction rollback-only.
    RollbackOnly,
    /// Panics after the debit (the transfer runs in a spawned task).
    Panic,
    /// Sleeps between debit and credit, holding the debit's row lock (provokes deadlocks).
    Slow,
    /// Waits (first attempt only) at the barrier with the opposite transfer after both
    /// debited: a certain deadlock.
    Deadlock(Arc<Barrier>),
}

/// One transfer.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// Its id in the ledger (> 0).
    pub id: i64,
    /// Debited account.
    pub from: i64,
    /// Credited account.
    pub to: i64,
    /// Amount moved.
    pub amount: i64,
    /// The fault injected.
    pub fault: Fault,
}

/// A transfer service written the way a Spring user would: a struct holding its transaction
/// manager, with `#[transactional]` methods.
#[derive(Clone)]
pub struct Bank<B: Server> {
    db: B::Pool,
    b: B,
    books: Books,
}

impl<B: Server> Bank<B> {
    /// The bank on `b`'s pool and tables.
    pub fn new(b: &B, accounts: &str, ledger: &str) -> Self {
        Bank {
            db: b.manager().clone(),
            b: b.clone(),
            books: Books {
                accounts: accounts.to_owned(),
                ledger: ledger.to_owned(),
            },
        }
    }

    /// A transfer at the default isolation, retried on deadlocks.
    #[tx_sqlx::transactional(manager = self.db, retry = 5)]
    pub async fn transfer(&self, t: Transfer, attempts: &AtomicU32) -> Result<(), AppError> {
        self.move_money(&t, attempts).await
    }

    /// A transfer at SERIALIZABLE, retried on serialization failures and deadlocks.
    #[tx_sqlx::transactional(manager = self.db, isolation = Serializable, retry = 5)]
    pub async fn transfer_serializable(
        &self,
        t: Transfer,
        attempts: &AtomicU32,
    ) -> Result<(), AppError> {
        self.move_money(&t, attempts).await
    }

    /// A participant (joins the transfer) whose verdict marks the whole transaction
    /// rollback-only.
    #[tx_sqlx::transactional(manager = self.db)]
    async fn risk_check(&self, veto: bool) -> Result<(), AppError> {
        if veto {
            tx_sqlx::set_rollback_only()?;
        }
        Ok(())
    }

    /// `delta` on `account` for transfer `t`; the account's new balance.
    async fn post(&self, t: &Transfer, account: i64, delta: i64) -> Result<i64, sqlx::Error> {
        let entry = Entry {
            transfer: t.id,
            account,
            delta,
        };
        self.b.post(&self.books, entry).await
    }

    async fn move_money(&self, t: &Transfer, attempts: &AtomicU32) -> Result<(), AppError> {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        // Locks are deliberately not ordered: opposite transfers deadlock.
        let balance = self.post(t, t.from, -t.amount).await?;
        match &t.fault {
            Fault::ErrorAfterDebit => return Err(AppError::Injected("error after the debit")),
            Fault::Panic => panic!("{INJECTED_PANIC} transfer {} after the debit", t.id),
            Fault::Slow => tokio::time::sleep(Duration::from_millis(2)).await,
            Fault::Deadlock(barrier) if attempt == 1 => {
                let _ = tokio::time::timeout(Duration::from_secs(5), barrier.wait()).await;
            }
            _ => {}
        }
        if balance < 0 {
            return Err(AppError::Insufficient);
        }
        self.post(t, t.to, t.amount).await?;
        self.risk_check(matches!(t.fault, Fault::RollbackOnly))
            .await?;
        Ok(())
    }
}

/// How a transfer ended, as its caller knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferEnd {
    /// `Ok`: must be in the ledger.
    Committed,
    /// A definite failure (any error but commit-outcome-unknown, or a panic): must not be.
    Failed(String),
    /// Cancelled, or commit outcome unknown: either way, but whole.
    Unknown,
}

/// Every transfer run: its plan, how it ended, how many attempts it took.
type Plans = Arc<Mutex<BTreeMap<i64, (Transfer, TransferEnd, u32)>>>;

/// Counts of a bank run.
#[derive(Debug, Default, Clone)]
pub struct BankReport {
    /// Transfers attempted.
    pub transfers: usize,
    /// Ended `Ok`.
    pub committed: usize,
    /// Failed because of an injected fault (error, rollback-only, panic).
    pub injected_failures: usize,
    /// Refused by the business rule.
    pub insufficient: usize,
    /// Cancelled (or outcome unknown).
    pub unknown: usize,
    /// Of those, the ones that turned out committed (cancelled while COMMIT was in flight).
    pub unknown_committed: usize,
    /// Other failures (e.g. retries exhausted).
    pub other_failures: usize,
    /// A few of those failures, for the log.
    pub other_failure_samples: Vec<String>,
    /// Transfers marked rollback-only by a participant that ended in UnexpectedRollback.
    pub unexpected_rollbacks: usize,
    /// Fault-free transfers (no injected fault, no cancellation, not refused).
    pub clean: usize,
    /// Fault-free transfers that succeeded.
    pub clean_committed: usize,
    /// Transfers that needed more than one attempt.
    pub retried: usize,
    /// Forced deadlock rounds (two opposite transfers each).
    pub deadlock_rounds: usize,
    /// Forced deadlock rounds where both transfers committed.
    pub deadlock_rounds_ok: usize,
    /// Forced deadlock rounds in which a retry happened (the deadlock was real).
    pub deadlock_rounds_retried: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Invariants broken.
    pub violations: Vec<String>,
}

/// SplitMix64: a deterministic plan from the transfer id.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The bank's parameters.
#[derive(Debug, Clone, Copy)]
pub struct BankConfig {
    /// Accounts (ids 1..=n).
    pub accounts: i64,
    /// Each account's opening balance.
    pub initial: i64,
    /// Random transfers in the main phase.
    pub transfers: usize,
    /// Concurrent tasks.
    pub tasks: usize,
    /// Inject faults (errors, rollback-only, panics, cancellations, slow transfers).
    pub faults: bool,
    /// Forced-deadlock rounds per pair of tasks (after the main phase).
    pub deadlock_rounds: usize,
    /// Use the SERIALIZABLE method.
    pub serializable: bool,
}

/// Plans transfer `id`: accounts, amount, fault, and an optional cancellation delay.
fn plan(cfg: &BankConfig, id: i64) -> (Transfer, Option<Duration>) {
    let r = mix(id as u64 ^ if cfg.serializable { 0xABCD } else { 0 });
    // One transfer in eight moves money among ten hot accounts: contention, and deadlocks
    // between opposite transfers.
    let n = if (r >> 56).is_multiple_of(8) {
        10
    } else {
        cfg.accounts as u64
    };
    let from = (r % n) as i64 + 1;
    let to = ((from as u64 - 1 + 1 + (r >> 8) % (n - 1)) % n) as i64 + 1;
    let amount = ((r >> 20) % 100) as i64 + 1;
    let roll = (r >> 32) % 100;
    let (fault, cancel) = if !cfg.faults {
        (Fault::None, None)
    } else {
        match roll {
            0..=5 => (Fault::ErrorAfterDebit, None),
            6..=11 => (Fault::RollbackOnly, None),
            12..=15 => (Fault::Panic, None),
            16..=21 => (
                Fault::None,
                Some(Duration::from_micros(100 + (r >> 40) % 3000)),
            ),
            22..=31 => (Fault::Slow, None),
            _ => (Fault::None, None),
        }
    };
    (
        Transfer {
            id,
            from,
            to,
            amount,
            fault,
        },
        cancel,
    )
}

fn classify(r: Result<(), AppError>) -> TransferEnd {
    match r {
        Ok(()) => TransferEnd::Committed,
        Err(AppError::Tx(TxError::CommitOutcomeUnknown(_))) => TransferEnd::Unknown,
        Err(e) => TransferEnd::Failed(format!("{e}")),
    }
}

async fn run_transfer<B: Server>(
    bank: &Bank<B>,
    cfg: &BankConfig,
    t: Transfer,
    cancel: Option<Duration>,
) -> (TransferEnd, u32) {
    let attempts = Arc::new(AtomicU32::new(0));
    let end = if matches!(t.fault, Fault::Panic) {
        // A panic inside a spawned task: the task dies, its transaction rolls back.
        let (bank, a, ser) = (bank.clone(), attempts.clone(), cfg.serializable);
        let h = tokio::spawn(async move {
            if ser {
                bank.transfer_serializable(t, &a).await
            } else {
                bank.transfer(t, &a).await
            }
        });
        match h.await {
            Ok(r) => classify(r),
            Err(j) if j.is_panic() => TransferEnd::Failed("panicked".into()),
            Err(j) => panic!("transfer task failed: {j}"),
        }
    } else {
        let call = async {
            if cfg.serializable {
                bank.transfer_serializable(t, &attempts).await
            } else {
                bank.transfer(t, &attempts).await
            }
        };
        match cancel {
            Some(d) => match tokio::time::timeout(d, call).await {
                Ok(r) => classify(r),
                Err(_) => TransferEnd::Unknown,
            },
            None => classify(call.await),
        }
    };
    (end, attempts.load(Ordering::SeqCst))
}

/// The bank: `cfg.transfers` random transfers from `cfg.tasks` tasks with faults and retry,
/// then forced deadlocks between opposite transfers; then the books are audited from a fresh
/// connection. Returns the counts and every broken invariant.
pub async fn bank<B: Server>(b: &B, cfg: BankConfig) -> BankReport {
    quiet_injected_panics();
    let started = Instant::now();
    let books = b.create_bank(cfg.accounts, cfg.initial).await;
    let bank = Bank::new(b, &books.accounts, &books.ledger);
    let plans: Plans = Arc::default();
    let next = Arc::new(AtomicUsize::new(1));

    // Main phase.
    let mut workers = Vec::new();
    for _ in 0..cfg.tasks {
        let (bank, plans, next) = (bank.clone(), plans.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let id = next.fetch_add(1, Ordering::SeqCst);
                if id > cfg.transfers {
                    return;
                }
                let (t, cancel) = plan(&cfg, id as i64);
                let (end, attempts) = run_transfer(&bank, &cfg, t.clone(), cancel).await;
                plans.lock().unwrap().insert(t.id, (t, end, attempts));
            }
        }));
    }
    for w in workers {
        w.await.expect("a bank worker died");
    }

    // Forced deadlocks: pairs of tasks move money in opposite directions between the same two
    // accounts, meeting at a barrier after both debited.
    let mut report = BankReport::default();
    let pairs = cfg.tasks / 2;
    let mut next_id = cfg.transfers as i64 + 1;
    for round in 0..cfg.deadlock_rounds {
        let mut handles = Vec::new();
        for pair in 0..pairs {
            let x = ((pair * 2 + round * 7) as i64 % cfg.accounts) + 1;
            let y = (x % cfg.accounts) + 1;
            let barrier = Arc::new(Barrier::new(2));
            for (id, from, to) in [(next_id, x, y), (next_id + 1, y, x)] {
                let t = Transfer {
                    id,
                    from,
                    to,
                    amount: 1,
                    fault: Fault::Deadlock(barrier.clone()),
                };
                let (bank, plans) = (bank.clone(), plans.clone());
                handles.push(tokio::spawn(async move {
                    let (end, attempts) = run_transfer(&bank, &cfg, t.clone(), None).await;
                    plans
                        .lock()
                        .unwrap()
                        .insert(t.id, (t, end.clone(), attempts));
                    (end, attempts)
                }));
            }
            next_id += 2;
        }
        let mut results = Vec::new();
        for h in handles {
            results.push(h.await.expect("a deadlock task died"));
        }
        for pair in results.chunks(2) {
            report.deadlock_rounds += 1;
            if pair.iter().all(|(e, _)| *e == TransferEnd::Committed) {
                report.deadlock_rounds_ok += 1;
            }
            if pair.iter().any(|(_, a)| *a > 1) {
                report.deadlock_rounds_retried += 1;
            }
        }
    }

    // Nothing left open, every connection back.
    let open = no_open_transactions(b).await;
    let (size, idle) = settle(b).await;
    if open != 0 {
        report
            .violations
            .push(format!("{open} session(s) left inside a transaction"));
    }
    if size as usize != idle {
        report
            .violations
            .push(format!("pool size {size}, idle {idle}"));
    }

    // The books.
    let balances = b.balances(&books).await;
    let rows = b.ledger_rows(&books).await;
    let total: i64 = balances.iter().map(|(_, bal)| bal).sum();
    if total != cfg.accounts * cfg.initial {
        report.violations.push(format!(
            "total balance {total}, expected {} (money created or destroyed)",
            cfg.accounts * cfg.initial
        ));
    }
    let mut per_account: BTreeMap<i64, i64> = BTreeMap::new();
    let mut per_transfer: BTreeMap<i64, Vec<(i64, i64)>> = BTreeMap::new();
    for (transfer, account, delta) in &rows {
        *per_account.entry(*account).or_default() += delta;
        per_transfer
            .entry(*transfer)
            .or_default()
            .push((*account, *delta));
    }
    for (id, bal) in &balances {
        let l = per_account.get(id).copied().unwrap_or(0);
        if l != *bal {
            report.violations.push(format!(
                "account {id}: balance {bal} but its ledger sums to {l}"
            ));
        }
        if *bal < 0 {
            report
                .violations
                .push(format!("account {id}: negative balance {bal}"));
        }
    }
    let deposits = per_transfer.remove(&0).unwrap_or_default();
    if deposits.len() as i64 != cfg.accounts {
        report
            .violations
            .push(format!("{} deposit lines", deposits.len()));
    }
    let plans = std::mem::take(&mut *plans.lock().unwrap());
    for (id, lines) in &per_transfer {
        match plans.get(id) {
            None => report
                .violations
                .push(format!("ledger has lines of unknown transfer {id}")),
            Some((t, _, _)) => {
                let expected = vec![(t.from, -t.amount), (t.to, t.amount)];
                if *lines != expected {
                    report.violations.push(format!(
                        "transfer {id}: ledger lines {lines:?}, expected {expected:?} (half-written or doubled)"
                    ));
                }
            }
        }
    }
    for (id, (t, end, attempts)) in plans.iter() {
        report.transfers += 1;
        if *attempts > 1 {
            report.retried += 1;
        }
        let in_ledger = per_transfer.contains_key(id);
        match end {
            TransferEnd::Committed => {
                report.committed += 1;
                if !in_ledger {
                    report.violations.push(format!(
                        "transfer {id} returned Ok but is not in the ledger"
                    ));
                }
            }
            TransferEnd::Failed(why) => {
                if in_ledger {
                    report.violations.push(format!(
                        "transfer {id} failed ({why}) but is in the ledger (committed work reported as failed)"
                    ));
                }
                match &t.fault {
                    Fault::ErrorAfterDebit | Fault::RollbackOnly | Fault::Panic => {
                        report.injected_failures += 1
                    }
                    _ if why == "insufficient funds" => report.insufficient += 1,
                    _ => {
                        report.other_failures += 1;
                        if report.other_failure_samples.len() < 5 {
                            report
                                .other_failure_samples
                                .push(format!("transfer {id} ({} attempts): {why}", attempts));
                        }
                    }
                }
            }
            TransferEnd::Unknown => {
                report.unknown += 1;
                if in_ledger {
                    report.unknown_committed += 1;
                }
            }
        }
        // Fault-free: no injected fault, not cancelled (Unknown), not refused by the rule.
        let faulty = matches!(
            t.fault,
            Fault::ErrorAfterDebit | Fault::RollbackOnly | Fault::Panic
        );
        let refused = matches!(end, TransferEnd::Failed(w) if w == "insufficient funds");
        if !faulty && !refused && *end != TransferEnd::Unknown {
            report.clean += 1;
            if *end == TransferEnd::Committed {
                report.clean_committed += 1;
            }
        }
        // The injected faults must have their effect.
        match (&t.fault, end) {
            (
                Fault::ErrorAfterDebit | Fault::RollbackOnly | Fault::Panic,
                TransferEnd::Committed,
            ) => report.violations.push(format!(
                "transfer {id} with fault {:?} returned Ok",
                t.fault
            )),
            (Fault::RollbackOnly, TransferEnd::Failed(why)) if why.contains("rollback-only") => {
                report.unexpected_rollbacks += 1
            }
            _ => {}
        }
    }
    if let Err(e) = b.check_clean().await {
        report.violations.push(e);
    }
    b.drop_table(&books.accounts).await;
    b.drop_table(&books.ledger).await;
    report.elapsed = started.elapsed();
    report
}
