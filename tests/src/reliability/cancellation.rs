//! The cancellation sweep: a transaction cut after every poll.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tx_sqlx::{Completion, Propagation, TxError};

use super::backend::{Backend, Server, eventually, no_open_transactions, settle};
use super::errors::AppError;
use super::hooks::{
    Completions, InsertBeforeCommit, completions_of, record_completion, saw_exactly,
};
use super::poll::poll_at_most;

/// One scope of the sweep's transaction and its `after_completion` hook.
#[derive(Default)]
struct Step {
    completions: Completions,
    registered: AtomicBool,
}

impl Step {
    /// Registers the hook that records this scope's completion.
    fn register(&self) -> Result<(), TxError> {
        record_completion(&self.completions)?;
        self.registered.store(true, Ordering::SeqCst);
        Ok(())
    }
}

#[derive(Default)]
struct SweepProbe {
    outer: Step,
    audit: Step,
    nested: Step,
    failing_nested_ok: AtomicBool,
    marks: Mutex<Vec<String>>,
}

impl SweepProbe {
    fn mark(&self, m: impl Into<String>) {
        self.marks.lock().unwrap().push(m.into());
    }
    fn last_mark(&self) -> String {
        let marks = self.marks.lock().unwrap();
        marks
            .last()
            .cloned()
            .unwrap_or_else(|| "(nothing yet)".into())
    }
}

/// The committed contents of the work table after a complete run.
const SWEEP_WORK: [&str; 4] = ["o1", "n1", "o2", "bc"];

/// A scope `name` of `propagation` inside the sweep's transaction, with the hook of `step`,
/// that inserts `tag` into `table`.
async fn inner_step<B: Backend>(
    b: &B,
    p: &SweepProbe,
    step: &Step,
    name: &'static str,
    propagation: Propagation,
    table: &str,
    tag: &'static str,
) -> Result<(), AppError> {
    b.template()
        .name(name)
        .propagation(propagation)
        .execute(|_| async {
            step.register()?;
            b.insert(table, tag).await?;
            p.mark(format!("{tag} inserted"));
            Ok::<_, AppError>(())
        })
        .await
}

/// One transaction: hooks, an outer row, a RequiresNew audit row, a Nested step that is
/// released, a Nested step that fails and is rolled back to its savepoint, another outer row,
/// and a before_commit hook writing one more.
async fn sweep_call<B: Backend>(
    b: &B,
    work: &str,
    audit: &str,
    p: &Arc<SweepProbe>,
) -> Result<(), AppError> {
    b.template()
        .name("sweep.outer")
        .execute(|_| async {
            p.outer.register()?;
            tx_sqlx::register_synchronization(InsertBeforeCommit {
                b: b.clone(),
                table: work.to_owned(),
                tag: "bc",
            })?;
            b.insert(work, "o1").await?;
            p.mark("o1 inserted");
            inner_step(
                b,
                p,
                &p.audit,
                "sweep.audit",
                Propagation::RequiresNew,
                audit,
                "a1",
            )
            .await?;
            p.mark("audit committed");
            inner_step(
                b,
                p,
                &p.nested,
                "sweep.nested",
                Propagation::Nested,
                work,
                "n1",
            )
            .await?;
            p.mark("nested released");
            let failing = b
                .template()
                .name("sweep.nested_failing")
                .propagation(Propagation::Nested)
                .execute(|_| async {
                    b.insert(work, "n2").await?;
                    Err::<(), _>(AppError::Injected("nested step fails"))
                })
                .await;
            p.failing_nested_ok.store(
                matches!(failing, Err(AppError::Injected(_))),
                Ordering::SeqCst,
            );
            p.mark("failing nested rolled back");
            b.insert(work, "o2").await?;
            p.mark("o2 inserted");
            Ok(())
        })
        .await
}

/// Whether `seen` is what an `after_completion` hook may report for a transaction whose work
/// is (`committed`) or is not in the database.
fn completion_consistent(seen: Completion, committed: bool) -> bool {
    match seen {
        Completion::Committed => committed,
        Completion::RolledBack => !committed,
        Completion::Unknown => true,
    }
}

/// What a sweep found.
#[derive(Debug, Default)]
pub struct SweepReport {
    /// Cut points tried (the polls the complete run needed, minus one).
    pub cuts: usize,
    /// Cuts after which the outer work turned out committed (COMMIT was in flight).
    pub committed_cuts: usize,
    /// Every invariant broken, one line each.
    pub violations: Vec<String>,
}

/// The cancellation sweep: the transaction of `sweep_call` is cut after 1, 2, 3, ... polls
/// until it completes. After every cut: the outer work is all or nothing, the audit committed
/// before the outer work, the failed Nested step never visible, no session of the pool inside
/// a transaction, every connection back in the pool and clean, every registered
/// `after_completion` hook run exactly once with an outcome matching the database. The last,
/// complete run must commit everything.
pub async fn cancellation_sweep<B: Server>(b: &B) -> SweepReport {
    let work = b.create_table("sweep_work").await;
    let audit = b.create_table("sweep_audit").await;
    let full: Vec<String> = SWEEP_WORK.iter().map(|s| s.to_string()).collect();
    let mut report = SweepReport::default();
    let mut k = 1;
    loop {
        assert!(k < 1000, "the transaction never completed");
        b.clear(&work).await;
        b.clear(&audit).await;
        let p = Arc::new(SweepProbe::default());
        let mut fut = Box::pin(sweep_call(b, &work, &audit, &p));
        let outcome = poll_at_most(fut.as_mut(), k).await;
        drop(fut);
        let at = format!(
            "{}: cut after {k} poll(s), last step reached: {}",
            b.name(),
            p.last_mark()
        );

        if let Some(result) = outcome {
            // The complete run.
            if let Err(e) = &result {
                report
                    .violations
                    .push(format!("{at}: the complete run failed: {e:?}"));
            }
            if !p.failing_nested_ok.load(Ordering::SeqCst) {
                report.violations.push(format!(
                    "{at}: the failing Nested step did not return its error"
                ));
            }
            let (w, a) = (b.tags(&work).await, b.tags(&audit).await);
            if w != full || a != ["a1"] {
                report
                    .violations
                    .push(format!("{at}: complete run left work={w:?} audit={a:?}"));
            }
            for (name, step) in [
                ("outer", &p.outer),
                ("audit", &p.audit),
                ("nested", &p.nested),
            ] {
                let seen = completions_of(&step.completions);
                if let Err(e) = saw_exactly(&seen, Completion::Committed) {
                    report
                        .violations
                        .push(format!("{at}: complete run: {name} {e}"));
                }
            }
            break;
        }
        report.cuts += 1;
        if std::env::var_os("TX_SWEEP_VERBOSE").is_some() {
            eprintln!("{at}");
        }

        let open = no_open_transactions(b).await;
        if open != 0 {
            report
                .violations
                .push(format!("{at}: {open} session(s) left inside a transaction"));
        }
        let (size, idle) = settle(b).await;
        if size as usize != idle {
            report.violations.push(format!(
                "{at}: pool connections not all back: size {size}, idle {idle}"
            ));
        }
        let w = b.tags(&work).await;
        let a = b.tags(&audit).await;
        let outer_committed = w == full;
        if outer_committed {
            report.committed_cuts += 1;
        }
        if !w.is_empty() && !outer_committed {
            report
                .violations
                .push(format!("{at}: outer work half-written: {w:?}"));
        }
        if !a.is_empty() && a != ["a1"] {
            report
                .violations
                .push(format!("{at}: audit table holds {a:?}"));
        }
        if outer_committed && a.is_empty() {
            report.violations.push(format!(
                "{at}: outer work committed without its RequiresNew audit"
            ));
        }
        // Hooks run in a spawned task after a cut: give them time.
        let hooks = [
            ("outer", &p.outer, outer_committed),
            ("audit", &p.audit, a == ["a1"]),
            ("nested", &p.nested, outer_committed),
        ];
        eventually(Duration::from_secs(2), || async {
            hooks.iter().all(|(_, step, _)| {
                !step.registered.load(Ordering::SeqCst)
                    || !step.completions.lock().unwrap().is_empty()
            })
        })
        .await;
        for (name, step, committed) in hooks {
            let seen = completions_of(&step.completions);
            let registered = step.registered.load(Ordering::SeqCst);
            if !registered {
                if !seen.is_empty() {
                    report
                        .violations
                        .push(format!("{at}: unregistered {name} hook ran: {seen:?}"));
                }
                continue;
            }
            match seen.as_slice() {
                [one] if completion_consistent(*one, committed) => {}
                [one] => report.violations.push(format!(
                    "{at}: {name} after_completion saw {one:?} but its work is {}",
                    if committed {
                        "committed"
                    } else {
                        "not committed"
                    }
                )),
                [] => report.violations.push(format!(
                    "{at}: {name} after_completion never ran (its work is {})",
                    if committed {
                        "committed"
                    } else {
                        "not committed"
                    }
                )),
                many => report.violations.push(format!(
                    "{at}: {name} after_completion ran {} times: {many:?}",
                    many.len()
                )),
            }
        }
        if let Err(e) = b.check_clean().await {
            report.violations.push(format!("{at}: {e}"));
        }
        k += 1;
    }

    // The next transaction on the same pool starts clean and commits.
    b.clear(&work).await;
    b.clear(&audit).await;
    let p = Arc::new(SweepProbe::default());
    if let Err(e) = sweep_call(b, &work, &audit, &p).await {
        report
            .violations
            .push(format!("{}: a run after the sweep failed: {e:?}", b.name()));
    }
    if b.tags(&work).await != full {
        report.violations.push(format!(
            "{}: a run after the sweep did not commit",
            b.name()
        ));
    }
    if let Err(e) = b.check_clean().await {
        report
            .violations
            .push(format!("{}: after the sweep: {e}", b.name()));
    }
    b.drop_table(&work).await;
    b.drop_table(&audit).await;
    report
}
