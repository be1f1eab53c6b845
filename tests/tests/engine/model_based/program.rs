//! The language of generated transactional programs: a tree of scopes, statements, hooks,
//! joins, cancellations, retries and deadlines, and how each part is named in the logs.

use std::fmt;
use std::time::Duration;

pub use tx_sqlx::Propagation;

/// Index of an op in its program, assigned in preorder by [`Program::number`]. Tags of rows,
/// hooks and calls are `<kind><id>.<n>`, `n` counting how often that op ran before (a retried
/// body runs its ops again).
pub type OpId = u16;

/// A short deadline: always fires, because the scope that has it contains a [`Op::Sleep`],
/// a [`Op::Spin`] or a slow hook (each [`SLOW`]).
pub const SHORT: Duration = Duration::from_millis(150);
/// A deadline that never fires in a program of this size.
pub const LONG: Duration = Duration::from_secs(10);
/// How long a slow step takes: well past [`SHORT`], whatever the machine's load.
pub const SLOW: Duration = Duration::from_millis(500);

/// Which server the program runs on (some generated features depend on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    MySql,
    Sqlite,
}

#[derive(Clone)]
pub struct Program {
    /// Plain code outside every scope.
    pub ops: Vec<Op>,
}

#[derive(Clone)]
pub enum Op {
    /// `INSERT` of a unique tag through `&TxPool`; a failure is returned by the body (`?`).
    Insert(OpId),
    /// `register_synchronization` of a recording hook.
    Hook(Hook),
    /// One transactional call.
    Call(Call),
    /// `tokio::join!` of two calls.
    Join(Box<Call>, Box<Call>),
    /// `tokio::task::yield_now()`: an await point without database work.
    Yield,
    /// `tokio::time::sleep(SLOW)`.
    Sleep,
    /// `std::thread::sleep(SLOW)`: computes without awaiting.
    Spin,
}

#[derive(Clone, Debug)]
pub struct Hook {
    pub id: OpId,
    pub before_commit: BeforeCommit,
    /// after_commit writes a row (`a<id>.<n>`) through `&TxPool`, outside the transaction.
    pub after_commit_insert: bool,
}

/// What the hook's before_commit does besides recording itself.
#[derive(Clone, Debug)]
pub enum BeforeCommit {
    Record,
    /// Returns `Err`.
    Fail,
    /// Sleeps [`SLOW`].
    Slow,
    /// Calls `tx::set_rollback_only()`.
    SetRollbackOnly,
    /// Runs a call (a service called from the hook); `propagate`: returns its `Err`.
    Call {
        call: Box<Call>,
        propagate: bool,
    },
}

#[derive(Clone)]
pub struct Call {
    pub id: OpId,
    pub scope: Scope,
    /// What the caller does with an `Err` (or a panic) of this call.
    pub on_err: OnErr,
    /// Drop the call's future when it is still pending after this many polls.
    pub cancel_after: Option<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OnErr {
    /// `?` (a panic continues).
    Propagate,
    /// Ignore it (a panic is caught with `catch_unwind`).
    Swallow,
    /// Ignore `Err(ModelError::Fail)` only; `?` for any other error (a panic continues).
    SwallowFail,
}

#[derive(Clone, Debug)]
pub struct Scope {
    pub propagation: Propagation,
    pub rule: Rule,
    pub deadline: Option<Deadline>,
    pub retry: u8,
    pub ops: Vec<Op>,
    /// How attempt `i` ends: `ends[min(i, len - 1)]`.
    pub ends: Vec<End>,
}

/// The rollback rules.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Rule {
    /// Every `Err` rolls back (`TransactionTemplate`).
    Default,
    /// `#[transactional(no_rollback_for = ModelError::Kept)]`.
    NoRollbackForKept,
    /// `#[transactional(rollback_for = ModelError::Fail)]`: only `Fail` rolls back.
    RollbackForFail,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Deadline {
    Short,
    Long,
}

impl Deadline {
    pub fn duration(self) -> Duration {
        match self {
            Deadline::Short => SHORT,
            Deadline::Long => LONG,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum End {
    Ok,
    /// `Err(ModelError::Fail)`.
    Fail,
    /// `Err(ModelError::Kept)`.
    Kept,
    /// `status.set_rollback_only()`, then `Ok`.
    RollbackOnly,
    /// `panic_any(ModelPanic)`.
    Panic,
    /// A failing statement, its error returned.
    Fault(Fault),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fault {
    /// SQLSTATE 40001 raised by the server (PostgreSQL `RAISE`, MariaDB `SIGNAL`).
    Retryable,
    /// A statement error that is not retryable (a unique-key violation within the statement;
    /// MariaDB: `SIGNAL SQLSTATE '45000'`, which takes no locks).
    Error,
}

impl Scope {
    pub fn end(&self, attempt: u32) -> End {
        self.ends[(attempt as usize).min(self.ends.len() - 1)]
    }
}

// ---------------------------------------------------------------------------------------------
// Numbering and walking
// ---------------------------------------------------------------------------------------------

impl Program {
    /// Assigns op ids in preorder.
    pub fn number(&mut self) {
        let mut next = 0;
        number_ops(&mut self.ops, &mut next);
    }
}

fn number_ops(ops: &mut [Op], next: &mut OpId) {
    for op in ops {
        match op {
            Op::Insert(id) => {
                *id = *next;
                *next += 1;
            }
            Op::Hook(h) => {
                h.id = *next;
                *next += 1;
                if let BeforeCommit::Call { call, .. } = &mut h.before_commit {
                    number_call(call, next);
                }
            }
            Op::Call(c) => number_call(c, next),
            Op::Join(a, b) => {
                number_call(a, next);
                number_call(b, next);
            }
            Op::Yield | Op::Sleep | Op::Spin => {}
        }
    }
}

fn number_call(c: &mut Call, next: &mut OpId) {
    c.id = *next;
    *next += 1;
    number_ops(&mut c.scope.ops, next);
}

/// Visits every call of `ops`, with its depth in calls and whether it is inside a join.
pub fn for_each_call_mut(ops: &mut [Op], f: &mut dyn FnMut(&mut Call, CallPlace)) {
    walk_ops(ops, CallPlace::default(), f);
}

#[derive(Clone, Copy, Default)]
pub struct CallPlace {
    /// Calls around this one (0: called from plain code).
    pub depth: u32,
    /// Inside a short-deadline scope.
    pub under_short: bool,
    /// A branch of a join, or inside one.
    pub in_join: bool,
    /// Called from a before_commit hook.
    pub in_hook: bool,
}

fn walk_ops(ops: &mut [Op], place: CallPlace, f: &mut dyn FnMut(&mut Call, CallPlace)) {
    for op in ops {
        match op {
            Op::Call(c) => walk_call(c, place, f),
            Op::Join(a, b) => {
                let p = CallPlace {
                    in_join: true,
                    ..place
                };
                walk_call(a, p, f);
                walk_call(b, p, f);
            }
            Op::Hook(h) => {
                if let BeforeCommit::Call { call, .. } = &mut h.before_commit {
                    let p = CallPlace {
                        in_hook: true,
                        ..place
                    };
                    walk_call(call, p, f);
                }
            }
            _ => {}
        }
    }
}

fn walk_call(c: &mut Call, place: CallPlace, f: &mut dyn FnMut(&mut Call, CallPlace)) {
    f(c, place);
    let inner = CallPlace {
        depth: place.depth + 1,
        under_short: place.under_short || c.scope.deadline == Some(Deadline::Short),
        ..place
    };
    walk_ops(&mut c.scope.ops, inner, f);
}

// ---------------------------------------------------------------------------------------------
// Printing: a program prints as the Rust-like code it runs
// ---------------------------------------------------------------------------------------------

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "program {{")?;
        for op in &self.ops {
            fmt_op(f, op, 1)?;
        }
        write!(f, "}}")
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_op(f, self, 0)
    }
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_call(f, self, 0)
    }
}

fn indent(f: &mut fmt::Formatter<'_>, n: usize) -> fmt::Result {
    write!(f, "{:width$}", "", width = n * 4)
}

fn fmt_op(f: &mut fmt::Formatter<'_>, op: &Op, depth: usize) -> fmt::Result {
    indent(f, depth)?;
    match op {
        Op::Insert(id) => writeln!(f, "insert o{id};"),
        Op::Hook(h) => {
            write!(f, "hook h{}", h.id)?;
            match &h.before_commit {
                BeforeCommit::Record => {}
                BeforeCommit::Fail => write!(f, " before_commit=Err")?,
                BeforeCommit::Slow => write!(f, " before_commit=sleep(SLOW)")?,
                BeforeCommit::SetRollbackOnly => write!(f, " before_commit=set_rollback_only()")?,
                BeforeCommit::Call { call, propagate } => {
                    writeln!(
                        f,
                        " before_commit={} call:",
                        if *propagate { "return" } else { "ignore" }
                    )?;
                    fmt_call(f, call, depth + 1)?;
                    indent(f, depth)?;
                }
            }
            if h.after_commit_insert {
                write!(f, " after_commit=insert")?;
            }
            writeln!(f, ";")
        }
        Op::Call(c) => {
            write!(f, "call ")?;
            fmt_call_inline(f, c, depth)
        }
        Op::Join(a, b) => {
            writeln!(f, "join! {{")?;
            fmt_call(f, a, depth + 1)?;
            fmt_call(f, b, depth + 1)?;
            indent(f, depth)?;
            writeln!(f, "}}")
        }
        Op::Yield => writeln!(f, "yield_now();"),
        Op::Sleep => writeln!(f, "sleep(SLOW);"),
        Op::Spin => writeln!(f, "spin(SLOW);"),
    }
}

fn fmt_call(f: &mut fmt::Formatter<'_>, c: &Call, depth: usize) -> fmt::Result {
    indent(f, depth)?;
    fmt_call_inline(f, c, depth)
}

fn fmt_call_inline(f: &mut fmt::Formatter<'_>, c: &Call, depth: usize) -> fmt::Result {
    let s = &c.scope;
    write!(f, "c{} = {:?}", c.id, s.propagation)?;
    match s.rule {
        Rule::Default => {}
        Rule::NoRollbackForKept => write!(f, " no_rollback_for=Kept")?,
        Rule::RollbackForFail => write!(f, " rollback_for=Fail")?,
    }
    if let Some(d) = s.deadline {
        write!(f, " timeout={:?}", d.duration())?;
    }
    if s.retry > 0 {
        write!(f, " retry={}", s.retry)?;
    }
    if let Some(k) = c.cancel_after {
        write!(f, " cancel_after_polls={k}")?;
    }
    match c.on_err {
        OnErr::Propagate => {}
        OnErr::Swallow => write!(f, " ignore_err")?,
        OnErr::SwallowFail => write!(f, " ignore_fail")?,
    }
    writeln!(f, " {{")?;
    for op in &s.ops {
        fmt_op(f, op, depth + 1)?;
    }
    indent(f, depth + 1)?;
    let ends: Vec<String> = s.ends.iter().map(|e| format!("{e:?}")).collect();
    writeln!(f, "end {}", ends.join(" then "))?;
    indent(f, depth)?;
    writeln!(f, "}}")
}
