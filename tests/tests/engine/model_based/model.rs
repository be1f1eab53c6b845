//! The semantics of a [`Program`], written from the product specification (propagation table,
//! outcome rules, rollback-only marking, synchronization phases and owners, timeouts,
//! cancellation, retry, SQLite's single writer, PostgreSQL's aborted transactions), not from
//! the engine.
//!
//! Where the real run may legitimately take one of several paths, the model is a function of a
//! sequence of choices: [`Chooser`] enumerates the sequences, and a run passes when one of the
//! worlds they give matches what was observed. Choices are pruned by what is certain from the
//! observation (which calls were cancelled, in which order hooks were registered); everything
//! else is predicted. The open points, each accepted both ways:
//! - where a dropped future was (any await point of the cancelled call: a statement, a
//!   SAVEPOINT or RELEASE, a phase of its completion), and whether a COMMIT in flight when the
//!   caller went away landed (`Committed`, `RolledBack` or `Unknown`, the rows to match);
//!   hooks that a cut completes may run in the background, each exactly once per phase;
//! - two joined calls interleave: their hook entries may interleave (each branch in its own
//!   order), hooks of one owner list run in the order they were registered, as observed;
//!   scopes of one transaction used by both branches may instead be refused with a typed
//!   `TxError` that says why (its message names the concurrency), never silently wrong;
//! - SQLite may begin a transaction for a SAVEPOINT, PostgreSQL may send a SAVEPOINT lazily;
//! - a before_commit hook that makes the transaction rollback-only: whether the later hooks'
//!   before_commit still runs; in a scope without a transaction (nothing to roll back),
//!   whether the mark is ignored;
//! - retry of a transaction that rolled back because a participant's retryable failure made
//!   it rollback-only, or that returned a retryable error raised outside it (a NotSupported or
//!   RequiresNew scope inside): the transaction did not itself end with that error.
//!
//! Readings taken where the specification is short (each from Spring where it is silent):
//! - a rollback-only mark belongs to the innermost savepoint or transaction around the
//!   participant that made it; rolling back to a savepoint undoes the marks made inside it and
//!   no other; a Nested scope whose body returned `Ok` after a participant inside marked it
//!   rolls back to its savepoint and returns `UnexpectedRollback`;
//! - a before_commit hook that returns `Err` stops the before_commit phase (the later hooks'
//!   before_commit does not run), then before_completion and after_completion(RolledBack) run
//!   for all, and the caller gets `TxError::BeforeCommit`;
//! - a cancelled scope's hooks see before_completion, then after_completion(RolledBack);
//! - after_commit runs outside the transaction: a statement there is autocommit (on SQLite it
//!   needs the write lock like any other).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::program::*;
use super::runner::{Calls, Observation, Res};

/// Enumerates choice sequences depth-first.
///
/// A world that already contradicts the observation (a call's result differs from the one
/// observed) is dead: its later choices are not recorded, so the next world changes the last
/// choice made before the contradiction instead of trying every combination of choices after
/// it (a large program has more of those than any search can try).
#[derive(Default)]
pub struct Chooser {
    script: Vec<usize>,
    arity: Vec<usize>,
    pos: usize,
    dead: bool,
}

impl Chooser {
    fn choose(&mut self, n: usize) -> usize {
        if n <= 1 || self.dead {
            return 0;
        }
        let c = if self.pos < self.script.len() {
            self.arity[self.pos] = n;
            self.script[self.pos].min(n - 1)
        } else {
            self.script.push(0);
            self.arity.push(n);
            0
        };
        self.pos += 1;
        c
    }

    /// Moves to the next world; false when every world was seen.
    pub fn next_world(&mut self) -> bool {
        self.dead = false;
        self.script.truncate(self.pos);
        self.arity.truncate(self.pos);
        self.pos = 0;
        while let (Some(last), Some(&n)) = (self.script.last_mut(), self.arity.last()) {
            if *last + 1 < n {
                *last += 1;
                return true;
            }
            self.script.pop();
            self.arity.pop();
        }
        false
    }
}

/// How a hook that a cut (cancellation, deadline) completed must look in the log: its entries
/// may come at any time after the cut (a dropped scope completes its hooks in the
/// background), but each hook exactly once per phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// `[bc] bcpl acpl(R)`.
    RolledBack,
    /// `bc bcpl ac [aci=..] acpl(C)`.
    Committed,
    /// `[bc] [bcpl] [ac [aci=..]] acpl(U)`.
    Unknown,
}

/// The expected hook log: entries in order, and the logs of two joined branches, which may
/// interleave (each in its own order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Entry(String),
    Par(Vec<Item>, Vec<Item>),
}

/// What the model expects of one world.
#[derive(Debug, Default, Clone)]
pub struct Expected {
    /// What each call and the root must get, and how often each body must start.
    pub calls: Calls,
    pub rows: BTreeSet<String>,
    /// Rows that may or may not be there (a statement in flight when its future was dropped).
    pub maybe_rows: BTreeSet<String>,
    /// Hook entries in order, except those of `patterns`' hooks.
    pub log: Vec<Item>,
    pub patterns: BTreeMap<String, Pattern>,
    /// The program did something the model does not cover (the case is not judged).
    pub unmodelled: Option<String>,
}

type TxId = usize;
type UnitId = usize;
type ListId = usize;

#[derive(Clone)]
struct HookInst {
    tag: String,
    hook: Hook,
}

struct TxState {
    /// SQLite: BEGIN IMMEDIATE has run (the write lock is held).
    begun: bool,
    /// PostgreSQL: a statement failed in this unit (or one inside it); statements fail until
    /// it is rolled back.
    aborted: Option<UnitId>,
    /// A statement of this transaction failed with a retryable error.
    saw_retryable: bool,
}

/// A transaction or one of its savepoints: what rolls back together.
struct Unit {
    tx: TxId,
    parent: Option<UnitId>,
    /// A participant failed or asked for rollback-only.
    marked: bool,
    /// ... and one of those failures was retryable.
    marked_retryable: bool,
    rows: Vec<String>,
    hooks: Vec<HookInst>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HookTarget {
    None,
    Unit(UnitId),
    List(ListId),
}

/// Who catches a cut: the call whose future was dropped, or the scope whose deadline fired.
#[derive(Clone, PartialEq, Eq, Debug)]
enum Cut {
    Cancel(String),
    Deadline(String),
}

#[derive(Clone)]
struct Ctx {
    bound: Option<(TxId, UnitId)>,
    hooks: HookTarget,
    suspended: Vec<TxId>,
    /// Transactions a joined sibling uses at the same time (the engine may refuse).
    shared: Vec<TxId>,
    /// The innermost new transaction with a short deadline (its call tag).
    short: Option<String>,
    /// Cancellable calls around (tags), innermost last.
    cancel: Vec<String>,
    /// A cut that already left a joined sibling: this branch may be dropped anywhere too.
    dropping: Option<Cut>,
}

/// One attempt of a call's scope: what each propagation's driver runs.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    scope: &'a Scope,
    /// The call instance's tag.
    tag: &'a str,
    /// 0 for the first run, then one more per retry.
    n: u32,
}

impl Ctx {
    /// This context, bound to `unit` of transaction `tx` (its hooks go to the unit).
    fn in_unit(&self, tx: TxId, unit: UnitId) -> Ctx {
        Ctx {
            bound: Some((tx, unit)),
            hooks: HookTarget::Unit(unit),
            ..self.clone()
        }
    }
}

enum Flow {
    Normal,
    Err(Res),
    Panic,
    Cut(Cut),
}

enum BodyEnd {
    Returned(Result<(), Res>),
    Panic,
    Cut(Cut),
}

pub struct Model<'a> {
    backend: Backend,
    obs: &'a Observation,
    reg_index: HashMap<&'a str, usize>,
    any_refusal: bool,
    ch: &'a mut Chooser,
    counters: HashMap<(char, OpId), u32>,
    txs: Vec<TxState>,
    units: Vec<Unit>,
    lists: Vec<Vec<HookInst>>,
    /// Deadline passed inside this call's body (a blocking spin), by call tag.
    spun: BTreeSet<String>,
    /// The last new transaction rolled back as rollback-only after a retryable failure of a
    /// participant.
    doomed_by_retryable: bool,
    /// The transaction the last new-transaction scope began.
    last_tx: Option<TxId>,
    /// `TX_MODEL_ACCEPT=nested_after_mark`: also accept a Nested scope that misses its
    /// participant's failure when the transaction was already rollback-only (exploration of
    /// other disagreements only; never the default).
    lenient_nested_mark: bool,
    out: Expected,
}

fn rolls_back(rule: Rule, res: &Res) -> bool {
    match rule {
        Rule::Default => true,
        Rule::NoRollbackForKept => *res != Res::Kept,
        Rule::RollbackForFail => *res == Res::Fail,
    }
}

/// Computes one world of `program`'s semantics.
pub fn expect(
    program: &Program,
    backend: Backend,
    obs: &Observation,
    ch: &mut Chooser,
) -> Expected {
    let mut reg_index = HashMap::new();
    for (i, e) in obs.log.iter().enumerate() {
        if let Some(tag) = e.strip_prefix("reg ") {
            reg_index.insert(tag, i);
        }
    }
    let mut m = Model {
        backend,
        obs,
        reg_index,
        any_refusal: obs.calls.results.values().any(|r| *r == Res::Refused),
        ch,
        counters: HashMap::new(),
        txs: Vec::new(),
        units: Vec::new(),
        lists: Vec::new(),
        spun: BTreeSet::new(),
        doomed_by_retryable: false,
        last_tx: None,
        lenient_nested_mark: std::env::var("TX_MODEL_ACCEPT")
            .is_ok_and(|v| v.split(',').any(|x| x.trim() == "nested_after_mark")),
        out: Expected::default(),
    };
    let ctx = Ctx {
        bound: None,
        hooks: HookTarget::None,
        suspended: Vec::new(),
        shared: Vec::new(),
        short: None,
        cancel: Vec::new(),
        dropping: None,
    };
    let root = match m.ops(&ctx, &program.ops) {
        Flow::Normal => Res::Ok,
        Flow::Err(r) => r,
        Flow::Panic => Res::Panic,
        Flow::Cut(c) => {
            m.unmodelled(&format!("a cut escaped to the root: {c:?}"));
            Res::Ok
        }
    };
    m.out.calls.root = Some(root);
    m.out
}

impl Model<'_> {
    /// Records what a call or a hook registration returned in this world.
    fn result(&mut self, tag: String, res: Res) {
        if self.obs.calls.results.get(&tag) != Some(&res) {
            self.ch.dead = true;
        }
        self.out.calls.results.insert(tag, res);
    }

    fn unmodelled(&mut self, why: &str) {
        // Only a world that agrees with the observation so far says what the model lacks.
        if self.out.unmodelled.is_none() && !self.ch.dead {
            self.out.unmodelled = Some(why.to_owned());
        }
    }

    fn instance(&mut self, kind: char, id: OpId) -> String {
        let n = self.counters.entry((kind, id)).or_insert(0);
        let tag = format!("{kind}{id}.{n}");
        *n += 1;
        tag
    }

    fn log(&mut self, tag: &str, phase: &str) {
        self.out.log.push(Item::Entry(format!("{tag}:{phase}")));
    }

    fn new_tx(&mut self) -> (TxId, UnitId) {
        self.txs.push(TxState {
            begun: false,
            aborted: None,
            saw_retryable: false,
        });
        let tx = self.txs.len() - 1;
        let unit = self.new_unit(tx, None);
        (tx, unit)
    }

    fn new_unit(&mut self, tx: TxId, parent: Option<UnitId>) -> UnitId {
        self.units.push(Unit {
            tx,
            parent,
            marked: false,
            marked_retryable: false,
            rows: Vec::new(),
            hooks: Vec::new(),
        });
        self.units.len() - 1
    }

    fn marked_above(&self, unit: UnitId) -> bool {
        let mut u = Some(unit);
        while let Some(x) = u {
            if self.units[x].marked {
                return true;
            }
            u = self.units[x].parent;
        }
        false
    }

    fn is_within(&self, unit: UnitId, ancestor: UnitId) -> bool {
        let mut u = Some(unit);
        while let Some(x) = u {
            if x == ancestor {
                return true;
            }
            u = self.units[x].parent;
        }
        false
    }

    /// Hooks in registration order (as observed: joined scopes register in any order).
    fn sorted(&self, mut hooks: Vec<HookInst>) -> Vec<HookInst> {
        hooks.sort_by_key(|h| {
            self.reg_index
                .get(h.tag.as_str())
                .copied()
                .unwrap_or(usize::MAX)
        });
        hooks
    }

    /// An await point inside cancellable calls: the caller may drop the future here.
    /// `in_flight`: a statement that may have run when dropped.
    fn cut_point(&mut self, ctx: &Ctx) -> Option<Cut> {
        let mut candidates: Vec<Cut> = ctx
            .cancel
            .iter()
            .filter(|t| self.obs.calls.results.get(*t) == Some(&Res::Cancelled))
            .map(|t| Cut::Cancel(t.clone()))
            .collect();
        if let Some(c) = &ctx.dropping {
            candidates.push(c.clone());
        }
        if candidates.is_empty() {
            return None;
        }
        let c = self.ch.choose(candidates.len() + 1);
        (c > 0).then(|| candidates.swap_remove(c - 1))
    }

    /// Hooks that a cut completes, in the background.
    fn cut_hooks(&mut self, hooks: Vec<HookInst>, pattern: Pattern) {
        for h in hooks {
            if h.hook.after_commit_insert && pattern != Pattern::RolledBack {
                self.out.maybe_rows.insert(format!("a{}", &h.tag[1..]));
            }
            self.out.patterns.insert(h.tag, pattern);
        }
    }

    fn take_unit(&mut self, unit: UnitId) -> (Vec<String>, Vec<HookInst>) {
        let u = &mut self.units[unit];
        (std::mem::take(&mut u.rows), std::mem::take(&mut u.hooks))
    }

    /// The rollback phases; the caller may go away while they run.
    #[must_use]
    fn rollback_hooks(&mut self, ctx: &Ctx, hooks: &[HookInst]) -> Option<Cut> {
        if let Some(cut) = self.cut_point(ctx) {
            self.cut_hooks(hooks.to_vec(), Pattern::RolledBack);
            return Some(cut);
        }
        self.rollback_hooks_now(hooks);
        None
    }

    fn rollback_hooks_now(&mut self, hooks: &[HookInst]) {
        for h in hooks {
            self.log(&h.tag, "bcpl");
        }
        for h in hooks {
            self.log(&h.tag, "acpl(R)");
        }
    }

    // -----------------------------------------------------------------------------------------
    // Statements
    // -----------------------------------------------------------------------------------------

    /// SQLite: a write on a connection other than the one of a suspended writer of this task
    /// would wait for itself.
    fn would_block(&self, ctx: &Ctx) -> bool {
        self.backend == Backend::Sqlite && ctx.suspended.iter().any(|t| self.txs[*t].begun)
    }

    /// Runs a statement where `ctx` sends it: `Ok(Some(unit))` in a transaction, `Ok(None)`
    /// in autocommit.
    fn statement(&mut self, ctx: &Ctx) -> Result<Option<UnitId>, Res> {
        match ctx.bound {
            Some((tx, unit)) => {
                if self.any_refusal && ctx.shared.contains(&tx) && self.ch.choose(2) == 1 {
                    return Err(Res::Refused);
                }
                if !self.txs[tx].begun {
                    if self.would_block(ctx) {
                        return Err(Res::WouldBlock);
                    }
                    self.txs[tx].begun = true;
                }
                if self.backend == Backend::Postgres && self.txs[tx].aborted.is_some() {
                    return Err(Res::Db { retryable: false });
                }
                Ok(Some(unit))
            }
            None => {
                if self.would_block(ctx) {
                    return Err(Res::WouldBlock);
                }
                Ok(None)
            }
        }
    }

    fn insert(&mut self, ctx: &Ctx, tag: String) -> Flow {
        if let Some(cut) = self.cut_point(ctx) {
            if ctx.bound.is_none() {
                self.out.maybe_rows.insert(tag);
            }
            return Flow::Cut(cut);
        }
        match self.statement(ctx) {
            Ok(Some(unit)) => {
                self.units[unit].rows.push(tag);
                Flow::Normal
            }
            Ok(None) => {
                self.out.rows.insert(tag);
                Flow::Normal
            }
            Err(r) => Flow::Err(r),
        }
    }

    fn fault(&mut self, ctx: &Ctx, fault: Fault) -> Flow {
        if let Some(cut) = self.cut_point(ctx) {
            return Flow::Cut(cut);
        }
        match self.statement(ctx) {
            Ok(unit) => {
                if let Some(unit) = unit {
                    let tx = self.units[unit].tx;
                    if fault == Fault::Retryable {
                        self.txs[tx].saw_retryable = true;
                    }
                    if self.backend == Backend::Postgres {
                        self.txs[tx].aborted.get_or_insert(unit);
                    }
                }
                Flow::Err(Res::Db {
                    retryable: fault == Fault::Retryable,
                })
            }
            Err(r) => Flow::Err(r),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Bodies
    // -----------------------------------------------------------------------------------------

    fn ops(&mut self, ctx: &Ctx, ops: &[Op]) -> Flow {
        for op in ops {
            let flow = match op {
                Op::Insert(id) => {
                    let tag = self.instance('o', *id);
                    self.insert(ctx, tag)
                }
                Op::Hook(h) => {
                    let tag = self.instance('h', h.id);
                    let inst = HookInst {
                        tag: tag.clone(),
                        hook: h.clone(),
                    };
                    match ctx.hooks {
                        HookTarget::None => {
                            self.result(tag, Res::NoTransaction);
                        }
                        HookTarget::Unit(u) => self.units[u].hooks.push(inst),
                        HookTarget::List(l) => self.lists[l].push(inst),
                    }
                    Flow::Normal
                }
                Op::Call(c) => {
                    let flow = self.call(ctx, c);
                    self.handle(flow, c.on_err)
                }
                Op::Join(a, b) => self.join(ctx, a, b),
                Op::Yield => match self.cut_point(ctx) {
                    Some(cut) => Flow::Cut(cut),
                    None => Flow::Normal,
                },
                Op::Sleep => match self.cut_point(ctx) {
                    Some(cut) => Flow::Cut(cut),
                    None => match &ctx.short {
                        Some(s) => Flow::Cut(Cut::Deadline(s.clone())),
                        None => Flow::Normal,
                    },
                },
                Op::Spin => {
                    // Computing without an await: the deadline passes unnoticed until the
                    // scope ends.
                    if let Some(s) = &ctx.short {
                        self.spun.insert(s.clone());
                    }
                    Flow::Normal
                }
            };
            match flow {
                Flow::Normal => {}
                other => return other,
            }
        }
        Flow::Normal
    }

    /// The caller's `?` or ignore.
    fn handle(&mut self, flow: Flow, on_err: OnErr) -> Flow {
        match (flow, on_err) {
            (Flow::Cut(c), _) => Flow::Cut(c),
            (Flow::Err(Res::Fail), OnErr::SwallowFail) => Flow::Normal,
            (Flow::Err(r), OnErr::Propagate | OnErr::SwallowFail) => Flow::Err(r),
            (Flow::Panic, OnErr::Propagate | OnErr::SwallowFail) => Flow::Panic,
            _ => Flow::Normal,
        }
    }

    fn join(&mut self, ctx: &Ctx, a: &Call, b: &Call) -> Flow {
        let mut inner = ctx.clone();
        if let Some((tx, _)) = ctx.bound {
            inner.shared.push(tx);
        }
        let before = std::mem::take(&mut self.out.log);
        let fa = self.call(&inner, a);
        let log_a = std::mem::take(&mut self.out.log);
        let mut sibling = inner.clone();
        if let Flow::Cut(cut) = &fa {
            // The whole join is dropped: the sibling ran concurrently and may be anywhere.
            sibling.dropping = Some(cut.clone());
        }
        let fb = self.call(&sibling, b);
        let log_b = std::mem::replace(&mut self.out.log, before);
        self.out.log.push(Item::Par(log_a, log_b));
        match (fa, fb) {
            (_, Flow::Cut(c)) | (Flow::Cut(c), _) => Flow::Cut(c),
            (fa, fb) => self.join_results(fa, a.on_err, fb, b.on_err),
        }
    }

    /// As the runner does after `join!`: a propagated panic of either branch continues
    /// first (a's, then b's), then a's error, then b's.
    fn join_results(&mut self, fa: Flow, on_a: OnErr, fb: Flow, on_b: OnErr) -> Flow {
        let (ha, hb) = (self.handle(fa, on_a), self.handle(fb, on_b));
        match (ha, hb) {
            (Flow::Panic, _) | (_, Flow::Panic) => Flow::Panic,
            (Flow::Normal, other) => other,
            (other, _) => other,
        }
    }

    /// A call: the result its caller gets (recorded), or a cut passing through.
    fn call(&mut self, ctx: &Ctx, call: &Call) -> Flow {
        // Dropped before its first poll (a joined sibling's cut, an outer cancellation).
        if let Some(cut) = self.cut_point(ctx) {
            return Flow::Cut(cut);
        }
        let tag = self.instance('c', call.id);
        let mut inner = ctx.clone();
        if call.cancel_after.is_some() {
            inner.cancel.push(tag.clone());
        }
        let flow = self.retried(&inner, call, &tag);
        let res = match flow {
            Flow::Cut(Cut::Cancel(t)) if t == tag => Res::Cancelled,
            Flow::Cut(c) => return Flow::Cut(c),
            Flow::Normal => Res::Ok,
            Flow::Err(ref r) => r.clone(),
            Flow::Panic => Res::Panic,
        };
        self.result(tag, res.clone());
        match res {
            Res::Ok | Res::Cancelled => Flow::Normal,
            Res::Panic => Flow::Panic,
            r => Flow::Err(r),
        }
    }

    /// The retry loop: again only when this call's own transaction rolled back because of a
    /// retryable failure.
    fn retried(&mut self, ctx: &Ctx, call: &Call, tag: &str) -> Flow {
        let mut attempt = 0;
        loop {
            self.doomed_by_retryable = false;
            let (flow, owned) = self.scope(ctx, call, tag, attempt);
            // A transaction that a participant's retryable failure made rollback-only rolled
            // back because of it, whatever error the body then returned (UnexpectedRollback,
            // its own): whether that is retried is open (both accepted).
            let doomed = std::mem::take(&mut self.doomed_by_retryable);
            let own_tx = if owned { self.last_tx } else { None };
            let may_retry = owned && attempt < u32::from(call.scope.retry);
            // A retryable error that the body returned but that happened outside the call's
            // own transaction (a NotSupported or RequiresNew scope inside): the transaction
            // rolled back because of it, yet did not itself fail with it; both readings are
            // accepted.
            let foreign = matches!(flow, Flow::Err(Res::Db { retryable: true }))
                && own_tx.is_some_and(|t| !self.txs[t].saw_retryable);
            let retryable = (matches!(flow, Flow::Err(Res::Db { retryable: true }))
                && (!foreign || (may_retry && self.ch.choose(2) == 1)))
                || (doomed
                    && owned
                    && attempt < u32::from(call.scope.retry)
                    && self.ch.choose(2) == 1);
            if owned && retryable && attempt < u32::from(call.scope.retry) {
                attempt += 1;
                continue;
            }
            return flow;
        }
    }

    fn start(&mut self, tag: &str) {
        *self.out.calls.starts.entry(tag.to_owned()).or_insert(0) += 1;
    }

    /// Starts scope `tag` and runs its body: its ops, then its end. The flag says whether the
    /// body marked its own scope rollback-only.
    fn body(&mut self, ctx: &Ctx, at: Attempt) -> (BodyEnd, bool) {
        self.start(at.tag);
        let mut local_ro = false;
        let end = self.body_end(ctx, at.scope, at.n, &mut local_ro);
        (end, local_ro)
    }

    fn body_end(&mut self, ctx: &Ctx, scope: &Scope, attempt: u32, local_ro: &mut bool) -> BodyEnd {
        match self.ops(ctx, &scope.ops) {
            Flow::Normal => {}
            Flow::Err(r) => return BodyEnd::Returned(Err(r)),
            Flow::Panic => return BodyEnd::Panic,
            Flow::Cut(c) => return BodyEnd::Cut(c),
        }
        match scope.end(attempt) {
            End::Ok => BodyEnd::Returned(Ok(())),
            End::Fail => BodyEnd::Returned(Err(Res::Fail)),
            End::Kept => BodyEnd::Returned(Err(Res::Kept)),
            End::RollbackOnly => {
                *local_ro = true;
                BodyEnd::Returned(Ok(()))
            }
            End::Panic => BodyEnd::Panic,
            End::Fault(f) => match self.fault(ctx, f) {
                Flow::Err(r) => BodyEnd::Returned(Err(r)),
                Flow::Cut(c) => BodyEnd::Cut(c),
                _ => unreachable!("a fault fails"),
            },
        }
    }

    /// One attempt of a scope, by the propagation table. Returns the flow and whether the
    /// scope began its own transaction.
    fn scope(&mut self, ctx: &Ctx, call: &Call, tag: &str, attempt: u32) -> (Flow, bool) {
        let scope = &call.scope;
        let at = Attempt {
            scope,
            tag,
            n: attempt,
        };
        use Propagation as P;
        if let (P::Required | P::Supports | P::Mandatory | P::Nested, Some((tx, unit))) =
            (scope.propagation, ctx.bound)
            && self.refused_at_entry(ctx, tx, tag, unit)
        {
            return (Flow::Err(Res::Refused), false);
        }
        match (scope.propagation, ctx.bound) {
            (P::Required | P::Supports | P::Mandatory, Some((_, unit))) => {
                (self.participant(ctx, at, unit), false)
            }
            (P::Nested, Some((tx, unit))) => (self.savepoint(ctx, at, tx, unit), false),
            (P::RequiresNew, Some((tx, _))) => {
                let mut inner = ctx.clone();
                inner.suspended.push(tx);
                (self.new_transaction(&inner, at), true)
            }
            (P::Required | P::RequiresNew | P::Nested, None) => {
                (self.new_transaction(ctx, at), true)
            }
            (P::NotSupported, Some((tx, _))) => {
                let mut inner = ctx.clone();
                inner.suspended.push(tx);
                inner.bound = None;
                inner.hooks = HookTarget::None;
                (self.without_transaction(&inner, at), false)
            }
            (P::Supports | P::NotSupported | P::Never, None) => {
                (self.without_transaction(ctx, at), false)
            }
            (P::Mandatory, None) => (Flow::Err(Res::NoTransaction), false),
            (P::Never, Some(_)) => (Flow::Err(Res::ExistingTransaction), false),
        }
    }

    /// The engine may refuse a scope joining or nesting into a transaction a joined sibling is
    /// using (the model follows the observation there; the refused call never ran its body).
    /// A refusal may mark `unit`, the scope's bound unit, rollback-only.
    fn refused_at_entry(&mut self, ctx: &Ctx, tx: TxId, tag: &str, unit: UnitId) -> bool {
        let refused = ctx.shared.contains(&tx)
            && self.obs.calls.results.get(tag) == Some(&Res::Refused)
            && !self.obs.calls.starts.contains_key(tag);
        if refused && self.ch.choose(2) == 1 {
            self.units[unit].marked = true;
        }
        refused
    }

    fn participant(&mut self, ctx: &Ctx, at: Attempt, unit: UnitId) -> Flow {
        let (end, local_ro) = self.body(ctx, at);
        match end {
            BodyEnd::Cut(c) => {
                self.units[unit].marked = true;
                Flow::Cut(c)
            }
            BodyEnd::Panic => {
                self.units[unit].marked = true;
                Flow::Panic
            }
            BodyEnd::Returned(r) => {
                let fails = match &r {
                    Ok(()) => local_ro,
                    Err(e) => local_ro || rolls_back(at.scope.rule, e),
                };
                if fails {
                    self.units[unit].marked = true;
                    if r == Err(Res::Db { retryable: true }) {
                        self.units[unit].marked_retryable = true;
                    }
                }
                into_flow(r)
            }
        }
    }

    fn savepoint(&mut self, ctx: &Ctx, at: Attempt, tx: TxId, parent: UnitId) -> Flow {
        if self.backend == Backend::Postgres
            && self.txs[tx].aborted.is_some()
            && self.ch.choose(2) == 0
        {
            // SAVEPOINT in an aborted transaction fails (unless the engine sends it lazily,
            // with the scope's first statement, which then fails).
            return Flow::Err(Res::Db { retryable: false });
        }
        if self.backend == Backend::Sqlite && !self.txs[tx].begun && self.ch.choose(2) == 1 {
            // The engine may begin the transaction for the SAVEPOINT.
            if self.would_block(ctx) {
                return Flow::Err(Res::WouldBlock);
            }
            self.txs[tx].begun = true;
        }
        // Dropped while SAVEPOINT is in flight.
        if let Some(cut) = self.cut_point(ctx) {
            return Flow::Cut(cut);
        }
        let unit = self.new_unit(tx, Some(parent));
        let inner = ctx.in_unit(tx, unit);
        let (end, local_ro) = self.body(&inner, at);
        let (rows, hooks) = self.take_unit(unit);
        let mut marked = self.units[unit].marked;
        if marked && self.lenient_nested_mark && self.marked_above(parent) && self.ch.choose(2) == 1
        {
            // Exploration only (TX_MODEL_ACCEPT=nested_after_mark): the engine's reading.
            marked = false;
        }
        let clear_abort = |m: &mut Self| {
            if let Some(a) = m.txs[tx].aborted
                && m.is_within(a, unit)
            {
                m.txs[tx].aborted = None;
            }
        };
        let rollback = match &end {
            BodyEnd::Cut(c) => {
                let hooks = self.sorted(hooks);
                self.cut_hooks(hooks, Pattern::RolledBack);
                clear_abort(self);
                return Flow::Cut(c.clone());
            }
            BodyEnd::Panic => true,
            BodyEnd::Returned(Ok(())) => local_ro || marked,
            BodyEnd::Returned(Err(e)) => local_ro || marked || rolls_back(at.scope.rule, e),
        };
        if rollback {
            let hooks = self.sorted(hooks);
            if let Some(cut) = self.rollback_hooks(&inner, &hooks) {
                return Flow::Cut(cut);
            }
            clear_abort(self);
            match end {
                BodyEnd::Panic => Flow::Panic,
                BodyEnd::Returned(Ok(())) if marked && !local_ro => {
                    Flow::Err(Res::UnexpectedRollback)
                }
                BodyEnd::Returned(Ok(())) => Flow::Normal,
                BodyEnd::Returned(Err(e)) => Flow::Err(e),
                BodyEnd::Cut(_) => unreachable!(),
            }
        } else {
            if let Some(a) = self.txs[tx].aborted
                && self.is_within(a, unit)
            {
                self.unmodelled("RELEASE SAVEPOINT in an aborted PostgreSQL transaction");
            }
            // Dropped while RELEASE is in flight: the transaction goes with the caller.
            if let Some(cut) = self.cut_point(&inner) {
                let hooks = self.sorted(hooks);
                self.cut_hooks(hooks, Pattern::RolledBack);
                return Flow::Cut(cut);
            }
            // Release: rows and hooks now belong to the parent.
            self.units[parent].rows.extend(rows);
            self.units[parent].hooks.extend(hooks);
            match end {
                BodyEnd::Returned(r) => into_flow(r),
                _ => unreachable!(),
            }
        }
    }

    fn new_transaction(&mut self, ctx: &Ctx, at: Attempt) -> Flow {
        let (tx, unit) = self.new_tx();
        let flow = self.new_transaction_in(ctx, at, tx, unit);
        self.last_tx = Some(tx);
        // Rolled back after a participant's retryable failure made it rollback-only.
        self.doomed_by_retryable =
            self.units[unit].marked_retryable && matches!(flow, Flow::Err(_));
        flow
    }

    fn new_transaction_in(&mut self, ctx: &Ctx, at: Attempt, tx: TxId, unit: UnitId) -> Flow {
        let Attempt { scope, tag, .. } = at;
        let mut inner = ctx.in_unit(tx, unit);
        let short = scope.deadline == Some(Deadline::Short);
        if short {
            inner.short = Some(tag.to_owned());
        }
        let (end, local_ro) = self.body(&inner, at);
        let spun = self.spun.remove(tag);
        let r = match end {
            BodyEnd::Cut(Cut::Deadline(t)) if t == tag => {
                let (_, hooks) = self.take_unit(unit);
                let hooks = self.sorted(hooks);
                if let Some(cut) = self.rollback_hooks(&inner, &hooks) {
                    return Flow::Cut(cut);
                }
                return Flow::Err(Res::Timeout);
            }
            BodyEnd::Cut(c) => {
                // Dropped: rolled back, its hooks completed in the background.
                let (_, hooks) = self.take_unit(unit);
                let hooks = self.sorted(hooks);
                self.cut_hooks(hooks, Pattern::RolledBack);
                return Flow::Cut(c);
            }
            BodyEnd::Panic => {
                let (_, hooks) = self.take_unit(unit);
                let hooks = self.sorted(hooks);
                if let Some(cut) = self.rollback_hooks(&inner, &hooks) {
                    return Flow::Cut(cut);
                }
                return Flow::Panic;
            }
            BodyEnd::Returned(r) => r,
        };
        let (rows, hooks) = self.take_unit(unit);
        let hooks = self.sorted(hooks);
        if spun {
            // Past the deadline nothing commits.
            if let Some(cut) = self.rollback_hooks(&inner, &hooks) {
                return Flow::Cut(cut);
            }
            return Flow::Err(Res::Timeout);
        }
        let commit = match &r {
            Ok(()) => !local_ro,
            Err(e) => !local_ro && !rolls_back(scope.rule, e),
        };
        if !commit {
            if let Some(cut) = self.rollback_hooks(&inner, &hooks) {
                return Flow::Cut(cut);
            }
            return into_flow(r);
        }
        if self.units[unit].marked {
            if let Some(cut) = self.rollback_hooks(&inner, &hooks) {
                return Flow::Cut(cut);
            }
            return Flow::Err(Res::UnexpectedRollback);
        }
        if self.txs[tx].aborted.is_some() {
            self.unmodelled("COMMIT of an aborted PostgreSQL transaction");
        }
        let mut after = ctx.clone();
        after.bound = None;
        let owner = Owner::Tx { unit, short };
        self.commit_phase(&inner, &after, hooks, owner, rows, r)
    }

    fn without_transaction(&mut self, ctx: &Ctx, at: Attempt) -> Flow {
        let (list, owner) = match ctx.hooks {
            HookTarget::List(l) => (l, false),
            _ => {
                self.lists.push(Vec::new());
                (self.lists.len() - 1, true)
            }
        };
        let mut inner = ctx.clone();
        inner.hooks = HookTarget::List(list);
        let (end, local_ro) = self.body(&inner, at);
        if !owner {
            return match end {
                BodyEnd::Cut(c) => Flow::Cut(c),
                BodyEnd::Panic => Flow::Panic,
                BodyEnd::Returned(r) => into_flow(r),
            };
        }
        let hooks = std::mem::take(&mut self.lists[list]);
        let hooks = self.sorted(hooks);
        let r = match end {
            BodyEnd::Cut(c) => {
                self.cut_hooks(hooks, Pattern::RolledBack);
                return Flow::Cut(c);
            }
            BodyEnd::Panic => {
                if let Some(cut) = self.rollback_hooks(&inner, &hooks) {
                    return Flow::Cut(cut);
                }
                return Flow::Panic;
            }
            BodyEnd::Returned(r) => r,
        };
        let failed = match &r {
            Ok(()) => local_ro,
            Err(e) => local_ro || rolls_back(at.scope.rule, e),
        };
        if failed {
            if let Some(cut) = self.rollback_hooks(&inner, &hooks) {
                return Flow::Cut(cut);
            }
            return into_flow(r);
        }
        let after = inner.clone();
        self.commit_phase(&inner, &after, hooks, Owner::NoTx, Vec::new(), r)
    }

    /// Marks hooks as completed by a cut: drops their entries from the ordered log.
    fn cut_owned_hooks(&mut self, hooks: &[HookInst], pattern: Pattern) {
        let tags: BTreeSet<&str> = hooks.iter().map(|h| h.tag.as_str()).collect();
        fn strip(items: &mut Vec<Item>, tags: &BTreeSet<&str>) {
            items.retain_mut(|item| match item {
                Item::Entry(e) => !tags.contains(e.split(':').next().unwrap_or("")),
                Item::Par(a, b) => {
                    strip(a, tags);
                    strip(b, tags);
                    true
                }
            });
        }
        strip(&mut self.out.log, &tags);
        self.cut_hooks(hooks.to_vec(), pattern);
    }

    /// The commit of an owner whose body asked for it: before_commit (which may veto),
    /// before_completion, COMMIT, after_commit, after_completion(Committed).
    fn commit_phase(
        &mut self,
        owner_ctx: &Ctx,
        after_ctx: &Ctx,
        hooks: Vec<HookInst>,
        owner: Owner,
        rows: Vec<String>,
        r: Result<(), Res>,
    ) -> Flow {
        if let Some(cut) = self.cut_point(owner_ctx) {
            self.cut_owned_hooks(&hooks, Pattern::RolledBack);
            return Flow::Cut(cut);
        }
        let mut vetoed = false;
        let mut timed_out = false;
        let mut marked_in_hook = false;
        let n = hooks.len();
        for (i, h) in hooks.iter().enumerate() {
            self.log(&h.tag, "bc");
            let last = i + 1 == n;
            match &h.hook.before_commit {
                BeforeCommit::Record => {}
                BeforeCommit::Fail => {
                    vetoed = true;
                    break;
                }
                BeforeCommit::Slow => match owner {
                    Owner::Tx { short: true, .. } => {
                        timed_out = true;
                        // Whether the later hooks' before_commit still runs is open.
                        if !last && self.ch.choose(2) == 1 {
                            break;
                        }
                    }
                    _ => {
                        if let Some(s) = &owner_ctx.short {
                            // An outer deadline fires while this owner commits.
                            let s = s.clone();
                            self.cut_owned_hooks(&hooks, Pattern::RolledBack);
                            return Flow::Cut(Cut::Deadline(s));
                        }
                    }
                },
                BeforeCommit::SetRollbackOnly => {
                    marked_in_hook = true;
                    if !last && self.ch.choose(2) == 1 {
                        break;
                    }
                }
                BeforeCommit::Call { call, propagate } => {
                    let marked_before = match owner {
                        Owner::Tx { unit, .. } => self.units[unit].marked,
                        Owner::NoTx => false,
                    };
                    match self.call(owner_ctx, call) {
                        Flow::Err(_) if *propagate => {
                            vetoed = true;
                            break;
                        }
                        Flow::Cut(_) | Flow::Panic => {
                            self.unmodelled("a cut or panic in a before_commit call");
                        }
                        _ => {}
                    }
                    if let Owner::Tx { unit, .. } = owner
                        && self.units[unit].marked
                        && !marked_before
                    {
                        marked_in_hook = true;
                        if !last && self.ch.choose(2) == 1 {
                            break;
                        }
                    }
                }
            }
        }
        // Statements of services called from before_commit ran in the transaction.
        let mut rows = rows;
        if let Owner::Tx { unit, .. } = owner {
            rows.append(&mut self.units[unit].rows);
        }
        if vetoed {
            if let Some(cut) = self.rollback_hooks(owner_ctx, &hooks) {
                return Flow::Cut(cut);
            }
            return Flow::Err(Res::BeforeCommit);
        }
        if timed_out {
            self.cut_owned_hooks(&hooks, Pattern::RolledBack);
            return Flow::Err(Res::Timeout);
        }
        if marked_in_hook {
            // A transaction marked rollback-only in before_commit rolls back; a scope without
            // one has nothing to roll back (the specification is silent: both accepted).
            let roll_back = match owner {
                Owner::Tx { .. } => true,
                Owner::NoTx => self.ch.choose(2) == 1,
            };
            if roll_back {
                if let Some(cut) = self.rollback_hooks(owner_ctx, &hooks) {
                    return Flow::Cut(cut);
                }
                return Flow::Err(Res::UnexpectedRollback);
            }
        }
        if let Some(cut) = self.cut_point(owner_ctx) {
            self.cut_owned_hooks(&hooks, Pattern::RolledBack);
            return Flow::Cut(cut);
        }
        for h in &hooks {
            self.log(&h.tag, "bcpl");
        }
        if let Owner::Tx { .. } = owner
            && let Some(cut) = self.cut_point(owner_ctx)
        {
            // The caller went away with COMMIT in flight.
            let pattern = match self.ch.choose(3) {
                0 => Pattern::Committed,
                1 => Pattern::RolledBack,
                _ => Pattern::Unknown,
            };
            match pattern {
                Pattern::Committed => self.out.rows.extend(rows),
                Pattern::RolledBack => {}
                Pattern::Unknown => self.out.maybe_rows.extend(rows),
            }
            self.cut_owned_hooks(&hooks, pattern);
            return Flow::Cut(cut);
        }
        self.out.rows.extend(rows);
        if let Some(cut) = self.cut_point(owner_ctx) {
            self.cut_owned_hooks(&hooks, Pattern::Committed);
            return Flow::Cut(cut);
        }
        for h in &hooks {
            self.log(&h.tag, "ac");
            if h.hook.after_commit_insert {
                let tag = format!("a{}", &h.tag[1..]);
                let res = match self.statement(after_ctx) {
                    Ok(_) => {
                        self.out.rows.insert(tag);
                        Res::Ok
                    }
                    Err(e) => e,
                };
                self.log(&h.tag, &format!("aci={res:?}"));
            }
        }
        for h in &hooks {
            self.log(&h.tag, "acpl(C)");
        }
        into_flow(r)
    }
}

#[derive(Clone, Copy)]
enum Owner {
    Tx { unit: UnitId, short: bool },
    NoTx,
}

fn into_flow(r: Result<(), Res>) -> Flow {
    match r {
        Ok(()) => Flow::Normal,
        Err(e) => Flow::Err(e),
    }
}
