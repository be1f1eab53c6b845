//! Runs a [`Program`] against a real database through `TxPool`, `TransactionTemplate` and
//! `#[transactional]`, and records what it observed: each call's result, the number of times
//! each body started, the rows left in the table and the log of hook callbacks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::panic::{AssertUnwindSafe, resume_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use sqlx::AssertSqlSafe;
use tx_sqlx::manager::SharedManager;
use tx_sqlx::{
    BoxError, Completion, MySqlTxPool, PgTxPool, SqliteTxPool, TransactionStatus,
    TransactionSynchronization, TransactionTemplate, TxError, transactional,
};

use super::program::*;

pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The generated programs' error type, displayed as its `Debug`. The engine's error is its
/// source (`#[from]`): `retry` looks there for the retryable failure a call returned.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `End::Fail`.
    #[error("Fail")]
    Fail,
    /// `End::Kept`.
    #[error("Kept")]
    Kept,
    #[error("Tx({0:?})")]
    Tx(#[from] TxError),
}

impl From<sqlx::Error> for ModelError {
    fn from(e: sqlx::Error) -> Self {
        ModelError::Tx(e.into())
    }
}

/// The payload of a generated `End::Panic` (the test's panic hook stays quiet about it).
pub struct ModelPanic;

/// What a call, statement or registration returned, as the model names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Res {
    Ok,
    Fail,
    Kept,
    Panic,
    /// The caller dropped the call's future.
    Cancelled,
    NoTransaction,
    ExistingTransaction,
    UnexpectedRollback,
    Timeout,
    WouldBlock,
    BeforeCommit,
    Db {
        retryable: bool,
    },
    /// The engine refused two scopes of one transaction running at once.
    Refused,
    Other(String),
}

impl Res {
    pub fn of_error(e: &ModelError) -> Res {
        match e {
            ModelError::Fail => Res::Fail,
            ModelError::Kept => Res::Kept,
            ModelError::Tx(e) => Res::of_tx(e),
        }
    }

    pub fn of_tx(e: &TxError) -> Res {
        match e {
            TxError::NoTransaction => Res::NoTransaction,
            TxError::ExistingTransaction => Res::ExistingTransaction,
            TxError::UnexpectedRollback => Res::UnexpectedRollback,
            TxError::Timeout => Res::Timeout,
            TxError::WouldBlock { message } if is_concurrency_refusal(message) => Res::Refused,
            TxError::WouldBlock { .. } => Res::WouldBlock,
            TxError::BeforeCommit(_) => Res::BeforeCommit,
            TxError::Database { retryable, .. } => Res::Db {
                retryable: *retryable,
            },
            other => {
                let msg = other.to_string();
                // The engine's refusal of two scopes of one transaction running at once
                // (`TxError::ConcurrentScopes`, matched by name: a variant this crate's
                // engine may not have yet), or any error whose message says so.
                if format!("{other:?}").starts_with("ConcurrentScopes")
                    || is_concurrency_refusal(&msg)
                {
                    Res::Refused
                } else {
                    Res::Other(format!("{other:?}: {msg}"))
                }
            }
        }
    }
}

/// A typed refusal of concurrent scopes of one transaction: it says why.
fn is_concurrency_refusal(message: &str) -> bool {
    let m = message.to_lowercase();
    [
        "concurrent",
        "at the same time",
        "at once",
        "in parallel",
        "simultaneous",
    ]
    .iter()
    .any(|k| m.contains(k))
}

/// What the calls of a program ended with: the part of a run that the model predicts
/// exactly, the same type on both sides so that they compare with `==`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Calls {
    /// Per call instance (`c<id>.<n>`): what the caller got; per failed hook registration
    /// (`h<id>.<n>`): the error.
    pub results: BTreeMap<String, Res>,
    /// Per call instance: how many times its body started.
    pub starts: BTreeMap<String, u32>,
    /// What the plain code at the root ended with (`Ok`, the error it propagated, `Panic`).
    pub root: Option<Res>,
}

/// Everything a run observed.
#[derive(Debug, Default, Clone)]
pub struct Observation {
    /// What each call and the root got, and how often each body started.
    pub calls: Calls,
    /// Tags in the table afterwards, read from a fresh connection.
    pub rows: BTreeSet<String>,
    /// Hook callbacks (`h<id>.<n>:<phase>`) and registrations (`reg h<id>.<n>`), in order.
    pub log: Vec<String>,
    /// The run did not finish in time.
    pub hung: bool,
}

// ---------------------------------------------------------------------------------------------
// The database
// ---------------------------------------------------------------------------------------------

/// One backend's `TxPool`.
#[derive(Clone)]
pub enum Db {
    Postgres(PgTxPool),
    MySql(MySqlTxPool),
    Sqlite(SqliteTxPool),
}

macro_rules! on_pool {
    ($db:expr, $p:ident => $e:expr) => {
        match $db {
            Db::Postgres($p) => $e,
            Db::MySql($p) => $e,
            Db::Sqlite($p) => $e,
        }
    };
}

impl Db {
    pub fn backend(&self) -> Backend {
        match self {
            Db::Postgres(_) => Backend::Postgres,
            Db::MySql(_) => Backend::MySql,
            Db::Sqlite(_) => Backend::Sqlite,
        }
    }

    fn manager(&self) -> SharedManager {
        on_pool!(self, p => Arc::new(p.clone()))
    }

    /// A statement through the transaction-aware executor `&TxPool`.
    async fn exec(&self, sql: String) -> Result<(), TxError> {
        on_pool!(self, p => sqlx::query(AssertSqlSafe(sql)).execute(p).await.map(|_| ())?);
        Ok(())
    }

    /// A statement in the simple protocol through `&TxPool`.
    async fn exec_raw(&self, sql: &'static str) -> Result<(), TxError> {
        on_pool!(self, p => sqlx::raw_sql(sql).execute(p).await.map(|_| ())?);
        Ok(())
    }

    /// A statement on a pooled connection outside every transaction.
    pub async fn fresh_exec(&self, sql: String) -> Result<(), sqlx::Error> {
        on_pool!(self, p => sqlx::query(AssertSqlSafe(sql)).execute(p.pool()).await.map(|_| ()))
    }

    /// Whether every connection of the pool is back and idle: nothing of a dropped scope is
    /// still rolling back or committing in the background.
    pub fn idle(&self) -> bool {
        on_pool!(self, p => p.pool().size() as usize == p.pool().num_idle())
    }

    pub async fn fresh_tags(&self, sql: String) -> Result<Vec<String>, sqlx::Error> {
        on_pool!(self, p => sqlx::query_scalar::<_, String>(AssertSqlSafe(sql)).fetch_all(p.pool()).await)
    }
}

// ---------------------------------------------------------------------------------------------
// Scopes with rollback rules: #[transactional], one function per attribute combination
// ---------------------------------------------------------------------------------------------

type Body = Arc<dyn Fn() -> BoxFut<Result<(), ModelError>> + Send + Sync>;

/// For each rule, a module of `#[transactional]` functions with that rule (`$attr`), one per
/// propagation, and the same with `retry = 2` in its module `retried`; each module's `pick`
/// returns the call of its function for a propagation.
macro_rules! ruled_fns {
    ($($rule:ident => ($($attr:tt)*);)*) => {
        $(
            mod $rule {
                use super::*;

                ruled_fns!(@per_propagation ($($attr)*));

                pub mod retried {
                    use super::*;

                    ruled_fns!(@per_propagation ($($attr)*, retry = 2));
                }
            }
        )*
    };
    (@per_propagation $attr:tt) => {
        ruled_fns!(@fns $attr,
            required: Required,
            requires_new: RequiresNew,
            nested: Nested,
            supports: Supports,
            not_supported: NotSupported,
            mandatory: Mandatory,
            never: Never,
        );
    };
    (@fns $attr:tt, $($name:ident: $p:ident,)*) => {
        $(ruled_fns!(@fn $attr, $name, $p);)*

        pub fn pick(p: Propagation, mgr: SharedManager, body: Body) -> BoxFut<Result<(), ModelError>> {
            match p {
                $(Propagation::$p => Box::pin($name(mgr, body)),)*
            }
        }
    };
    (@fn ($($attr:tt)*), $name:ident, $p:ident) => {
        #[transactional(propagation = $p, $($attr)*, manager = mgr)]
        async fn $name(mgr: SharedManager, body: Body) -> Result<(), ModelError> {
            body().await
        }
    };
}

ruled_fns! {
    keep => (no_rollback_for = ModelError::Kept);
    only => (rollback_for = ModelError::Fail);
}

fn ruled_call(
    rule: Rule,
    p: Propagation,
    retry: bool,
    mgr: SharedManager,
    body: Body,
) -> BoxFut<Result<(), ModelError>> {
    match (rule, retry) {
        (Rule::NoRollbackForKept, false) => keep::pick(p, mgr, body),
        (Rule::NoRollbackForKept, true) => keep::retried::pick(p, mgr, body),
        (Rule::RollbackForFail, false) => only::pick(p, mgr, body),
        (Rule::RollbackForFail, true) => only::retried::pick(p, mgr, body),
        (Rule::Default, _) => unreachable!("no #[transactional] function for {rule:?} {p:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The interpreter
// ---------------------------------------------------------------------------------------------

/// One run's shared state.
pub struct Run {
    db: Db,
    manager: SharedManager,
    table: String,
    counters: Mutex<HashMap<(char, OpId), u32>>,
    obs: Mutex<Observation>,
}

/// How a call ended, as its caller sees it.
enum Ended {
    Returned(Result<(), ModelError>),
    Panicked(Box<dyn std::any::Any + Send>),
    Cancelled,
}

impl Run {
    pub fn new(db: Db, table: String) -> Arc<Run> {
        Arc::new(Run {
            manager: db.manager(),
            db,
            table,
            counters: Mutex::default(),
            obs: Mutex::default(),
        })
    }

    fn instance(&self, kind: char, id: OpId) -> String {
        let mut c = self.counters.lock().unwrap();
        let n = c.entry((kind, id)).or_insert(0);
        let tag = format!("{kind}{id}.{n}");
        *n += 1;
        tag
    }

    fn log(&self, entry: String) {
        self.obs.lock().unwrap().log.push(entry);
    }

    fn result(&self, key: String, res: Res) {
        self.obs.lock().unwrap().calls.results.insert(key, res);
    }

    async fn insert(&self, tag: &str) -> Result<(), TxError> {
        self.db
            .exec(format!("INSERT INTO {} (tag) VALUES ('{tag}')", self.table))
            .await
    }

    /// A failing statement; `tag` is unique to this attempt, so that no other transaction
    /// ever waits on the key it touched.
    async fn fault(&self, fault: Fault, tag: &str) -> Result<(), TxError> {
        match (fault, self.db.backend()) {
            (Fault::Error, Backend::MySql) => {
                self.db
                    .exec_raw("SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'simulated failure'")
                    .await
            }
            (Fault::Error, _) => {
                self.db
                    .exec(format!(
                        "INSERT INTO {} (tag) VALUES ('{tag}'), ('{tag}')",
                        self.table
                    ))
                    .await
            }
            (Fault::Retryable, Backend::Postgres) => {
                self.db
                    .exec_raw(
                        "DO $$ BEGIN RAISE EXCEPTION 'simulated serialization failure' \
                         USING ERRCODE = 'serialization_failure'; END $$",
                    )
                    .await
            }
            (Fault::Retryable, Backend::MySql) => self
                .db
                .exec_raw(
                    "SIGNAL SQLSTATE '40001' SET MESSAGE_TEXT = 'simulated serialization failure'",
                )
                .await,
            (Fault::Retryable, Backend::Sqlite) => {
                unreachable!("no retryable fault is generated for SQLite")
            }
        }
    }

    /// Runs the whole program; returns what it observed.
    pub async fn program(self: &Arc<Self>, program: &Program) -> Observation {
        let root = match AssertUnwindSafe(self.clone().ops(program.ops.clone()))
            .catch_unwind()
            .await
        {
            Ok(Ok(())) => Res::Ok,
            Ok(Err(e)) => Res::of_error(&e),
            Err(_) => Res::Panic,
        };
        let mut obs = self.obs.lock().unwrap();
        obs.calls.root = Some(root);
        obs.clone()
    }

    /// The current log length (to wait for hooks that complete in the background).
    pub fn log_len(&self) -> usize {
        self.obs.lock().unwrap().log.len()
    }

    pub fn snapshot(&self) -> Observation {
        self.obs.lock().unwrap().clone()
    }

    fn ops(self: Arc<Self>, ops: Vec<Op>) -> BoxFut<Result<(), ModelError>> {
        Box::pin(async move {
            for op in ops {
                match op {
                    Op::Insert(id) => {
                        let tag = self.instance('o', id);
                        self.insert(&tag).await?;
                    }
                    Op::Hook(h) => {
                        let tag = self.instance('h', h.id);
                        // Logged before registering, so a hook's position in the log is its
                        // registration order even when two joined scopes register at once.
                        self.log(format!("reg {tag}"));
                        let hook = Recorder {
                            run: self.clone(),
                            tag: tag.clone(),
                            hook: h,
                        };
                        if let Err(e) = tx_sqlx::register_synchronization(hook) {
                            self.result(tag, Res::of_tx(&e));
                        }
                    }
                    Op::Call(c) => {
                        let on_err = c.on_err;
                        handle(self.clone().call(c).await, on_err)?;
                    }
                    Op::Join(a, b) => {
                        let (on_a, on_b) = (a.on_err, b.on_err);
                        let (ra, rb) = tokio::join!(self.clone().call(*a), self.clone().call(*b));
                        let ra = handle(ra, on_a);
                        let rb = handle(rb, on_b);
                        ra?;
                        rb?;
                    }
                    Op::Yield => tokio::task::yield_now().await,
                    Op::Sleep => tokio::time::sleep(SLOW).await,
                    Op::Spin => std::thread::sleep(SLOW),
                }
            }
            Ok(())
        })
    }

    /// One call: its scope, its rollback rules, its retries, and its cancellation.
    fn call(self: Arc<Self>, call: Call) -> BoxFut<Ended> {
        Box::pin(async move {
            let tag = self.instance('c', call.id);
            let scoped =
                AssertUnwindSafe(self.clone().scoped(call.scope, tag.clone())).catch_unwind();
            let ended = match call.cancel_after {
                None => Some(scoped.await),
                Some(k) => {
                    CancelAfter {
                        fut: Some(Box::pin(scoped)),
                        polls_left: k,
                    }
                    .await
                }
            };
            let ended = match ended {
                None => Ended::Cancelled,
                Some(Ok(r)) => Ended::Returned(r),
                Some(Err(p)) => Ended::Panicked(p),
            };
            let res = match &ended {
                Ended::Returned(Ok(())) => Res::Ok,
                Ended::Returned(Err(e)) => Res::of_error(e),
                Ended::Panicked(_) => Res::Panic,
                Ended::Cancelled => Res::Cancelled,
            };
            self.result(tag, res);
            ended
        })
    }

    fn scoped(self: Arc<Self>, scope: Scope, tag: String) -> BoxFut<Result<(), ModelError>> {
        let attempts = Arc::new(AtomicU32::new(0));
        let scope = Arc::new(scope);
        let body = {
            let (run, scope, tag) = (self.clone(), scope.clone(), tag.clone());
            move |status: Option<TransactionStatus>| {
                let attempt = attempts.fetch_add(1, Ordering::Relaxed);
                run.clone()
                    .body(scope.clone(), tag.clone(), attempt, status)
            }
        };
        match scope.rule {
            Rule::Default => {
                let mut template =
                    TransactionTemplate::new(self.manager.clone()).propagation(scope.propagation);
                if let Some(d) = scope.deadline {
                    template = template.timeout(d.duration());
                }
                let closure = move |status: TransactionStatus| body(Some(status));
                if scope.retry > 0 {
                    let template = template
                        .retry(u32::from(scope.retry))
                        .error_type::<ModelError>();
                    Box::pin(async move { template.execute(closure).await })
                } else {
                    Box::pin(async move { template.execute(closure).await })
                }
            }
            rule => {
                let body = Mutex::new(body);
                let body: Body = Arc::new(move || (body.lock().unwrap())(None));
                ruled_call(
                    rule,
                    scope.propagation,
                    scope.retry > 0,
                    self.manager.clone(),
                    body,
                )
            }
        }
    }

    fn body(
        self: Arc<Self>,
        scope: Arc<Scope>,
        tag: String,
        attempt: u32,
        status: Option<TransactionStatus>,
    ) -> BoxFut<Result<(), ModelError>> {
        Box::pin(async move {
            *self
                .obs
                .lock()
                .unwrap()
                .calls
                .starts
                .entry(tag.clone())
                .or_insert(0) += 1;
            self.clone().ops(scope.ops.clone()).await?;
            match scope.end(attempt) {
                End::Ok => Ok(()),
                End::Fail => Err(ModelError::Fail),
                End::Kept => Err(ModelError::Kept),
                End::RollbackOnly => {
                    match status {
                        Some(s) => s.set_rollback_only(),
                        None => tx_sqlx::set_rollback_only()?,
                    }
                    Ok(())
                }
                End::Panic => std::panic::panic_any(ModelPanic),
                End::Fault(f) => {
                    self.fault(f, &format!("f{}.{attempt}", &tag[1..])).await?;
                    Err(ModelError::Tx(TxError::database(
                        tx_sqlx::Operation::Statement,
                        false,
                        "the faulty statement succeeded",
                    )))
                }
            }
        })
    }
}

/// The caller's handling of a call's end: `?` or ignore.
fn handle(ended: Ended, on_err: OnErr) -> Result<(), ModelError> {
    match (ended, on_err) {
        (Ended::Returned(Err(ModelError::Fail)), OnErr::SwallowFail) => Ok(()),
        (Ended::Returned(Err(e)), OnErr::Propagate | OnErr::SwallowFail) => Err(e),
        (Ended::Panicked(p), OnErr::Propagate | OnErr::SwallowFail) => resume_unwind(p),
        _ => Ok(()),
    }
}

/// Drops the inner future when it is still pending after `polls_left` polls.
struct CancelAfter<F> {
    fut: Option<Pin<Box<F>>>,
    polls_left: u8,
}

impl<F: Future> Future for CancelAfter<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(None);
        };
        match fut.as_mut().poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending => {
                self.polls_left = self.polls_left.saturating_sub(1);
                if self.polls_left == 0 {
                    self.fut = None;
                    Poll::Ready(None)
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hooks
// ---------------------------------------------------------------------------------------------

struct Recorder {
    run: Arc<Run>,
    tag: String,
    hook: Hook,
}

impl Recorder {
    fn record(&self, phase: &str) {
        self.run.log(format!("{}:{phase}", self.tag));
    }
}

impl TransactionSynchronization for Recorder {
    async fn before_commit(&self, _read_only: bool) -> Result<(), BoxError> {
        self.record("bc");
        match &self.hook.before_commit {
            BeforeCommit::Record => Ok(()),
            BeforeCommit::Fail => Err("the hook's before_commit fails".into()),
            BeforeCommit::Slow => {
                tokio::time::sleep(SLOW).await;
                Ok(())
            }
            BeforeCommit::SetRollbackOnly => {
                if let Err(e) = tx_sqlx::set_rollback_only() {
                    self.record(&format!("set_rollback_only={:?}", Res::of_tx(&e)));
                }
                Ok(())
            }
            BeforeCommit::Call { call, propagate } => {
                match (self.run.clone().call((**call).clone()).await, propagate) {
                    (Ended::Returned(Err(e)), true) => Err(Box::new(e)),
                    _ => Ok(()),
                }
            }
        }
    }

    async fn before_completion(&self) {
        self.record("bcpl");
    }

    async fn after_commit(&self) {
        self.record("ac");
        if self.hook.after_commit_insert {
            let tag = format!("a{}", &self.tag[1..]);
            let res = match self.run.insert(&tag).await {
                Ok(()) => Res::Ok,
                Err(e) => Res::of_tx(&e),
            };
            self.record(&format!("aci={res:?}"));
        }
    }

    async fn after_completion(&self, completion: Completion) {
        self.record(match completion {
            Completion::Committed => "acpl(C)",
            Completion::RolledBack => "acpl(R)",
            Completion::Unknown => "acpl(U)",
        });
    }
}

/// Waits until the log stops growing (hooks of cancelled scopes complete in the background).
pub async fn settle(run: &Run) {
    let mut last = run.log_len();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let now = run.log_len();
        if now == last {
            return;
        }
        last = now;
    }
}
