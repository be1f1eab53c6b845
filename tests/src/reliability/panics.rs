//! Panics in the body and in hooks, at every level.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tx_sqlx::{BoxError, Completion, Propagation, TransactionSynchronization, TxError};

use super::backend::{Server, eventually, nothing_left};
use super::errors::{AppError, INJECTED_PANIC, quiet_injected_panics};
use super::hooks::{Completions, completion_of, completions_of, record_completion, saw_exactly};

/// Where a panic is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicAt {
    /// In the transactional body.
    Body,
    /// In a `before_commit` hook.
    BeforeCommit,
    /// In an `after_commit` hook.
    AfterCommit,
}

/// At which scope the panic is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The outer transaction (a new Required).
    Outer,
    /// A RequiresNew transaction inside it.
    RequiresNew,
    /// A Nested savepoint inside it.
    Nested,
    /// A Required participant joined to it.
    Participant,
}

struct PanicHook {
    at: PanicAt,
    completions: Completions,
}

impl TransactionSynchronization for PanicHook {
    async fn before_commit(&self, _read_only: bool) -> Result<(), BoxError> {
        if self.at == PanicAt::BeforeCommit {
            panic!("{INJECTED_PANIC} in before_commit");
        }
        Ok(())
    }

    async fn after_commit(&self) {
        if self.at == PanicAt::AfterCommit {
            panic!("{INJECTED_PANIC} in after_commit");
        }
    }

    async fn after_completion(&self, completion: Completion) {
        self.completions.lock().unwrap().push(completion);
    }
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// `Ok`.
    Ok,
    /// `Err(TxError::BeforeCommit)`.
    BeforeCommitErr,
    /// `Err(TxError::UnexpectedRollback)`.
    UnexpectedRollback,
    /// The panic came out of the call.
    Panicked,
    /// Any other error (its debug form).
    Other(String),
}

pub(crate) fn ended(r: std::thread::Result<Result<(), AppError>>) -> Ended {
    match r {
        Err(_) => Ended::Panicked,
        Ok(Ok(())) => Ended::Ok,
        Ok(Err(AppError::Tx(TxError::BeforeCommit(e))))
            if e.to_string().contains(INJECTED_PANIC) =>
        {
            Ended::BeforeCommitErr
        }
        Ok(Err(AppError::Tx(TxError::UnexpectedRollback))) => Ended::UnexpectedRollback,
        Ok(Err(e)) => Ended::Other(format!("{e:?}")),
    }
}

/// What one panic case produced.
#[derive(Debug)]
pub struct PanicOutcome {
    /// How the outer call ended.
    pub outer: Ended,
    /// How the inner call ended, as the outer body saw it (`None` for `Level::Outer`).
    pub inner: Option<Ended>,
    /// The rows committed.
    pub rows: Vec<String>,
    /// What the outer transaction's after_completion hook saw.
    pub outer_completion: Vec<Completion>,
    /// What the panicking hook's after_completion saw (empty for body panics).
    pub hook_completion: Vec<Completion>,
}

/// Runs one panic case: the outer transaction writes `outer`; at `level` a scope writes
/// `inner` (for `Level::Outer` the outer scope itself is the one that panics) and the panic is
/// injected `at`. When `catch` is true the outer body catches an inner panic and goes on.
pub async fn panic_case<B: Server>(
    b: &B,
    table: &str,
    level: Level,
    at: PanicAt,
    catch: bool,
) -> PanicOutcome {
    quiet_injected_panics();
    b.clear(table).await;
    let outer_completion: Completions = Arc::default();
    let hook_completion: Completions = Arc::default();
    let inner_end: Arc<Mutex<Option<Ended>>> = Arc::default();
    let template = b.template().name("panic.outer");
    let call = template.execute(|_| async {
        record_completion(&outer_completion)?;
        b.insert(table, "outer").await?;
        let inject = move |hc: &Completions| -> Result<(), AppError> {
            match at {
                PanicAt::Body => panic!("{INJECTED_PANIC} in the body"),
                _ => tx_sqlx::register_synchronization(PanicHook {
                    at,
                    completions: hc.clone(),
                })?,
            }
            Ok(())
        };
        if level == Level::Outer {
            inject(&hook_completion)?;
            return Ok(());
        }
        let propagation = match level {
            Level::RequiresNew => Propagation::RequiresNew,
            Level::Nested => Propagation::Nested,
            _ => Propagation::Required,
        };
        let template = b.template().name("panic.inner").propagation(propagation);
        let inner = template.execute(|_| async {
            b.insert(table, "inner").await?;
            inject(&hook_completion)?;
            Ok::<_, AppError>(())
        });
        if catch {
            let r = AssertUnwindSafe(inner).catch_unwind().await;
            *inner_end.lock().unwrap() = Some(ended(r));
        } else {
            let r = inner.await;
            *inner_end.lock().unwrap() = Some(ended(Ok(r)));
        }
        Ok::<_, AppError>(())
    });
    let outer = ended(
        tokio::time::timeout(
            Duration::from_secs(20),
            AssertUnwindSafe(call).catch_unwind(),
        )
        .await
        .expect("a panic case hung"),
    );
    let rows = b.tags(table).await;
    eventually(Duration::from_secs(1), || async {
        !outer_completion.lock().unwrap().is_empty()
    })
    .await;
    let inner = inner_end.lock().unwrap().clone();
    PanicOutcome {
        outer,
        inner,
        rows,
        outer_completion: completions_of(&outer_completion),
        hook_completion: completions_of(&hook_completion),
    }
}

/// What Spring's semantics require of [`panic_case`]: `(outer, inner, rows)`.
pub fn panic_expectation(
    level: Level,
    at: PanicAt,
    catch: bool,
) -> (Ended, Option<Ended>, Vec<&'static str>) {
    use Ended::*;
    match (level, at) {
        (Level::Outer, PanicAt::Body) => (Panicked, None, vec![]),
        (Level::Outer, PanicAt::BeforeCommit) => (BeforeCommitErr, None, vec![]),
        (Level::Outer, PanicAt::AfterCommit) => (Ok, None, vec!["outer"]),
        // An inner panic that escapes the outer body rolls everything back.
        (_, PanicAt::Body) if !catch => (Panicked, None, vec![]),
        (Level::RequiresNew, PanicAt::Body) => (Ok, Some(Panicked), vec!["outer"]),
        (Level::RequiresNew, PanicAt::BeforeCommit) => (Ok, Some(BeforeCommitErr), vec!["outer"]),
        (Level::RequiresNew, PanicAt::AfterCommit) => (Ok, Some(Ok), vec!["outer", "inner"]),
        (Level::Nested, PanicAt::Body) => (Ok, Some(Panicked), vec!["outer"]),
        // Hooks of a released savepoint belong to the outer transaction.
        (Level::Nested, PanicAt::BeforeCommit) => (BeforeCommitErr, Some(Ok), vec![]),
        (Level::Nested, PanicAt::AfterCommit) => (Ok, Some(Ok), vec!["outer", "inner"]),
        // A participant's panic marks the whole transaction rollback-only.
        (Level::Participant, PanicAt::Body) => (UnexpectedRollback, Some(Panicked), vec![]),
        (Level::Participant, PanicAt::BeforeCommit) => (BeforeCommitErr, Some(Ok), vec![]),
        (Level::Participant, PanicAt::AfterCommit) => (Ok, Some(Ok), vec!["outer", "inner"]),
    }
}

/// Runs the whole panic matrix; returns every mismatch.
pub async fn panic_matrix<B: Server>(b: &B) -> Vec<String> {
    let table = b.create_table("panics").await;
    let mut violations = Vec::new();
    let mut cases = Vec::new();
    for level in [
        Level::Outer,
        Level::RequiresNew,
        Level::Nested,
        Level::Participant,
    ] {
        for at in [PanicAt::Body, PanicAt::BeforeCommit, PanicAt::AfterCommit] {
            cases.push((level, at, true));
            if at == PanicAt::Body && level != Level::Outer {
                cases.push((level, at, false));
            }
        }
    }
    for (level, at, catch) in cases {
        let case = format!(
            "{}: panic in {at:?} at {level:?} (caught by outer: {catch})",
            b.name()
        );
        let got = panic_case(b, &table, level, at, catch).await;
        let (outer, inner, rows) = panic_expectation(level, at, catch);
        if got.outer != outer {
            violations.push(format!(
                "{case}: outer call ended {:?}, expected {outer:?}",
                got.outer
            ));
        }
        if inner.is_some() && got.inner != inner {
            violations.push(format!(
                "{case}: inner call ended {:?}, expected {inner:?}",
                got.inner
            ));
        }
        if got.rows != rows {
            violations.push(format!("{case}: rows {:?}, expected {rows:?}", got.rows));
        }
        let outer_committed = rows.contains(&"outer");
        if let Err(e) = saw_exactly(&got.outer_completion, completion_of(outer_committed)) {
            violations.push(format!("{case}: outer {e}"));
        }
        if at != PanicAt::Body {
            // The panicking hook still completes, with its transaction's real outcome.
            let hook_committed = match level {
                Level::RequiresNew => rows.contains(&"inner"),
                _ => outer_committed,
            };
            if let Err(e) = saw_exactly(&got.hook_completion, completion_of(hook_committed)) {
                violations.push(format!("{case}: the panicking hook's {e}"));
            }
        }
        if let Err(e) = nothing_left(b).await {
            violations.push(format!("{case}: {e}"));
        }
    }
    if let Err(e) = b.check_clean().await {
        violations.push(format!("{}: after the panic matrix: {e}", b.name()));
    }
    b.drop_table(&table).await;
    violations
}
