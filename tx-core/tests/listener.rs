//! Process-wide transaction listeners: the exact order of their callbacks around what the
//! engine sends (BEGIN, SAVEPOINT, COMMIT, ROLLBACK) and the synchronization hooks, for a
//! commit, a rollback, rollback-only, a timeout, a cancelled call, a before_commit veto and a
//! Nested savepoint; what each callback is told; and that a listener that fails or panics
//! changes nothing.
//!
//! Listeners are global, so each test routes the callbacks of its own transactions (by the
//! first segment of their names) into its recording manager's log.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Once};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};

use support::{
    Phases, RecordingManager, cancel_after, phases_of, stmt_then_wait, strings, t, wait_for_entry,
};
use tx_core::testing::EachCallback;
use tx_core::{BoxError, Propagation, TransactionExecution, TransactionStatus, TxError};

/// Test key (first segment of a transaction's name) -> the log its callbacks go to.
static ROUTES: LazyLock<Mutex<HashMap<String, RecordingManager>>> = LazyLock::new(Default::default);

/// What `before_begin` was told, per scope name.
static SEEN: LazyLock<Mutex<HashMap<String, Seen>>> = LazyLock::new(Default::default);

#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: u64,
    scope_id: u64,
    backend: &'static str,
    attempt: u32,
    savepoint: bool,
    read_only: bool,
    propagation: Propagation,
}

fn label(tx: &TransactionExecution<'_>) -> String {
    if tx.is_savepoint() {
        format!("{} (savepoint)", tx.name())
    } else {
        tx.name().to_owned()
    }
}

/// Records every callback as `L <callback> <name>[ <argument>]`, and what `before_begin` was
/// told.
fn recording(tx: &TransactionExecution<'_>, callback: &str, told: String) -> Result<(), BoxError> {
    if callback == "before_begin" {
        let seen = Seen {
            id: tx.id(),
            scope_id: tx.scope_id(),
            backend: tx.backend(),
            attempt: tx.attempt(),
            savepoint: tx.is_savepoint(),
            read_only: tx.is_read_only(),
            propagation: tx.definition().get_propagation(),
        };
        SEEN.lock().unwrap().insert(tx.name().to_owned(), seen);
    }
    let key = tx.name().split("::").next().unwrap_or_default();
    if let Some(log) = ROUTES.lock().unwrap().get(key) {
        log.push(format!("L {callback} {}{told}", label(tx)));
    }
    Ok(())
}

/// Fails (in before_begin and after_commit) or panics (in the others) in every callback of the
/// transactions of the `faulty` test.
fn faulty(tx: &TransactionExecution<'_>, callback: &str, _: String) -> Result<(), BoxError> {
    if !tx.name().starts_with("faulty::") {
        return Ok(());
    }
    match callback {
        "before_begin" | "after_commit" => Err(format!("listener fails in {callback}").into()),
        _ => panic!("listener panics in {callback}"),
    }
}

/// A recording manager whose transactions named `key::...` report their callbacks to its log.
fn manager(key: &str) -> RecordingManager {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // The faulty listener runs first: the recording one must still be called after it.
        tx_core::add_transaction_listener(EachCallback::new(faulty));
        tx_core::add_transaction_listener(EachCallback::new(recording));
    });
    let m = RecordingManager::default();
    ROUTES.lock().unwrap().insert(key.to_owned(), m.clone());
    m
}

fn seen(name: &str) -> Seen {
    SEEN.lock().unwrap()[name].clone()
}

/// The body most tests run: one INSERT, then a logging hook (vetoing with `veto` if given).
async fn insert_with_hook(m: &RecordingManager, veto: Option<&'static str>) -> Result<(), TxError> {
    m.stmt("INSERT").await?;
    tx_core::register_synchronization(Phases {
        veto,
        ..Phases::new("H", m)
    })?;
    Ok(())
}

/// Whether a hook from [`insert_with_hook`] is registered, so its phases sit in the log.
#[derive(Clone, Copy)]
enum Hooks {
    None,
    Logged,
}

/// The listener callbacks around `BEGIN` and the first statement of transaction `name`.
fn begun(name: &str, stmt: &str) -> Vec<String> {
    vec![
        format!("L before_begin {name}"),
        format!("L after_begin {name}"),
        "BEGIN Default".into(),
        format!("STMT {stmt}"),
    ]
}

/// Asserts that `m`'s log is that of transaction `name` sending one INSERT and committing.
fn assert_insert_committed(m: &RecordingManager, name: &str, hooks: Hooks) {
    assert_eq!(
        m.take(),
        [begun(name, "INSERT"), committed(name, hooks)].concat()
    );
}

/// Asserts that `m`'s log is that of transaction `name` sending one INSERT and rolling back
/// with `cause`.
fn assert_insert_rolled_back(m: &RecordingManager, name: &str, cause: &str, hooks: Hooks) {
    let expected = [begun(name, "INSERT"), rolled_back(name, cause, hooks)].concat();
    assert_eq!(m.take(), expected);
}

impl Hooks {
    /// The hook's `phases`, when it is logged.
    fn logged(self, phases: &[&str]) -> Vec<String> {
        match self {
            Hooks::None => Vec::new(),
            Hooks::Logged => phases_of(&["H"], phases),
        }
    }
}

/// A commit of `name`: the hooks' commit phases run before `before_commit`, their
/// after-phases before `after_commit`.
fn committed(name: &str, hooks: Hooks) -> Vec<String> {
    [
        hooks.logged(&["before_commit", "before_completion"]),
        vec![format!("L before_commit {name}"), "COMMIT".into()],
        hooks.logged(&["after_commit", "after_completion(Committed)"]),
        vec![format!("L after_commit {name}")],
    ]
    .concat()
}

/// A rollback of `name` reported with `cause`, the hooks' phases around the `ROLLBACK`.
fn rolled_back(name: &str, cause: &str, hooks: Hooks) -> Vec<String> {
    [
        hooks.logged(&["before_completion"]),
        vec![format!("L before_rollback {name}"), "ROLLBACK".into()],
        hooks.logged(&["after_completion(RolledBack)"]),
        vec![format!("L after_rollback {name} {cause}")],
    ]
    .concat()
}

#[tokio::test]
async fn commit_calls_before_commit_after_the_hooks_and_after_commit_after_them() {
    let m = manager("commit");
    let r = t(&m)
        .name("commit::order")
        .execute(|_| insert_with_hook(&m, None))
        .await;
    r.unwrap();
    assert_insert_committed(&m, "commit::order", Hooks::Logged);
    let s = seen("commit::order");
    assert_eq!((s.id, s.backend, s.attempt), (s.scope_id, "custom", 1));
    assert!(!s.savepoint && !s.read_only);

    // The begin and commit are the scope's: a body without statements sends nothing and
    // still commits for the listeners, under a new id.
    let r: Result<(), TxError> = t(&m)
        .name("commit::empty")
        .read_only(true)
        .execute(|_| async { Ok(()) })
        .await;
    r.unwrap();
    assert_eq!(
        m.take(),
        strings(&[
            "L before_begin commit::empty",
            "L after_begin commit::empty",
            "L before_commit commit::empty",
            "L after_commit commit::empty",
        ])
    );
    assert!(seen("commit::empty").read_only);
    assert!(seen("commit::empty").id > s.id, "ids grow per transaction");
}

/// A transaction that sends one INSERT and rolls back: its name, deadline and body, whether
/// the call's result is the expected one, and the cause and hooks the listeners see.
struct RollbackCase {
    name: &'static str,
    timeout: Option<Duration>,
    body: fn(TransactionStatus, RecordingManager) -> BoxFuture<'static, Result<(), TxError>>,
    returns: fn(&Result<(), TxError>) -> bool,
    cause: &'static str,
    hooks: Hooks,
}

#[tokio::test(start_paused = true)]
async fn each_rollback_is_reported_with_its_cause_after_the_hooks() {
    let cases = [
        RollbackCase {
            name: "rollback::order",
            timeout: None,
            body: |_, m| {
                async move {
                    insert_with_hook(&m, None).await?;
                    Err(TxError::NoTransaction)
                }
                .boxed()
            },
            returns: |r| matches!(r, Err(TxError::NoTransaction)),
            cause: "error",
            hooks: Hooks::Logged,
        },
        RollbackCase {
            name: "marked::owner",
            timeout: None,
            body: |status, m| {
                async move {
                    m.stmt("INSERT").await?;
                    status.set_rollback_only();
                    Ok(())
                }
                .boxed()
            },
            returns: Result::is_ok,
            cause: "rollback_only",
            hooks: Hooks::None,
        },
        // A joined participant gets no callbacks of its own; its failure marks the transaction.
        RollbackCase {
            name: "marked::outer",
            timeout: None,
            body: |_, m| {
                async move {
                    m.stmt("INSERT").await?;
                    let inner: Result<(), TxError> = t(&m)
                        .name("marked::participant")
                        .execute(|_| async { Err(TxError::NoTransaction) })
                        .await;
                    assert!(inner.is_err());
                    Ok(())
                }
                .boxed()
            },
            returns: |r| matches!(r, Err(TxError::UnexpectedRollback)),
            cause: "rollback_only",
            hooks: Hooks::None,
        },
        RollbackCase {
            name: "timeout::slow",
            timeout: Some(Duration::from_millis(50)),
            body: |_, m| async move { stmt_then_wait(&m, "INSERT").await }.boxed(),
            returns: |r| matches!(r, Err(TxError::Timeout)),
            cause: "timeout",
            hooks: Hooks::None,
        },
    ];
    for case in cases {
        let m = manager(case.name.split("::").next().unwrap_or_default());
        let mut template = t(&m).name(case.name);
        if let Some(deadline) = case.timeout {
            template = template.timeout(deadline);
        }
        let r = template
            .execute(|status| (case.body)(status, m.clone()))
            .await;
        assert!((case.returns)(&r), "{}: {r:?}", case.name);
        assert_insert_rolled_back(&m, case.name, case.cause, case.hooks);
    }
}

#[tokio::test(start_paused = true)]
async fn cancelled_call_is_reported_from_the_task_that_rolls_it_back() {
    let m = manager("cancel");
    let template = t(&m).name("cancel::dropped");
    let call = template.execute(|_| async {
        insert_with_hook(&m, None).await?;
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, TxError>(())
    });
    cancel_after(10, call).await;
    wait_for_entry(&m, "L after_rollback", tokio::task::yield_now).await;
    assert_insert_rolled_back(&m, "cancel::dropped", "cancelled", Hooks::Logged);
}

#[tokio::test]
async fn before_commit_veto_is_reported_as_before_commit_failed_without_before_commit() {
    let m = manager("veto");
    let r = t(&m)
        .name("veto::order")
        .execute(|_| insert_with_hook(&m, Some("stock check failed")))
        .await;
    assert!(matches!(r, Err(TxError::BeforeCommit(_))));
    let name = "veto::order";
    assert_eq!(
        m.take(),
        [
            begun(name, "INSERT"),
            Hooks::Logged.logged(&["before_commit"]),
            rolled_back(name, "before_commit_failed", Hooks::Logged),
        ]
        .concat()
    );
}

#[tokio::test]
async fn nested_savepoints_get_their_own_callbacks_around_savepoint_commands() {
    let m = manager("nested");
    let r: Result<(), TxError> = t(&m)
        .name("nested::order")
        .execute(|_| async {
            m.stmt("INSERT order").await?;
            let nested = |name: &'static str| t(&m).name(name).propagation(Propagation::Nested);
            let failed: Result<(), TxError> = nested("nested::reserve")
                .execute(|_| async {
                    m.stmt("UPDATE stock").await?;
                    Err(TxError::NoTransaction)
                })
                .await;
            assert!(failed.is_err());
            nested("nested::charge")
                .execute(|_| async { m.stmt("UPDATE balance").await })
                .await?;
            Ok(())
        })
        .await;
    r.unwrap();
    assert_eq!(
        m.take(),
        strings(&[
            "L before_begin nested::order",
            "L after_begin nested::order",
            "BEGIN Default",
            "STMT INSERT order",
            "L before_begin nested::reserve (savepoint)",
            "L after_begin nested::reserve (savepoint)",
            "SAVEPOINT tx_sp_1",
            "STMT UPDATE stock",
            "L before_rollback nested::reserve (savepoint)",
            "ROLLBACK TO tx_sp_1",
            "RELEASE tx_sp_1",
            "L after_rollback nested::reserve (savepoint) error",
            "L before_begin nested::charge (savepoint)",
            "L after_begin nested::charge (savepoint)",
            "SAVEPOINT tx_sp_2",
            "STMT UPDATE balance",
            "L before_commit nested::charge (savepoint)",
            "RELEASE tx_sp_2",
            "L after_commit nested::charge (savepoint)",
            "L before_commit nested::order",
            "COMMIT",
            "L after_commit nested::order",
        ])
    );
    let (order, reserve, charge) = (
        seen("nested::order"),
        seen("nested::reserve"),
        seen("nested::charge"),
    );
    assert!(reserve.savepoint && charge.savepoint && !order.savepoint);
    assert_eq!(
        reserve.id, order.id,
        "a savepoint reports its transaction's id"
    );
    assert_eq!(charge.id, order.id);
    assert!(reserve.scope_id != order.id && charge.scope_id != reserve.scope_id);
    assert_eq!(
        reserve.propagation,
        Propagation::Nested,
        "its own definition"
    );
}

#[tokio::test]
async fn failing_and_panicking_listeners_are_ignored() {
    let m = manager("faulty");
    let committed_flag = Arc::new(Mutex::new(false));
    let c = committed_flag.clone();
    let r: Result<u8, TxError> = t(&m)
        .name("faulty::commit")
        .execute(|_| async {
            m.stmt("INSERT").await?;
            tx_core::after_commit(async move { *c.lock().unwrap() = true })?;
            Ok(7)
        })
        .await;
    assert_eq!(r.unwrap(), 7, "the call's result stands");
    assert!(
        *committed_flag.lock().unwrap(),
        "after_commit hooks still ran"
    );
    // The listener registered after the faulty one got every callback.
    assert_insert_committed(&m, "faulty::commit", Hooks::None);
    let r: Result<(), TxError> = t(&m)
        .name("faulty::rollback")
        .execute(|_| async {
            m.stmt("INSERT").await?;
            Err(TxError::NoTransaction)
        })
        .await;
    assert!(
        matches!(r, Err(TxError::NoTransaction)),
        "the body's error, not a listener's"
    );
    assert_insert_rolled_back(&m, "faulty::rollback", "error", Hooks::None);
}
