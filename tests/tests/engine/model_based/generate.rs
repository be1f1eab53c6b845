//! proptest strategies for programs, and the normalization that keeps every generated program
//! inside what the model decides (and fast): applied after generation, so that shrinking works
//! on the raw tree and every shrunk program is normalized the same way.

use proptest::prelude::*;

use super::program::*;

/// Switches that narrow the generator (all on by default: the full language).
#[derive(Clone, Copy, Debug)]
pub struct Features {
    pub joins: bool,
    pub cancellation: bool,
    pub deadlines: bool,
    pub retry: bool,
    pub hook_actions: bool,
    pub rules: bool,
    pub faults: bool,
    /// before_commit hooks that mark the transaction rollback-only (directly or through a
    /// failing participant).
    pub hook_rollback_only: bool,
    /// Bodies that compute past their deadline without awaiting.
    pub spin: bool,
    /// Joins inside a scope (two scopes of one transaction at once); joins of independent
    /// calls from plain code stay.
    pub joins_in_scope: bool,
}

impl Features {
    pub fn from_env() -> Features {
        let off = std::env::var("TX_MODEL_OFF").unwrap_or_default();
        let on = |name: &str| !off.split(',').any(|x| x.trim() == name);
        Features {
            joins: on("joins"),
            cancellation: on("cancellation"),
            deadlines: on("deadlines"),
            retry: on("retry"),
            hook_actions: on("hook_actions"),
            rules: on("rules"),
            faults: on("faults"),
            hook_rollback_only: on("hook_rollback_only"),
            spin: on("spin"),
            joins_in_scope: on("joins_in_scope"),
        }
    }
}

const DEPTH: u32 = 3;

pub fn program(backend: Backend, f: Features) -> impl Strategy<Value = Program> {
    let root_op = prop_oneof![
        2 => op(0),
        6 => call(DEPTH).prop_map(Op::Call),
        1 => (call(DEPTH), call(DEPTH)).prop_map(|(a, b)| Op::Join(Box::new(a), Box::new(b))),
    ];
    prop::collection::vec(root_op, 1..=4).prop_map(move |ops| {
        let mut p = Program { ops };
        normalize(&mut p, backend, f);
        p
    })
}

fn propagation() -> impl Strategy<Value = Propagation> {
    use Propagation as P;
    prop_oneof![
        3 => Just(P::Required),
        2 => Just(P::RequiresNew),
        3 => Just(P::Nested),
        1 => Just(P::Supports),
        1 => Just(P::NotSupported),
        1 => Just(P::Mandatory),
        1 => Just(P::Never),
    ]
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![
        12 => Just(End::Ok),
        3 => Just(End::Fail),
        2 => Just(End::Kept),
        2 => Just(End::RollbackOnly),
        1 => Just(End::Panic),
        1 => Just(End::Fault(Fault::Retryable)),
        1 => Just(End::Fault(Fault::Error)),
    ]
}

fn hook_call() -> impl Strategy<Value = Call> {
    (
        propagation(),
        prop::collection::vec(Just(Op::Insert(0)), 0..=2),
        prop_oneof![3 => Just(End::Ok), 2 => Just(End::Fail), 1 => Just(End::Kept)],
        prop_oneof![Just(Rule::Default), Just(Rule::NoRollbackForKept)],
    )
        .prop_map(|(propagation, ops, end, rule)| Call {
            id: 0,
            scope: Scope {
                propagation,
                rule,
                deadline: None,
                retry: 0,
                ops,
                ends: vec![end],
            },
            on_err: OnErr::Propagate,
            cancel_after: None,
        })
}

fn hook() -> impl Strategy<Value = Op> {
    let before_commit = prop_oneof![
        14 => Just(BeforeCommit::Record),
        1 => Just(BeforeCommit::Fail),
        1 => Just(BeforeCommit::Slow),
        1 => Just(BeforeCommit::SetRollbackOnly),
        2 => (hook_call(), any::<bool>())
            .prop_map(|(c, propagate)| BeforeCommit::Call { call: Box::new(c), propagate }),
    ];
    (before_commit, prop::bool::weighted(0.15)).prop_map(|(before_commit, after_commit_insert)| {
        Op::Hook(Hook {
            id: 0,
            before_commit,
            after_commit_insert,
        })
    })
}

fn op(depth: u32) -> BoxedStrategy<Op> {
    let leaf = prop_oneof![
        6 => Just(Op::Insert(0)),
        3 => hook(),
        1 => Just(Op::Yield),
        1 => Just(Op::Sleep),
        1 => Just(Op::Spin),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        9 => leaf,
        6 => call(depth).prop_map(Op::Call),
        1 => (call(depth), call(depth)).prop_map(|(a, b)| Op::Join(Box::new(a), Box::new(b))),
    ]
    .boxed()
}

fn call(depth: u32) -> BoxedStrategy<Call> {
    let scope = (
        propagation(),
        prop_oneof![8 => Just(Rule::Default), 2 => Just(Rule::NoRollbackForKept), 1 => Just(Rule::RollbackForFail)],
        prop_oneof![14 => Just(None), 1 => Just(Some(Deadline::Short)), 1 => Just(Some(Deadline::Long))],
        prop_oneof![8 => Just(0u8), 1 => Just(1u8), 2 => Just(2u8)],
        prop::collection::vec(op(depth - 1), 0..=4),
        prop::collection::vec(end(), 1..=2),
    )
        .prop_map(|(propagation, rule, deadline, retry, ops, ends)| Scope {
            propagation,
            rule,
            deadline,
            retry,
            ops,
            ends,
        });
    (
        scope,
        prop_oneof![
            6 => Just(OnErr::Propagate),
            3 => Just(OnErr::Swallow),
            1 => Just(OnErr::SwallowFail)
        ],
        prop_oneof![10 => Just(None), 1 => (1u8..=5).prop_map(Some)],
    )
        .prop_map(|(scope, on_err, cancel_after)| Call {
            id: 0,
            scope,
            on_err,
            cancel_after,
        })
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// Normalization
// ---------------------------------------------------------------------------------------------

/// Makes a raw tree a program the model covers, on `backend`:
/// - at most one short deadline (a second, racing deadline would make the outcome timing
///   dependent), only on a scope that contains a slow step, and slow steps only inside it;
///   a blocking spin only as the last op of that scope's own body, before `Ok` or `Fail`;
/// - rollback rules through `#[transactional]`: no deadline there, `retry` 0 or 2;
/// - cancellation only of calls that own their connection or have none (RequiresNew, or
///   called from plain code): dropping a participant mid-statement would break the
///   connection its owner goes on using; at most two per program; none of a call inside the
///   short-deadline scope that is slow itself (see below);
/// - a call in a before_commit hook only inserts;
/// - SQLite: no retryable fault (SQLite raises none on demand); a join inside a scope keeps
///   its branches on the joined connection (a second writer connection of the same task
///   would wait on the first's write lock while the join polls both: a real deadlock of the
///   program, not of the engine).
/// - PostgreSQL: no failing statement in a join inside a scope (whether the sibling's
///   statements ran before the transaction was aborted is timing);
/// - with `rollback_for` anywhere, no faults: committing after a failed statement is
///   backend-specific (PostgreSQL refuses).
pub fn normalize(p: &mut Program, backend: Backend, f: Features) {
    p.number();
    let mut has_rollback_for = false;
    let mut short_taken = false;
    let mut cancels = 0;
    for_each_call_mut(&mut p.ops, &mut |c, place| {
        let s = &mut c.scope;
        if !f.rules {
            s.rule = Rule::Default;
        }
        if s.rule != Rule::Default {
            s.deadline = None;
            if s.retry > 0 {
                s.retry = 2;
            }
        }
        if s.rule == Rule::RollbackForFail {
            has_rollback_for = true;
        }
        if !f.retry {
            s.retry = 0;
        }
        if !f.deadlines {
            s.deadline = None;
        }
        if s.deadline == Some(Deadline::Short) {
            if short_taken || place.under_short || !contains_slow(&s.ops) {
                s.deadline = Some(Deadline::Long);
            } else {
                short_taken = true;
            }
        }
        let may_cancel =
            !place.in_hook && (place.depth == 0 || s.propagation == Propagation::RequiresNew);
        if !f.cancellation || !may_cancel || cancels >= 2 {
            c.cancel_after = None;
        }
        if c.cancel_after.is_some() {
            cancels += 1;
        }
        for op in &mut s.ops {
            if let Op::Hook(h) = op {
                if !f.hook_actions {
                    h.before_commit = BeforeCommit::Record;
                    h.after_commit_insert = false;
                }
                if !f.hook_rollback_only
                    && matches!(
                        h.before_commit,
                        BeforeCommit::SetRollbackOnly | BeforeCommit::Call { .. }
                    )
                {
                    h.before_commit = BeforeCommit::Record;
                }
            }
            if !f.spin && matches!(op, Op::Spin) {
                *op = Op::Yield;
            }
        }
    });
    // Slow steps: only inside the short-deadline scope; spins only at its body's end.
    prune_slow(&mut p.ops, false, false);
    for_each_call_mut(&mut p.ops, &mut |c, place| {
        let s = &mut c.scope;
        let is_short = s.deadline == Some(Deadline::Short);
        for e in &mut s.ends {
            if let End::Fault(fault) = e {
                // PostgreSQL: a failed statement aborts the transaction, and in a join the
                // sibling's statements may run before or after it.
                let racing_abort = backend == Backend::Postgres && place.in_join && place.depth > 0;
                if !f.faults || has_rollback_for || place.in_hook || racing_abort {
                    *e = End::Fail;
                } else if backend == Backend::Sqlite && *fault == Fault::Retryable {
                    *fault = Fault::Error;
                }
            }
        }
        if is_short {
            let spin_last = matches!(s.ops.last(), Some(Op::Spin));
            if spin_last {
                s.ends.retain(|e| matches!(e, End::Ok | End::Fail));
                if s.ends.is_empty() {
                    s.ends.push(End::Ok);
                }
            }
            if !contains_slow(&s.ops) {
                s.deadline = Some(Deadline::Long);
            }
        }
        // The wake-up of the short deadline polls the scope's body once more before the engine
        // ends it: a cancellable call inside that is still pending on a slow step counts that
        // poll and may be dropped then, and its caller goes on past the deadline until its next
        // pending await (a statement's I/O, a yield): timing no model predicts. A cancellable
        // call around the short scope, or the short scope itself, is dropped whole and stays.
        if place.under_short && contains_slow(&s.ops) {
            c.cancel_after = None;
        }
        if place.in_hook {
            s.ops.retain(|op| matches!(op, Op::Insert(_)));
            s.retry = 0;
            s.deadline = None;
            for e in &mut s.ends {
                if !matches!(e, End::Ok | End::Fail | End::Kept) {
                    *e = End::Fail;
                }
            }
        }
        if !f.joins || !f.joins_in_scope {
            for op in &mut s.ops {
                if let Op::Join(a, _) = op {
                    *op = Op::Call((**a).clone());
                }
            }
        }
        if backend == Backend::Sqlite {
            for op in &mut s.ops {
                if let Op::Join(a, b) = op {
                    same_connection(a);
                    same_connection(b);
                }
            }
        }
    });
    if !f.joins {
        for op in &mut p.ops {
            if let Op::Join(a, _) = op {
                *op = Op::Call((**a).clone());
            }
        }
    }
    p.number();
}

fn contains_slow(ops: &[Op]) -> bool {
    ops.iter().any(|op| match op {
        Op::Sleep | Op::Spin => true,
        Op::Hook(h) => matches!(h.before_commit, BeforeCommit::Slow),
        Op::Call(c) => contains_slow(&c.scope.ops),
        Op::Join(a, b) => contains_slow(&a.scope.ops) || contains_slow(&b.scope.ops),
        _ => false,
    })
}

/// `own_short`: these are the short scope's own ops; `under`: inside it.
fn prune_slow(ops: &mut Vec<Op>, under: bool, own_short: bool) {
    let n = ops.len();
    let mut keep = Vec::with_capacity(n);
    for (i, mut op) in std::mem::take(ops).into_iter().enumerate() {
        match &mut op {
            Op::Sleep if !under => op = Op::Yield,
            Op::Spin if !(own_short && i + 1 == n) => continue,
            Op::Hook(h) if !under && matches!(h.before_commit, BeforeCommit::Slow) => {
                h.before_commit = BeforeCommit::Record;
            }
            Op::Call(c) => prune_call(c, under),
            Op::Join(a, b) => {
                prune_call(a, under);
                prune_call(b, under);
            }
            _ => {}
        }
        keep.push(op);
    }
    *ops = keep;
}

fn prune_call(c: &mut Call, under: bool) {
    let short = c.scope.deadline == Some(Deadline::Short);
    prune_slow(&mut c.scope.ops, under || short, short);
}

/// SQLite: keeps a joined branch on the connection of the transaction it joins.
fn same_connection(c: &mut Call) {
    c.scope.propagation = match c.scope.propagation {
        Propagation::RequiresNew => Propagation::Nested,
        Propagation::NotSupported => Propagation::Supports,
        p => p,
    };
    // Its cancellation was allowed for a RequiresNew call only.
    c.cancel_after = None;
    for op in &mut c.scope.ops {
        match op {
            Op::Call(x) => same_connection(x),
            Op::Join(a, b) => {
                same_connection(a);
                same_connection(b);
            }
            _ => {}
        }
    }
}
