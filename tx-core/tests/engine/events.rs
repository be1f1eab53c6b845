//! `EventBus`: which listeners run in which phase of the publishing transaction, their order,
//! fallback execution outside a transaction, removal, and what a failing or panicking listener
//! changes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tx_core::manager::BoxFuture;
use tx_core::testing::{Log, NoopManager};
use tx_core::{
    BoxError, EventBus, ListenerHandle, Propagation, TransactionPhase, TransactionTemplate, TxError,
};

use crate::support::cancel_after;

#[derive(Debug)]
struct Ev(u32);

/// Registers a listener of `phase` that logs `"{name} {event}"`.
fn listen(
    bus: &EventBus,
    log: &Log,
    phase: TransactionPhase,
    name: &'static str,
) -> ListenerHandle {
    let log = log.clone();
    bus.listen(phase, move |e: Arc<Ev>| {
        let log = log.clone();
        async move { log.push(format!("{name} {}", e.0)) }
    })
}

/// A bus with a listener of every phase, each logging `"{phase} {event}"`, and their log.
fn all_phases() -> (EventBus, Log) {
    let (bus, log) = (EventBus::new(), Log::default());
    for (phase, name) in [
        (TransactionPhase::BeforeCommit, "before_commit"),
        (TransactionPhase::AfterCommit, "after_commit"),
        (TransactionPhase::AfterRollback, "after_rollback"),
        (TransactionPhase::AfterCompletion, "after_completion"),
    ] {
        listen(&bus, &log, phase, name);
    }
    (bus, log)
}

/// A listener body that panics (typed `()`, as a `panic!` alone would be `!`).
fn explode(message: &str) {
    panic!("{message}")
}

fn template() -> TransactionTemplate {
    TransactionTemplate::new(NoopManager::default())
}

/// A body that publishes `Ev(n)` on `bus`.
fn publishes(bus: &EventBus, n: u32) -> impl AsyncFnOnce() -> Result<(), TxError> + '_ {
    async move || bus.publish(Ev(n)).await
}

/// Runs `body` in a transaction of `template`, logs `end` when the body returned, and gives
/// the log once the call committed.
async fn run_logged(
    template: &TransactionTemplate,
    log: &Log,
    end: &str,
    body: impl AsyncFnOnce() -> Result<(), TxError>,
) -> Vec<String> {
    template
        .execute(|_| async {
            body().await?;
            log.push(end);
            Ok::<_, TxError>(())
        })
        .await
        .unwrap();
    log.take()
}

#[tokio::test]
async fn phases_on_commit() {
    let (bus, log) = all_phases();
    assert_eq!(
        run_logged(&template(), &log, "body end", publishes(&bus, 1)).await,
        [
            "body end",
            "before_commit 1",
            "after_commit 1",
            "after_completion 1"
        ]
    );
}

#[tokio::test]
async fn phases_on_rollback_and_rollback_only() {
    let (bus, log) = all_phases();
    let r = template()
        .execute(|_| async {
            bus.publish(Ev(1)).await?;
            Err::<(), _>(TxError::UnexpectedRollback)
        })
        .await;
    assert!(r.is_err());
    assert_eq!(log.take(), ["after_rollback 1", "after_completion 1"]);

    let r = template()
        .execute(|status| async move {
            bus.publish(Ev(2)).await?;
            status.set_rollback_only();
            Ok::<_, TxError>(())
        })
        .await;
    assert!(r.is_ok());
    assert_eq!(log.take(), ["after_rollback 2", "after_completion 2"]);
}

#[derive(Debug)]
struct MailDown(u32);

impl std::fmt::Display for MailDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mail server down for event {}", self.0)
    }
}

impl std::error::Error for MailDown {}

#[tokio::test]
async fn listeners_return_unit_or_any_error_type() {
    let (bus, log) = (EventBus::new(), Log::default());
    // `()` bodies, transactional and plain.
    let l = log.clone();
    bus.listen(TransactionPhase::AfterCommit, move |e: Arc<Ev>| {
        let l = l.clone();
        async move { l.push(format!("unit after_commit {}", e.0)) }
    });
    let l = log.clone();
    bus.on(move |e: Arc<Ev>| {
        let l = l.clone();
        async move { l.push(format!("unit plain {}", e.0)) }
    });
    // A listener's own error type, converted into the BoxError the bus reports.
    bus.listen(TransactionPhase::BeforeCommit, |e: Arc<Ev>| async move {
        if e.0 == 2 {
            return Err(MailDown(e.0));
        }
        Ok(())
    });

    template()
        .execute(|_| async { bus.publish(Ev(1)).await })
        .await
        .unwrap();
    assert_eq!(log.take(), ["unit plain 1", "unit after_commit 1"]);

    let r = template()
        .execute(|_| async { bus.publish(Ev(2)).await })
        .await;
    match r {
        Err(TxError::BeforeCommit(e)) => {
            assert_eq!(e.to_string(), "mail server down for event 2");
            assert!(e.downcast_ref::<MailDown>().is_some_and(|m| m.0 == 2));
        }
        other => panic!("expected BeforeCommit, got {other:?}"),
    }
    // The veto rolled back: the AfterCommit listener did not run.
    assert_eq!(log.take(), ["unit plain 2"]);

    // A plain listener failing with a typed error fails publish with it.
    let plain = EventBus::new();
    plain.on(|e: Arc<Ev>| async move { Err::<(), _>(MailDown(e.0)) });
    match plain.publish(Ev(3)).await {
        Err(TxError::Listener(e)) => assert!(e.downcast_ref::<MailDown>().is_some()),
        other => panic!("expected Listener, got {other:?}"),
    }
}

#[tokio::test]
async fn before_commit_error_rolls_back_and_is_returned() {
    let (bus, log) = all_phases();
    bus.listen(TransactionPhase::BeforeCommit, |e: Arc<Ev>| async move {
        Err::<(), _>(format!("veto {}", e.0))
    });
    let r = template()
        .execute(|_| async { bus.publish(Ev(3)).await })
        .await;
    match r {
        Err(TxError::BeforeCommit(e)) => assert_eq!(e.to_string(), "veto 3"),
        other => panic!("expected BeforeCommit, got {other:?}"),
    }
    assert_eq!(
        log.take(),
        ["before_commit 3", "after_rollback 3", "after_completion 3"]
    );
}

#[tokio::test]
async fn failing_after_listeners_are_isolated() {
    let (bus, log) = (EventBus::new(), Log::default());
    bus.listen(TransactionPhase::AfterCommit, |_: Arc<Ev>| async {
        Err::<(), _>("mq down")
    });
    bus.listen(TransactionPhase::AfterCommit, |_: Arc<Ev>| async {
        explode("listener bug")
    });
    // Panics before returning its future.
    bus.listen(
        TransactionPhase::AfterCommit,
        |_: Arc<Ev>| -> BoxFuture<'static, Result<(), BoxError>> { panic!("eager listener bug") },
    );
    listen(&bus, &log, TransactionPhase::AfterCommit, "after_commit");
    bus.listen(TransactionPhase::AfterCompletion, |_: Arc<Ev>| async {
        explode("completion bug")
    });
    listen(
        &bus,
        &log,
        TransactionPhase::AfterCompletion,
        "after_completion",
    );
    let r = template()
        .execute(|_| async {
            bus.publish(Ev(4)).await?;
            Ok::<_, TxError>(44)
        })
        .await;
    assert_eq!(r.unwrap(), 44);
    assert_eq!(log.take(), ["after_commit 4", "after_completion 4"]);
}

#[tokio::test]
async fn order_then_registration_order_and_late_adjustment() {
    let (bus, log) = (EventBus::new(), Log::default());
    let a = listen(&bus, &log, TransactionPhase::AfterCommit, "a");
    listen(&bus, &log, TransactionPhase::AfterCommit, "b").order(5);
    listen(&bus, &log, TransactionPhase::AfterCommit, "c");
    listen(&bus, &log, TransactionPhase::AfterCommit, "d").order(-5);
    let run = |n| {
        let bus = bus.clone();
        async move {
            template()
                .execute(|_| async { bus.publish(Ev(n)).await })
                .await
                .unwrap();
        }
    };
    run(1).await;
    assert_eq!(log.take(), ["d 1", "a 1", "c 1", "b 1"]);
    // Adjusting a registered listener re-sorts it.
    let a = a.order(10);
    run(2).await;
    assert_eq!(log.take(), ["d 2", "c 2", "b 2", "a 2"]);
    assert!(a.clone().remove());
    assert!(!a.remove());
    run(3).await;
    assert_eq!(log.take(), ["d 3", "c 3", "b 3"]);
}

#[tokio::test]
async fn events_run_in_publish_order_and_by_type() {
    struct Other;
    let (bus, log) = (EventBus::new(), Log::default());
    listen(&bus, &log, TransactionPhase::AfterCommit, "x");
    listen(&bus, &log, TransactionPhase::AfterCommit, "y");
    let l = log.clone();
    bus.listen(TransactionPhase::AfterCommit, move |_: Arc<Other>| {
        let l = l.clone();
        async move { l.push("other") }
    });
    template()
        .execute(|_| async {
            bus.publish(Ev(1)).await?;
            bus.publish(Other).await?;
            bus.publish(Ev(2)).await?;
            bus.publish("no listener for &str").await
        })
        .await
        .unwrap();
    assert_eq!(log.take(), ["x 1", "y 1", "other", "x 2", "y 2"]);
}

#[tokio::test]
async fn without_transaction_only_fallback_listeners_run_at_once() {
    let (bus, log) = all_phases();
    listen(&bus, &log, TransactionPhase::AfterCommit, "fallback_commit").fallback_execution(true);
    listen(
        &bus,
        &log,
        TransactionPhase::AfterRollback,
        "fallback_rollback",
    )
    .fallback_execution(true);
    let l = log.clone();
    bus.on(move |e: Arc<Ev>| {
        let l = l.clone();
        async move { l.push(format!("plain {}", e.0)) }
    });

    bus.publish(Ev(1)).await.unwrap();
    assert_eq!(
        log.take(),
        ["fallback_commit 1", "fallback_rollback 1", "plain 1"]
    );

    // A scope without an actual transaction counts as none (Spring's rule).
    for p in [
        Propagation::Supports,
        Propagation::NotSupported,
        Propagation::Never,
    ] {
        let t = template().propagation(p);
        assert_eq!(
            run_logged(&t, &log, "body end", publishes(&bus, 2)).await,
            [
                "fallback_commit 2",
                "fallback_rollback 2",
                "plain 2",
                "body end"
            ],
            "{p:?}"
        );
    }

    // NotSupported inside a transaction suspends it: no transaction to follow.
    let t = template();
    let not_supported = t.clone().propagation(Propagation::NotSupported);
    let suspended = async || {
        not_supported
            .execute(|_| async { bus.publish(Ev(3)).await })
            .await
    };
    assert_eq!(
        run_logged(&t, &log, "outer end", suspended).await,
        [
            "fallback_commit 3",
            "fallback_rollback 3",
            "plain 3",
            "outer end"
        ]
    );
}

#[tokio::test]
async fn fallback_listeners_in_a_transaction_wait_for_it() {
    let (bus, log) = (EventBus::new(), Log::default());
    listen(&bus, &log, TransactionPhase::AfterCommit, "after_commit").fallback_execution(true);
    assert_eq!(
        run_logged(&template(), &log, "body end", publishes(&bus, 1)).await,
        ["body end", "after_commit 1"]
    );
}

#[tokio::test]
async fn fallback_before_commit_error_is_returned() {
    let bus = EventBus::new();
    bus.listen(TransactionPhase::BeforeCommit, |_: Arc<Ev>| async {
        Err::<(), _>("invalid")
    })
    .fallback_execution(true);
    let r = bus.publish(Ev(1)).await;
    assert!(matches!(r, Err(TxError::Listener(e)) if e.to_string() == "invalid"));
}

#[tokio::test]
async fn plain_listeners_run_at_publish_in_order_and_fail_publish() {
    let (bus, log) = all_phases();
    for (name, order) in [("p1", 0), ("p0", -1), ("p2", 0)] {
        let l = log.clone();
        bus.on(move |e: Arc<Ev>| {
            let l = l.clone();
            async move {
                l.push(format!("{name} {}", e.0));
                if e.0 == 2 && name == "p1" {
                    return Err(BoxError::from("plain failed"));
                }
                Ok(())
            }
        })
        .order(order);
    }
    assert_eq!(
        run_logged(&template(), &log, "published", publishes(&bus, 1)).await,
        [
            "p0 1",
            "p1 1",
            "p2 1",
            "published",
            "before_commit 1",
            "after_commit 1",
            "after_completion 1"
        ]
    );

    // A failing plain listener stops the others; propagated, it rolls the transaction
    // back and the event's AfterRollback listeners see it.
    let r = template()
        .execute(|_| async { bus.publish(Ev(2)).await })
        .await;
    assert!(matches!(r, Err(TxError::Listener(e)) if e.to_string() == "plain failed"));
    assert_eq!(
        log.take(),
        ["p0 2", "p1 2", "after_rollback 2", "after_completion 2"]
    );
}

#[tokio::test]
async fn requires_new_event_follows_the_inner_transaction() {
    let (bus, log) = all_phases();
    let t = template();
    let r = t
        .execute(|_| async {
            bus.publish(Ev(1)).await?;
            t.clone()
                .propagation(Propagation::RequiresNew)
                .execute(|_| async { bus.publish(Ev(2)).await })
                .await?;
            log.push("inner done");
            Err::<(), _>(TxError::UnexpectedRollback)
        })
        .await;
    assert!(r.is_err());
    assert_eq!(
        log.take(),
        [
            "before_commit 2",
            "after_commit 2",
            "after_completion 2",
            "inner done",
            "after_rollback 1",
            "after_completion 1"
        ]
    );
}

#[tokio::test]
async fn nested_rollback_completes_its_events_then() {
    let (bus, log) = all_phases();
    let t = template();
    let nested = t.clone().propagation(Propagation::Nested);
    let body = async || {
        bus.publish(Ev(1)).await?;
        let r = nested
            .execute(|_| async {
                bus.publish(Ev(2)).await?;
                Err::<(), _>(TxError::UnexpectedRollback)
            })
            .await;
        assert!(r.is_err());
        log.push("savepoint rolled back");
        nested.execute(|_| async { bus.publish(Ev(3)).await }).await
    };
    assert_eq!(
        run_logged(&t, &log, "savepoint released", body).await,
        [
            "after_rollback 2",
            "after_completion 2",
            "savepoint rolled back",
            "savepoint released",
            "before_commit 1",
            "before_commit 3",
            "after_commit 1",
            "after_commit 3",
            "after_completion 1",
            "after_completion 3"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn timeout_and_cancellation_roll_back() {
    let (bus, log) = all_phases();
    let r = template()
        .timeout(Duration::from_millis(50))
        .execute(|_| async {
            bus.publish(Ev(1)).await?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, TxError>(())
        })
        .await;
    assert!(matches!(r, Err(TxError::Timeout)));
    assert_eq!(log.take(), ["after_rollback 1", "after_completion 1"]);

    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = Mutex::new(Some(tx));
    bus.listen(TransactionPhase::AfterCompletion, move |_: Arc<Ev>| {
        if let Some(tx) = tx.lock().unwrap().take() {
            let _ = tx.send(());
        }
        async {}
    });
    let t = template();
    let call = t.execute(|_| async {
        bus.publish(Ev(2)).await?;
        std::future::pending::<()>().await;
        Ok::<_, TxError>(())
    });
    cancel_after(10, call).await;
    rx.await.unwrap();
    assert_eq!(log.take(), ["after_rollback 2", "after_completion 2"]);
}

#[tokio::test]
async fn publish_is_send_and_bus_is_shared() {
    fn assert_send<T: Send>(_: &T) {}
    let bus = EventBus::new();
    let fut = bus.publish(Ev(0));
    assert_send(&fut);
    fut.await.unwrap();

    let log = Log::default();
    let clone = bus.clone();
    listen(&clone, &log, TransactionPhase::AfterCommit, "via clone").fallback_execution(true);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let bus = bus.clone();
            tokio::spawn(async move { bus.publish(Ev(i)).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(log.take().len(), 8);
    assert!(format!("{bus:?}").contains("Ev"));
}
