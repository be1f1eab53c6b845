//! The `tx` spans, seen by a capturing subscriber: one span per scope with its fields, the
//! tree they form (a RequiresNew audit, a failing Nested step and a joined call under the
//! transaction that runs them, one root per attempt of a retried call), the outcome, cause
//! and duration recorded at close, and the engine's and the user's events inside them.

use std::time::Duration;

use crate::support::{RecordingManager, cancel_after, drain_until_rollback, t};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tx_core::testing::{CapturedEvent, CapturedSpan, SpanCapture};
use tx_core::{Propagation, TxError};

/// Runs `f` on a current-thread runtime with `capture` as the thread's subscriber.
fn capturing<R>(capture: &SpanCapture, f: impl std::future::Future<Output = R>) -> R {
    let subscriber = Registry::default().with(capture.clone());
    tracing::subscriber::with_default(subscriber, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(f)
    })
}

#[derive(Debug)]
enum AppError {
    OutOfStock,
    Tx(#[allow(dead_code)] TxError), // shown by Debug when a test fails
}

impl From<TxError> for AppError {
    fn from(e: TxError) -> Self {
        AppError::Tx(e)
    }
}

fn children(spans: &[CapturedSpan], parent: usize) -> Vec<(usize, &CapturedSpan)> {
    spans
        .iter()
        .enumerate()
        .filter(|(_, s)| s.parent == Some(parent))
        .collect()
}

fn by_name<'a>(spans: &[(usize, &'a CapturedSpan)], name: &str) -> (usize, &'a CapturedSpan) {
    let found: Vec<_> = spans
        .iter()
        .filter(|(_, s)| s.get("name") == Some(name))
        .collect();
    assert_eq!(found.len(), 1, "one span named {name} in {spans:#?}");
    *found[0]
}

fn messages_in(events: &[CapturedEvent], span: usize) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e.span == Some(span))
        .map(CapturedEvent::message)
        .collect()
}

/// A retried order: each attempt runs a RequiresNew audit, a Nested reservation that fails
/// (out of stock, rolled back to its savepoint) and a joined charge; the first attempt then
/// hits a serialization failure, the second commits.
#[test]
fn span_tree_of_a_retried_transaction_with_an_audit_a_failing_nested_step_and_a_participant() {
    let capture = SpanCapture::default();
    let m = RecordingManager::with_backend("postgres");
    let result: Result<u32, AppError> = capturing(&capture, async {
        t(&m)
            .name("shop::place_order")
            .retry(2)
            .execute(|status| {
                let m = m.clone();
                async move {
                    let attempt = status.attempt();
                    tracing::info!(target: "app", "placing order, attempt {attempt}");
                    m.stmt("INSERT order").await?;
                    t(&m)
                        .name("shop::audit")
                        .propagation(Propagation::RequiresNew)
                        .execute(|_| async {
                            m.stmt("INSERT audit").await?;
                            Ok::<_, AppError>(())
                        })
                        .await?;
                    let reserved = t(&m)
                        .name("shop::reserve")
                        .propagation(Propagation::Nested)
                        .execute(|_| async {
                            m.stmt("UPDATE stock").await?;
                            tracing::info!(target: "app", "stock is short");
                            Err::<(), _>(AppError::OutOfStock)
                        })
                        .await;
                    assert!(matches!(reserved, Err(AppError::OutOfStock)));
                    t(&m)
                        .name("shop::charge")
                        .execute(|_| async {
                            m.stmt("UPDATE balance").await?;
                            Ok::<_, AppError>(())
                        })
                        .await?;
                    if attempt == 1 {
                        m.serialization_failure("UPDATE balance").await?;
                    }
                    Ok(attempt)
                }
            })
            .await
    });
    assert_eq!(result.unwrap(), 2, "the second attempt commits");

    let spans = capture.spans();
    let events = capture.events();
    assert!(
        spans.iter().all(|s| s.name == "tx" && s.closed),
        "{spans:#?}"
    );
    let roots: Vec<(usize, &CapturedSpan)> = spans
        .iter()
        .enumerate()
        .filter(|(_, s)| s.parent.is_none())
        .collect();
    assert_eq!(roots.len(), 2, "one root span per attempt: {spans:#?}");

    let mut tx_ids = Vec::new();
    for (attempt, (root_index, root)) in roots.iter().enumerate() {
        let attempt = (attempt + 1).to_string();
        let tx_id = root
            .get("tx_id")
            .expect("a transaction has an id")
            .to_owned();
        let tx = Some(tx_id.as_str());
        let (outcome, cause) = if attempt == "1" {
            (Some("rolled_back"), Some("error"))
        } else {
            (Some("committed"), None)
        };
        root.assert_fields(&[
            ("name", Some("shop::place_order")),
            ("propagation", Some("Required")),
            ("isolation", Some("Default")),
            ("read_only", Some("false")),
            ("db.system", Some("postgresql")),
            ("scope", Some("new_transaction")),
            ("attempt", Some(attempt.as_str())),
            ("scope_id", tx),
            ("outcome", outcome),
            ("cause", cause),
        ]);
        assert!(
            root.get("duration_ms")
                .is_some_and(|d| d.parse::<f64>().is_ok())
        );

        let kids = children(&spans, *root_index);
        assert_eq!(kids.len(), 3, "audit, reserve, charge: {kids:#?}");
        let (audit_index, audit) = by_name(&kids, "shop::audit");
        audit.assert_fields(&[
            ("propagation", Some("RequiresNew")),
            ("scope", Some("new_transaction")),
            ("outcome", Some("committed")),
        ]);
        assert_ne!(audit.get("tx_id"), tx, "its own transaction");

        // The savepoint runs in the order's transaction; the participant too, and its owner
        // decides its outcome.
        let (reserve_index, reserve) = by_name(&kids, "shop::reserve");
        reserve.assert_fields(&[
            ("propagation", Some("Nested")),
            ("scope", Some("savepoint")),
            ("tx_id", tx),
            ("outcome", Some("rolled_back")),
            ("cause", Some("error")),
            ("attempt", Some(attempt.as_str())),
        ]);
        let (_, charge) = by_name(&kids, "shop::charge");
        charge.assert_fields(&[
            ("scope", Some("participant")),
            ("tx_id", tx),
            ("outcome", None),
        ]);
        for scope in [reserve, charge] {
            assert_ne!(scope.get("scope_id"), tx, "{scope:#?}");
        }

        // The user's events and the engine's own lines nest in the scope they happen in.
        let root_events = messages_in(&events, *root_index);
        assert!(root_events.contains(&format!("placing order, attempt {attempt}").as_str()));
        assert!(
            root_events.iter().any(|m| m.starts_with(
                "Creating new transaction with name [shop::place_order]: PROPAGATION_REQUIRED"
            )),
            "{root_events:#?}"
        );
        let completed = if attempt == "1" {
            "Completed transaction [shop::place_order]: rolled back (error)"
        } else {
            "Completed transaction [shop::place_order]: committed"
        };
        assert!(root_events.contains(&completed), "{root_events:#?}");
        let reserve_events = messages_in(&events, reserve_index);
        assert!(
            reserve_events.contains(&"stock is short"),
            "{reserve_events:#?}"
        );
        assert!(
            reserve_events
                .iter()
                .any(|m| m.starts_with("Rolling back transaction [shop::place_order] to savepoint")),
            "{reserve_events:#?}"
        );
        assert!(
            messages_in(&events, audit_index)
                .contains(&"Completed transaction [shop::audit]: committed")
        );
        tx_ids.push(tx_id);
    }
    assert_ne!(tx_ids[0], tx_ids[1], "each attempt is its own transaction");
    // The retry decision is logged between the attempts, outside both.
    assert!(
        events
            .iter()
            .any(|e| e.span.is_none() && e.target == "tx" && e.message().contains("retry 1/2"))
    );
}

/// A transaction dropped mid-body closes its span as rolled back, cancelled, once the task
/// that finishes it has run; a participant dropped with it records why it marked the
/// transaction; the cancelled line is inside the span.
#[test]
fn cancelled_transaction_closes_its_span_as_rolled_back_cancelled() {
    let capture = SpanCapture::default();
    let m = RecordingManager::default();
    capturing(&capture, async {
        let template = t(&m).name("obs::cancelled");
        let call = template.execute(|_| async {
            m.stmt("INSERT").await?;
            t(&m)
                .name("obs::cancelled_inner")
                .execute(|_| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok::<_, TxError>(())
                })
                .await
        });
        cancel_after(10, call).await;
        // The rollback finishes in a spawned task.
        drain_until_rollback(&m).await;
    });
    let spans = capture.spans();
    let outer = spans
        .iter()
        .position(|s| s.get("name") == Some("obs::cancelled"))
        .unwrap();
    assert!(spans[outer].closed);
    assert_eq!(spans[outer].get("outcome"), Some("rolled_back"));
    assert_eq!(spans[outer].get("cause"), Some("cancelled"));
    assert_eq!(spans[outer].get("db.system"), Some("custom"));
    let inner = &spans[spans
        .iter()
        .position(|s| s.get("name") == Some("obs::cancelled_inner"))
        .unwrap()];
    assert_eq!(inner.parent, Some(outer));
    assert_eq!(inner.get("cause"), Some("cancelled"));
    let events = capture.events();
    assert!(
        messages_in(&events, outer)
            .contains(&"Transactional call [obs::cancelled] cancelled: rolling back")
    );
    assert!(
        messages_in(&events, outer)
            .contains(&"Completed transaction [obs::cancelled]: rolled back (cancelled)")
    );
}

/// Without a subscriber nothing is recorded and the scopes behave the same (the disabled
/// path: `Span::none()`); with one that filters `tx` out, no `tx` span is created.
#[test]
fn a_subscriber_that_filters_tx_out_sees_no_tx_span() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let capture = SpanCapture::default();
    let subscriber = Registry::default().with(
        capture
            .clone()
            .with_filter(Targets::new().with_target("app", LevelFilter::TRACE)),
    );
    let m = RecordingManager::default();
    let r: Result<(), TxError> = tracing::subscriber::with_default(subscriber, || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(t(&m).name("obs::filtered").execute(|_| async {
                tracing::info!(target: "app", "in the body");
                m.stmt("INSERT").await
            }))
    });
    r.unwrap();
    assert!(capture.spans().is_empty(), "{:#?}", capture.spans());
    let events = capture.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].span, None);
    assert_eq!(m.take(), ["BEGIN Default", "STMT INSERT", "COMMIT"]);
}
