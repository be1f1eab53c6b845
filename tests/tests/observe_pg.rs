//! Observing transactions on PostgreSQL: a process-wide listener sees the callbacks of a
//! transaction with a failing Nested step in order, with the `postgresql` backend and the
//! rows to prove what committed; sqlx's own statement events nest under the `tx` span of the
//! scope that ran them (a RequiresNew audit's under its own span). Skips (loudly) when
//! PostgreSQL is down, unless `TX_TEST_REQUIRE_SERVERS=1`.

use std::sync::LazyLock;

use sqlx::AssertSqlSafe;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tx_sqlx::testing::{CapturedEvent, EachCallback, Log, SpanCapture};
use tx_sqlx::{
    BoxError, PgTxPool, Propagation, TransactionExecution, TransactionTemplate, TxError,
};
use tx_tests::reliability::PgBackend;

async fn create_table(prefix: &str) -> String {
    let table = tx_tests::unique_table(prefix);
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (id serial PRIMARY KEY, tag text NOT NULL)"
    )))
    .execute(&mut PgBackend::fresh().await)
    .await
    .expect("create table");
    table
}

async fn drop_table(table: &str) {
    let _ = sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
        .execute(&mut PgBackend::fresh().await)
        .await;
}

async fn tags(table: &str) -> Vec<String> {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT tag FROM {table} ORDER BY id"
    )))
    .fetch_all(&mut PgBackend::fresh().await)
    .await
    .expect("read table")
}

async fn insert(db: &PgTxPool, table: &str, tag: &str) -> Result<(), TxError> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (tag) VALUES ($1)"
    )))
    .bind(tag.to_owned())
    .execute(db)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Listener

/// Callbacks of transactions named `observe_pg_listener::...`, as
/// `<callback> <name>[ (savepoint)] <backend>[ <what it was told>]`.
static CALLBACKS: LazyLock<Log> = LazyLock::new(Log::default);

fn record(tx: &TransactionExecution<'_>, callback: &str, told: String) -> Result<(), BoxError> {
    if tx.name().starts_with("observe_pg_listener::") {
        let sp = if tx.is_savepoint() {
            " (savepoint)"
        } else {
            ""
        };
        CALLBACKS.push(format!(
            "{callback} {}{sp} {}{told}",
            tx.name(),
            tx.backend()
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_sees_a_transaction_with_a_failing_nested_step_then_a_rollback_in_order() {
    capture();
    let Some(db) = tx_tests::pg_pool(4).await else {
        return;
    };
    tx_sqlx::add_transaction_listener(EachCallback::new(record));
    let table = create_table("observe_listener").await;

    let r: Result<(), TxError> = TransactionTemplate::new(db.clone())
        .name("observe_pg_listener::order")
        .execute(|_| async {
            insert(&db, &table, "order").await?;
            let step: Result<(), TxError> = TransactionTemplate::new(db.clone())
                .name("observe_pg_listener::reserve")
                .propagation(Propagation::Nested)
                .execute(|_| async {
                    insert(&db, &table, "reserved").await?;
                    // A real failure inside the savepoint: a statement the server rejects.
                    sqlx::query("SELECT 1/0").execute(&db).await?;
                    Ok(())
                })
                .await;
            assert!(step.is_err(), "division by zero");
            insert(&db, &table, "after the step").await
        })
        .await;
    r.unwrap();
    let r: Result<(), TxError> = TransactionTemplate::new(db.clone())
        .name("observe_pg_listener::refund")
        .execute(|_| async {
            insert(&db, &table, "refund").await?;
            Err(TxError::NoTransaction)
        })
        .await;
    assert!(r.is_err());

    assert_eq!(tags(&table).await, ["order", "after the step"]);
    assert_eq!(
        CALLBACKS.take(),
        [
            "before_begin observe_pg_listener::order postgresql",
            "after_begin observe_pg_listener::order postgresql",
            "before_begin observe_pg_listener::reserve (savepoint) postgresql",
            "after_begin observe_pg_listener::reserve (savepoint) postgresql",
            "before_rollback observe_pg_listener::reserve (savepoint) postgresql",
            "after_rollback observe_pg_listener::reserve (savepoint) postgresql error",
            "before_commit observe_pg_listener::order postgresql",
            "after_commit observe_pg_listener::order postgresql",
            "before_begin observe_pg_listener::refund postgresql",
            "after_begin observe_pg_listener::refund postgresql",
            "before_rollback observe_pg_listener::refund postgresql",
            "after_rollback observe_pg_listener::refund postgresql error",
        ]
    );
    drop_table(&table).await;
}

// ---------------------------------------------------------------------------------------------
// Spans

/// sqlx's statement events carry the statement in `db.statement`.
fn statements_in(events: &[CapturedEvent], span: usize) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.target == "sqlx::query" && e.span == Some(span))
        .filter_map(|e| {
            let sql = e.fields.get("db.statement")?;
            // A short statement is logged as its summary only.
            Some(
                if sql.trim().is_empty() {
                    e.fields.get("summary")?
                } else {
                    sql
                }
                .trim()
                .to_owned(),
            )
        })
        .collect()
}

/// The capture, installed once as the global subscriber of this test binary (a thread-local
/// one would miss callsites first hit by another test's thread).
fn capture() -> &'static SpanCapture {
    static CAPTURE: LazyLock<SpanCapture> = LazyLock::new(|| {
        let capture = SpanCapture::default();
        // Of the spans, only `tx`'s: an event's span is then the `tx` scope it ran in. Every
        // event, and every `enabled!` probe (sqlx asks one before it logs a statement).
        let tx_spans = filter_fn(|meta| !meta.is_span() || meta.target() == "tx");
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(capture.clone().with_filter(tx_spans)),
        )
        .expect("no other global subscriber in this test binary");
        capture
    });
    &CAPTURE
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_statement_events_nest_under_the_span_of_the_scope_that_ran_them() {
    let capture = capture();
    let Some(db) = tx_tests::pg_pool(4).await else {
        return;
    };
    let table = create_table("observe_spans").await;
    let r: Result<(), TxError> = TransactionTemplate::new(db.clone())
        .name("observe_pg::place_order")
        .execute(|_| async {
            insert(&db, &table, "order").await?;
            TransactionTemplate::new(db.clone())
                .name("observe_pg::audit")
                .propagation(Propagation::RequiresNew)
                .execute(|_| async { insert(&db, &table, "audit").await })
                .await
        })
        .await;
    r.unwrap();
    assert_eq!(tags(&table).await, ["order", "audit"]);
    drop_table(&table).await;

    let (spans, events) = (capture.spans(), capture.events());
    let find = |name: &str| {
        spans
            .iter()
            .position(|s| s.get("name") == Some(name))
            .unwrap_or_else(|| panic!("no span {name}: {spans:#?}"))
    };
    let (order, audit) = (find("observe_pg::place_order"), find("observe_pg::audit"));
    assert_eq!(spans[audit].parent, Some(order));
    for i in [order, audit] {
        spans[i].assert_fields(&[
            ("db.system", Some("postgresql")),
            ("outcome", Some("committed")),
        ]);
        assert_ne!(spans[i].get("tx_id"), None);
    }
    assert_ne!(spans[order].get("tx_id"), spans[audit].get("tx_id"));
    // sqlx logs each statement when it completes, inside the scope that ran it.
    let insert = format!("INSERT INTO {table} (tag) VALUES ($1)");
    for (span, what) in [(order, "order"), (audit, "audit")] {
        let statements = statements_in(&events, span);
        assert!(
            statements.iter().any(|s| s == &insert) && statements.iter().any(|s| s == "COMMIT"),
            "{what}: {statements:#?}"
        );
    }
}
