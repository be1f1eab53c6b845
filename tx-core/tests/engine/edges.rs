//! The engine at its edges, without a database: concurrent scopes of one transaction, lock
//! waits that would wait for the task itself, checks right before COMMIT, retries only after
//! a retryable rollback, hook phases finished after a cancelled caller, and futures dropped
//! outside any runtime. A recording manager logs what the engine sends.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{
    Phases, RecordingManager, around_commit, blocked_in, committed, phases_of, strings, t,
    wait_for_entry,
};
use tokio::sync::{Notify, oneshot};
use tx_core::connection::{LockPurpose, bound_transaction};
use tx_core::manager::TransactionManager;
use tx_core::testing::drop_outside_runtime;
use tx_core::{
    BoxError, Completion, Propagation, TransactionStatus, TransactionSynchronization, TxError,
};

fn is_concurrent(r: &Result<(), TxError>) -> bool {
    matches!(r, Err(TxError::ConcurrentScopes { message }) if message.contains("Nested") && message.contains("one after another"))
}

fn is_would_block(r: &Result<(), TxError>, what: &str) -> bool {
    matches!(r, Err(TxError::WouldBlock { message }) if message.contains(what))
}

/// The results of two concurrent scopes.
type Pair = (Result<(), TxError>, Result<(), TxError>);

// ---------------------------------------------------------------------------------------------
// Concurrent scopes inside one transaction.

/// `join!` of two Nested calls where A's savepoint is open when B runs a statement: B's
/// statement would land inside A's savepoint (kept with A's release although B fails), so it
/// is refused; A's work is released on its own.
#[tokio::test]
async fn join_of_two_nested_scopes_refuses_the_statement_inside_the_sibling_savepoint() {
    let m = RecordingManager::default();
    let (a_ran, b_tried, a_done) = (Notify::new(), Notify::new(), Notify::new());
    let r: Result<Pair, TxError> = t(&m)
        .execute(|_| async {
            m.stmt("outer").await?;
            let nested = t(&m).propagation(Propagation::Nested);
            let a = async {
                let r = nested
                    .execute(|_| async {
                        m.stmt("a").await?;
                        a_ran.notify_one();
                        b_tried.notified().await;
                        Ok(())
                    })
                    .await;
                a_done.notify_one();
                r
            };
            let b = nested.execute(|_| async {
                a_ran.notified().await;
                let stmt = m.stmt("b").await;
                b_tried.notify_one();
                a_done.notified().await;
                stmt?;
                // B fails after its insert: its work must not survive.
                Err(TxError::NoTransaction)
            });
            let (ra, rb) = tokio::join!(a, b);
            m.stmt("after").await?;
            Ok((ra, rb))
        })
        .await;
    let (ra, rb) = r.unwrap();
    ra.unwrap();
    assert!(is_concurrent(&rb), "{rb:?}");
    assert_eq!(
        m.take(),
        [
            "BEGIN Default",
            "STMT outer",
            "SAVEPOINT tx_sp_1",
            "STMT a",
            "RELEASE tx_sp_1",
            "STMT after",
            "COMMIT"
        ]
    );
}

/// The sibling that began its savepoint second still has it resolved on its own: A (first)
/// runs no statement until B's savepoint is resolved, and B's rollback undoes only B's work.
#[tokio::test]
async fn concurrent_nested_scopes_that_do_not_interleave_both_resolve_on_their_own() {
    let m = RecordingManager::default();
    let b_done = Notify::new();
    let r: Result<Pair, TxError> = t(&m)
        .execute(|_| async {
            let nested = t(&m).propagation(Propagation::Nested);
            let a = nested.execute(|_| async {
                b_done.notified().await;
                m.stmt("a").await
            });
            let b = async {
                let r = nested
                    .execute(|_| async {
                        m.stmt("b").await?;
                        Err::<(), _>(TxError::NoTransaction)
                    })
                    .await;
                b_done.notify_one();
                r
            };
            Ok(tokio::join!(a, b))
        })
        .await;
    let (ra, rb) = r.unwrap();
    ra.unwrap();
    assert!(matches!(rb, Err(TxError::NoTransaction)), "{rb:?}");
    assert_eq!(
        m.take(),
        [
            "BEGIN Default",
            "SAVEPOINT tx_sp_2",
            "STMT b",
            "ROLLBACK TO tx_sp_2",
            "RELEASE tx_sp_2",
            "SAVEPOINT tx_sp_1",
            "STMT a",
            "RELEASE tx_sp_1",
            "COMMIT"
        ]
    );
}

/// A joined participant beside a failing Nested call: its statement would run inside the
/// Nested savepoint and be rolled back with it while the participant reports success. It is
/// refused instead, the participant fails, and the whole transaction rolls back.
#[tokio::test]
async fn participant_beside_a_failing_nested_call_never_loses_its_rows() {
    let m = RecordingManager::default();
    let (a_ran, p_tried) = (Notify::new(), Notify::new());
    let p_result = Mutex::new(None);
    let r: Result<(), TxError> = t(&m)
        .execute(|_| async {
            let (nested, joined) = (t(&m).propagation(Propagation::Nested), t(&m));
            let nested = nested.execute(|_| async {
                m.stmt("a").await?;
                a_ran.notify_one();
                p_tried.notified().await;
                Err::<(), _>(TxError::NoTransaction)
            });
            let participant = joined.execute(|s| async {
                assert!(!tx_core::current_status().unwrap().is_new_transaction());
                drop(s);
                a_ran.notified().await;
                let r = m.stmt("p").await;
                p_tried.notify_one();
                r
            });
            let (_, rp) = tokio::join!(nested, participant);
            *p_result.lock().unwrap() = Some(rp);
            Ok(())
        })
        .await;
    let rp = p_result.into_inner().unwrap().unwrap();
    assert!(is_concurrent(&rp), "{rp:?}");
    assert!(matches!(r, Err(TxError::UnexpectedRollback)), "{r:?}");
    assert_eq!(
        m.take(),
        [
            "BEGIN Default",
            "SAVEPOINT tx_sp_1",
            "STMT a",
            "ROLLBACK TO tx_sp_1",
            "RELEASE tx_sp_1",
            "ROLLBACK"
        ]
    );
}

/// `join!` of a Nested call and a joined participant: the Nested scope registers its hook
/// first, the participant registers into the transaction's list while the savepoint is still
/// open, and the savepoint is released after that. Every phase still runs the hooks in the
/// order they were registered.
#[tokio::test]
async fn hooks_of_a_released_savepoint_keep_their_registration_order() {
    let (nested_registered, joined_registered) = (Notify::new(), Notify::new());
    let sent = committed(async |m| {
        let (nested, joined) = (t(m).propagation(Propagation::Nested), t(m));
        let nested = nested.execute(|_| async {
            tx_core::register_synchronization(Phases::new("nested", m))?;
            nested_registered.notify_one();
            joined_registered.notified().await;
            m.stmt("nested").await
        });
        let joined = joined.execute(|_| async {
            nested_registered.notified().await;
            tx_core::register_synchronization(Phases::new("joined", m))?;
            joined_registered.notify_one();
            Ok(())
        });
        let (a, b) = tokio::join!(nested, joined);
        a.and(b)
    })
    .await;
    assert_eq!(
        sent[..4],
        [
            "BEGIN Default",
            "SAVEPOINT tx_sp_1",
            "STMT nested",
            "RELEASE tx_sp_1"
        ]
    );
    assert_eq!(sent[4..], around_commit(&["nested", "joined"]));
}

/// Plain statements of one scope under `join!` still take turns on the connection.
#[tokio::test]
async fn plain_statements_of_one_scope_under_join_take_turns() {
    let m = RecordingManager::default();
    let r: Result<(), TxError> = t(&m)
        .timeout(Duration::from_secs(30))
        .execute(|_| async {
            let (x, y) = tokio::join!(m.slow_stmt("x", 20), m.stmt("y"));
            x?;
            y
        })
        .await;
    r.unwrap();
    assert_eq!(m.take(), ["BEGIN Default", "STMT x", "STMT y", "COMMIT"]);
}

/// A wait for another statement of the task is bounded by the deadline.
#[tokio::test(start_paused = true)]
async fn waiting_for_the_connection_ends_at_the_deadline() {
    let m = RecordingManager::default();
    let waited = Mutex::new(None);
    let r: Result<(), TxError> = t(&m)
        .timeout(Duration::from_millis(300))
        .execute(|_| async {
            m.stmt("first").await?;
            let bt = bound_transaction(m.key()).unwrap();
            let held = bt.lock().await?;
            // The body handles the refusal itself (and then outlives the deadline).
            *waited.lock().unwrap() = Some(m.stmt("second").await);
            drop(held);
            Ok(())
        })
        .await;
    assert!(matches!(r, Err(TxError::Timeout)), "{r:?}");
    let waited = waited.into_inner().unwrap().unwrap();
    assert!(matches!(waited, Err(TxError::Timeout)), "{waited:?}");
    assert_eq!(m.take(), ["BEGIN Default", "STMT first", "ROLLBACK"]);
}

// ---------------------------------------------------------------------------------------------
// Requests that would wait for the task itself.

#[tokio::test]
async fn statement_or_nested_scope_while_a_connection_guard_lives_fails_at_once() {
    let m = RecordingManager::default();
    let seen = Mutex::new(Vec::new());
    let r: Result<(), TxError> = t(&m)
        .execute(|_| async {
            let bt = bound_transaction(m.key()).unwrap();
            let guard = bt.lock_for(LockPurpose::Connection).await?;
            let stmt = m.stmt("x").await;
            let nested = t(&m)
                .propagation(Propagation::Nested)
                .execute(|_| async { Ok::<_, TxError>(()) })
                .await;
            seen.lock().unwrap().extend([stmt, nested]);
            drop(guard);
            m.stmt("y").await
        })
        .await;
    r.unwrap();
    let seen = seen.into_inner().unwrap();
    assert!(
        is_would_block(&seen[0], "TxConnection") && is_would_block(&seen[0], "A statement"),
        "{:?}",
        seen[0]
    );
    assert!(
        is_would_block(&seen[1], "Beginning a Nested scope"),
        "{:?}",
        seen[1]
    );
    assert_eq!(m.take(), ["BEGIN Default", "STMT y", "COMMIT"]);
}

#[tokio::test]
async fn statement_while_a_stream_of_the_task_is_parked_fails_at_once() {
    let m = RecordingManager::default();
    let r: Result<(), TxError> = t(&m)
        .execute(|_| async {
            let bt = bound_transaction(m.key()).unwrap();
            let stream = bt.lock_for(LockPurpose::Stream).await?;
            stream.stream_state().set_parked(true);
            let inner = m.stmt("inside the loop").await;
            assert!(is_would_block(&inner, "fetch stream"), "{inner:?}");
            drop(stream);
            m.stmt("after the loop").await
        })
        .await;
    r.unwrap();
    assert_eq!(m.take(), ["BEGIN Default", "STMT after the loop", "COMMIT"]);
}

/// A connection guard returned out of the body: the commit cannot take the connection. It
/// fails at once (not at the deadline, not never), nothing commits, and the transaction rolls
/// back when the guard is dropped.
#[tokio::test]
async fn connection_guard_returned_out_of_the_body_fails_the_commit_at_once() {
    let m = RecordingManager::default();
    let (tx, rx) = oneshot::channel();
    let tx = Mutex::new(Some(tx));
    let leaked = Mutex::new(None);
    let r: Result<(), TxError> = t(&m)
        .timeout(Duration::from_secs(3600))
        .execute(|_| async {
            m.stmt("x").await?;
            tx_core::after_completion(move |c| async move {
                let _ = tx.lock().unwrap().take().unwrap().send(c);
            })?;
            let bt = bound_transaction(m.key()).unwrap();
            *leaked.lock().unwrap() = Some(bt.lock_for(LockPurpose::Connection).await?);
            Ok(())
        })
        .await;
    assert!(
        matches!(&r, Err(TxError::WouldBlock { message }) if message.contains("after its body returned") && message.contains("Nothing was committed")),
        "{r:?}"
    );
    assert_eq!(rx.await.unwrap(), Completion::RolledBack);
    assert_eq!(m.take(), ["BEGIN Default", "STMT x"]);
    drop(leaked);
    assert_eq!(m.take(), ["DROPPED"], "rolled back when the guard went");
}

// ---------------------------------------------------------------------------------------------
// Checks right before COMMIT.

struct CallsFailingParticipant(RecordingManager);

impl TransactionSynchronization for CallsFailingParticipant {
    async fn before_commit(&self, _: bool) -> Result<(), BoxError> {
        let m = &self.0;
        let r: Result<(), TxError> = t(m)
            .execute(|s| async move {
                assert!(!s.is_new_transaction(), "joins the committing transaction");
                m.stmt("flush").await?;
                Err(TxError::NoTransaction)
            })
            .await;
        assert!(r.is_err());
        Ok(())
    }
}

struct MarksRollbackOnly;

impl TransactionSynchronization for MarksRollbackOnly {
    async fn before_commit(&self, _: bool) -> Result<(), BoxError> {
        tx_core::set_rollback_only()?;
        Ok(())
    }
}

struct SlowBeforeCommit;

impl TransactionSynchronization for SlowBeforeCommit {
    async fn before_commit(&self, _: bool) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(600)).await;
        Ok(())
    }
}

/// What the body does after its statement `a`.
type Then = fn(&RecordingManager) -> Result<(), TxError>;

/// A case of the checks right before COMMIT: what it shows, the timeout and how long ROLLBACK
/// takes (ms), what the body does after `a`, what the call must fail with, and what is sent.
type Case = (
    &'static str,
    Option<u64>,
    u64,
    Then,
    fn(&TxError) -> bool,
    &'static [&'static str],
);

/// Each body sends `a`, then does one more thing that the checks right before COMMIT (or the
/// deadline) catch: the call fails as the case says, and the transaction rolls back.
#[tokio::test]
async fn failures_caught_right_before_commit_roll_back() {
    let rolled_back: &[&str] = &["BEGIN Default", "STMT a", "ROLLBACK"];
    let cases: [Case; 5] = [
        (
            "a participant failing in before_commit: an unexpected rollback",
            None,
            0,
            |m| tx_core::register_synchronization(CallsFailingParticipant(m.clone())),
            |e| matches!(e, TxError::UnexpectedRollback),
            &["BEGIN Default", "STMT a", "STMT flush", "ROLLBACK"],
        ),
        (
            "set_rollback_only in before_commit: an unexpected rollback",
            None,
            0,
            |_| tx_core::register_synchronization(MarksRollbackOnly),
            |e| matches!(e, TxError::UnexpectedRollback),
            rolled_back,
        ),
        (
            "a before_commit past the deadline times out",
            Some(300),
            0,
            |_| tx_core::register_synchronization(SlowBeforeCommit),
            |e| matches!(e, TxError::Timeout),
            rolled_back,
        ),
        (
            "a body computing past the deadline without awaiting times out",
            Some(20),
            0,
            // CPU-bound work that never yields to the deadline timer.
            |_| {
                std::thread::sleep(Duration::from_millis(60));
                Ok(())
            },
            |e| matches!(e, TxError::Timeout),
            rolled_back,
        ),
        (
            // The body's own error, returned before the deadline, stays the caller's error
            // even when the rollback ends after the deadline.
            "an own error returned in time is not turned into a timeout",
            Some(100),
            500,
            |_| Err(TxError::NoTransaction),
            |e| matches!(e, TxError::NoTransaction),
            rolled_back,
        ),
    ];
    for (case, timeout_ms, slow_rollback_ms, then, fails_as, log) in cases {
        let m = RecordingManager::default();
        m.slow_rollback(slow_rollback_ms);
        let template = match timeout_ms {
            Some(ms) => t(&m).timeout(Duration::from_millis(ms)),
            None => t(&m),
        };
        let r = template
            .execute(|_| async {
                m.stmt("a").await?;
                then(&m)
            })
            .await;
        assert!(r.as_ref().is_err_and(fails_as), "{case}: {r:?}");
        assert_eq!(m.take(), log, "{case}");
    }
}

// ---------------------------------------------------------------------------------------------
// Retry only after a retryable rollback.

/// A Nested step that failed with a serialization failure, rolled back to its savepoint.
const FAILED_STEP: [&str; 4] = [
    "SAVEPOINT tx_sp_1",
    "FAIL step",
    "ROLLBACK TO tx_sp_1",
    "RELEASE tx_sp_1",
];

/// A call whose Nested step failed with a serialization failure, rolled back and re-run once.
fn retried_after_the_step() -> Vec<&'static str> {
    let retried = [
        "BEGIN Default",
        "SAVEPOINT tx_sp_1",
        "STMT step",
        "RELEASE tx_sp_1",
    ];
    [
        &["BEGIN Default"][..],
        &FAILED_STEP,
        &["ROLLBACK"],
        &retried,
        &["COMMIT"],
    ]
    .concat()
}

/// Runs `body` through a template with `retry(3)` on a new recording manager: what the call
/// returned, how many times the body ran, and what was sent.
async fn with_retries<T>(
    body: impl AsyncFn(&RecordingManager, TransactionStatus) -> Result<T, TxError>,
) -> (Result<T, TxError>, u32, Vec<String>) {
    let (m, runs) = (RecordingManager::default(), AtomicU32::new(0));
    let r = t(&m)
        .retry(3)
        .execute(|status| {
            runs.fetch_add(1, Ordering::Relaxed);
            body(&m, status)
        })
        .await;
    (r, runs.into_inner(), m.take())
}

#[tokio::test]
async fn retryable_failure_handled_in_a_nested_step_does_not_retry_a_later_error() {
    let (r, runs, sent) = with_retries(async |m, _| {
        let step = t(m)
            .propagation(Propagation::Nested)
            .execute(|_| async { m.serialization_failure("step").await })
            .await;
        assert!(step.is_err());
        // An audit row in its own transaction: committed once per run.
        t(m).propagation(Propagation::RequiresNew)
            .execute(|_| async { m.stmt("audit").await })
            .await?;
        Err::<(), _>(TxError::NoTransaction)
    })
    .await;
    assert!(matches!(r, Err(TxError::NoTransaction)), "{r:?}");
    assert_eq!(runs, 1, "not re-run");
    assert_eq!(
        sent,
        [
            &["BEGIN Default"][..],
            &FAILED_STEP,
            &["BEGIN Default", "STMT audit", "COMMIT", "ROLLBACK"]
        ]
        .concat()
    );
}

/// The body's Nested step fails with a serialization failure and the body returns that error:
/// the call's own transaction rolled back because of it, so the call is re-run (here through
/// a template whose error type is `TxError` itself).
#[tokio::test]
async fn retryable_failure_rolled_back_by_a_nested_step_and_returned_is_retried() {
    let (r, runs, sent) = with_retries(async |m, status| {
        t(m).propagation(Propagation::Nested)
            .execute(|_| async {
                if status.attempt() == 1 {
                    m.serialization_failure("step").await
                } else {
                    m.stmt("step").await
                }
            })
            .await?;
        Ok(status.attempt())
    })
    .await;
    assert_eq!(r.unwrap(), 2);
    assert_eq!(runs, 2, "re-run once");
    assert_eq!(sent, retried_after_the_step());
}

/// A retryable failure of a transaction of its own inside (`RequiresNew`, which has its own
/// `retry`) is not the call's: returning it does not re-run the call.
#[tokio::test]
async fn retryable_failure_of_an_inner_requires_new_call_does_not_retry_the_outer_call() {
    let (r, runs, sent) = with_retries(async |m, _| {
        m.stmt("outer").await?;
        t(m).propagation(Propagation::RequiresNew)
            .execute(|_| async { m.serialization_failure("inner").await })
            .await
    })
    .await;
    assert!(r.as_ref().is_err_and(TxError::is_retryable), "{r:?}");
    assert_eq!(runs, 1, "not re-run");
    assert_eq!(
        sent,
        [
            "BEGIN Default",
            "STMT outer",
            "BEGIN Default",
            "FAIL inner",
            "ROLLBACK",
            "ROLLBACK"
        ]
    );
}

/// An error type of the application that exposes the engine's error as its `source()`.
#[derive(Debug)]
enum SourcedError {
    Tx(TxError),
}

impl From<TxError> for SourcedError {
    fn from(e: TxError) -> Self {
        SourcedError::Tx(e)
    }
}

impl std::fmt::Display for SourcedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("application error")
    }
}

impl std::error::Error for SourcedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let SourcedError::Tx(e) = self;
        Some(e)
    }
}

/// A Nested step's serialization failure returned as the application's error: re-run by a
/// template told the error type, and by `#[transactional(retry)]`, which sees into it alone.
#[tokio::test]
async fn retryable_failure_returned_inside_an_application_error_is_retried() {
    struct Service {
        db: RecordingManager,
        runs: Mutex<u32>,
    }
    impl Service {
        async fn step(&self) -> Result<(), SourcedError> {
            let first = *self.runs.lock().unwrap() == 1;
            t(&self.db)
                .propagation(Propagation::Nested)
                .execute(|_| async {
                    if first {
                        self.db.serialization_failure("step").await?;
                    }
                    self.db.stmt("step").await?;
                    Ok(())
                })
                .await
        }

        #[tx_core::transactional(manager = self.db, retry = 2)]
        async fn attributed(&self) -> Result<(), SourcedError> {
            *self.runs.lock().unwrap() += 1;
            self.step().await
        }
    }
    let expected = retried_after_the_step();
    let s = Service {
        db: RecordingManager::default(),
        runs: Mutex::new(0),
    };
    s.attributed().await.unwrap();
    assert_eq!(*s.runs.lock().unwrap(), 2);
    assert_eq!(s.db.take(), expected);

    *s.runs.lock().unwrap() = 0;
    let template = t(&s.db).retry(2).error_type::<SourcedError>();
    template
        .execute(|_| async {
            *s.runs.lock().unwrap() += 1;
            s.step().await
        })
        .await
        .unwrap();
    assert_eq!(*s.runs.lock().unwrap(), 2);
    assert_eq!(s.db.take(), expected);
}

/// `#[transactional]` with `retry` and `no_rollback_for`, on tx-core alone.
mod macro_retry {
    use super::*;

    #[derive(Debug)]
    pub enum AppError {
        Tx(#[allow(dead_code)] TxError),
        Soft,
    }

    impl From<TxError> for AppError {
        fn from(e: TxError) -> Self {
            AppError::Tx(e)
        }
    }

    pub struct Service {
        pub db: RecordingManager,
        pub runs: Mutex<u32>,
    }

    impl Service {
        fn new() -> Service {
            Service {
                db: RecordingManager::default(),
                runs: Mutex::new(0),
            }
        }

        /// Commits although it returns `Err(Soft)`: must never be re-run.
        #[tx_core::transactional(manager = self.db, retry = 3, no_rollback_for = AppError::Soft)]
        pub async fn soft(&self) -> Result<(), AppError> {
            *self.runs.lock().unwrap() += 1;
            self.db.stmt("write").await?;
            let _ = self.db.serialization_failure("read").await;
            Err(AppError::Soft)
        }

        /// Fails with a serialization failure on its first run.
        #[tx_core::transactional(manager = self.db, retry = 3)]
        pub async fn flaky(&self) -> Result<u32, AppError> {
            let attempt = tx_core::current_status().unwrap().attempt();
            *self.runs.lock().unwrap() += 1;
            if attempt == 1 {
                self.db.serialization_failure("first").await?;
            }
            self.db.stmt("second").await?;
            Ok(attempt)
        }

        /// A `T` and an `E` that are `Send` but not `Sync`.
        #[tx_core::transactional(manager = self.db, retry = 2)]
        pub async fn not_sync(&self) -> Result<std::cell::Cell<u8>, NotSyncError> {
            self.db.stmt("x").await?;
            Ok(std::cell::Cell::new(1))
        }
    }

    #[derive(Debug)]
    pub struct NotSyncError(#[allow(dead_code)] Box<dyn std::error::Error + Send>);

    impl From<TxError> for NotSyncError {
        fn from(e: TxError) -> Self {
            NotSyncError(Box::new(e))
        }
    }

    fn assert_send<F: Send>(f: F) -> F {
        f
    }

    #[tokio::test]
    async fn no_rollback_for_commit_is_never_retried() {
        let s = Service::new();
        let r = s.soft().await;
        assert!(matches!(r, Err(AppError::Soft)), "{r:?}");
        assert_eq!(*s.runs.lock().unwrap(), 1);
        assert_eq!(
            s.db.take(),
            ["BEGIN Default", "STMT write", "FAIL read", "COMMIT"]
        );
    }

    #[tokio::test]
    async fn retryable_rollback_is_retried_and_the_scope_knows_its_attempt() {
        let s = Service::new();
        assert_eq!(s.flaky().await.unwrap(), 2);
        assert_eq!(*s.runs.lock().unwrap(), 2);
        assert_eq!(
            s.db.take(),
            [
                "BEGIN Default",
                "FAIL first",
                "ROLLBACK",
                "BEGIN Default",
                "STMT second",
                "COMMIT"
            ]
        );
    }

    #[tokio::test]
    async fn retried_call_is_send_with_non_sync_result_types() {
        let s = Service::new();
        let v = assert_send(s.not_sync()).await.unwrap();
        assert_eq!(v.get(), 1);
        let template = t(&s.db).retry(2);
        let v = assert_send(template.execute(|_| async {
            s.db.stmt("y").await?;
            Ok::<_, NotSyncError>(std::cell::Cell::new(2))
        }))
        .await
        .unwrap();
        assert_eq!(v.get(), 2);
    }
}

// ---------------------------------------------------------------------------------------------
// Hook phases finished after a cancelled caller.

/// Cancels a call of `propagation` while its hook `A` runs `phase`, then lets `A` finish: the
/// log once hook `B` has completed too (the engine finishes the call in a spawned task).
async fn cancel_while_a_hook_runs(phase: &'static str, propagation: Propagation) -> Vec<String> {
    let m = RecordingManager::default();
    let (blocked, mut blocker) = blocked_in(phase);
    let a = Phases {
        blocks_in: Some(blocked),
        ..Phases::new("A", &m)
    };
    let b = Phases::new("B", &m);
    let template = t(&m).propagation(propagation);
    let mut call = Box::pin(template.execute(|_| async {
        m.stmt("a").await?;
        tx_core::register_synchronization(a)?;
        tx_core::register_synchronization(b)
    }));
    tokio::select! {
        r = &mut call => panic!("the call must still be running its hooks: {r:?}"),
        _ = &mut blocker.started => {}
    }
    drop(call);
    blocker.release();
    wait_for_entry(&m, "B:after_completion", || {
        tokio::time::sleep(Duration::from_millis(50))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    m.take()
}

/// A caller cancelled while a hook runs its after_commit or its after_completion: every hook
/// still runs each phase once. A scope without a transaction completes its hooks as committed
/// when it ends `Ok`, and its caller going away leaves them the same.
#[tokio::test]
async fn caller_cancelled_during_a_hook_still_runs_every_phase_of_every_hook_once() {
    let before = phases_of(&["A", "B"], &["before_commit", "before_completion"]);
    let (a_commit, b_commit) = ("A:after_commit", "B:after_commit");
    let (a_done, b_done) = (
        "A:after_completion(Committed)",
        "B:after_completion(Committed)",
    );
    let cases: [(&str, Propagation, &[&str], &[&str]); 3] = [
        (
            "after_commit",
            Propagation::Required,
            &["BEGIN Default", "STMT a"],
            &[
                "COMMIT",
                a_commit,
                "A:after_commit done",
                b_commit,
                a_done,
                b_done,
            ],
        ),
        (
            "after_completion",
            Propagation::Required,
            &["BEGIN Default", "STMT a"],
            &[
                "COMMIT",
                a_commit,
                b_commit,
                a_done,
                "A:after_completion(Committed) done",
                b_done,
            ],
        ),
        (
            "after_commit",
            Propagation::Never,
            &["AUTO a"],
            &[a_commit, "A:after_commit done", b_commit, a_done, b_done],
        ),
    ];
    for (phase, propagation, sent, after) in cases {
        assert_eq!(
            cancel_while_a_hook_runs(phase, propagation).await,
            [strings(sent), before.clone(), strings(after)].concat(),
            "{propagation:?}, cancelled in {phase}"
        );
    }
}

/// A NotSupported scope dropped by the deadline of the transaction it suspends while its
/// hook's before_commit runs: the hook still gets before_completion and after_completion,
/// as rolled back (nothing of the scope was kept as committed).
#[tokio::test(start_paused = true)]
async fn scope_without_a_transaction_dropped_in_before_commit_completes_its_hooks() {
    let m = RecordingManager::default();
    let r: Result<(), TxError> = t(&m)
        .timeout(Duration::from_millis(300))
        .execute(|_| async {
            m.stmt("outer").await?;
            t(&m)
                .propagation(Propagation::NotSupported)
                .execute(|_| async {
                    m.stmt("inner").await?;
                    tx_core::register_synchronization(Phases {
                        slow_before_commit: Some(Duration::from_millis(600)),
                        ..Phases::new("hook", &m)
                    })
                })
                .await
        })
        .await;
    assert!(matches!(r, Err(TxError::Timeout)), "{r:?}");
    // The rest of the hook's sequence runs in a spawned task.
    wait_for_entry(&m, "hook:after_completion", || {
        tokio::time::sleep(Duration::from_millis(10))
    })
    .await;
    let mut log = m.take();
    // The outer ROLLBACK and the spawned completion are not ordered.
    let rollback = log
        .iter()
        .position(|e| e == "ROLLBACK")
        .expect("rolled back");
    log.remove(rollback);
    assert_eq!(
        log,
        [
            "BEGIN Default",
            "STMT outer",
            "AUTO inner",
            "hook:before_commit",
            "hook:before_completion",
            "hook:after_completion(RolledBack)"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// A future dropped outside any runtime.

/// Polled inside `block_on`, dropped on the main thread: no panic in Drop; the rollback and
/// the hooks run on the runtime that began the transaction.
#[test]
fn call_dropped_outside_a_runtime_rolls_back_on_the_runtime_it_began_on() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let m = RecordingManager::default();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let template = t(&m);
    drop_outside_runtime(&rt, |started| {
        template.execute(|_| async {
            m.stmt("a").await?;
            tx_core::after_completion(move |c| async move {
                done_tx.send(c).unwrap();
            })?;
            started.park().await;
            Ok::<_, TxError>(())
        })
    });
    let c = done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(c, Completion::RolledBack);
    assert_eq!(m.take(), ["BEGIN Default", "STMT a", "ROLLBACK"]);
}

// ---------------------------------------------------------------------------------------------
// Hooks after completion still know the transactions the task holds.

#[tokio::test]
async fn after_commit_of_a_requires_new_scope_sees_the_suspended_writer() {
    let m = RecordingManager::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    // An after_commit hook that notes whether a suspended transaction holds its connection.
    let note = || {
        let (key, seen) = (m.key(), seen.clone());
        tx_core::after_commit(async move {
            let holds = tx_core::connection::suspended_holds_connection(key);
            seen.lock().unwrap().push(holds);
        })
    };
    let r: Result<(), TxError> = t(&m)
        .execute(|_| async {
            m.stmt("outer").await?;
            t(&m)
                .propagation(Propagation::RequiresNew)
                .execute(|_| async { note() })
                .await
        })
        .await;
    r.unwrap();
    // After the outer commit there is nothing left to wait for.
    let r: Result<(), TxError> = t(&m)
        .execute(|_| async {
            m.stmt("top").await?;
            note()
        })
        .await;
    r.unwrap();
    assert_eq!(*seen.lock().unwrap(), [true, false]);
}
