//! Observing transactions on PostgreSQL: a process-wide listener sees the callbacks of a
//! transaction with a failing Nested step in order, with the `postgresql` backend and the
//! rows to prove what committed; sqlx's own statement events nest under the `tx` span of the
//! scope that ran them (a RequiresNew audit's under its own span). Skips (loudly) when
//! PostgreSQL is down, unless `TX_TEST_REQUIRE_SERVERS=1`.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex};

use sqlx::AssertSqlSafe;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tx_sqlx::{
    BoxError, PgTxPool, Propagation, RollbackCause, TransactionExecution, TransactionListener,
    TransactionTemplate, TxError,
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

/// Callbacks of transactions named `observe_pg::...`, as `<callback> <name> <backend>`.
static CALLBACKS: LazyLock<Mutex<Vec<String>>> = LazyLock::new(Default::default);

struct Recording;

fn push(tx: &TransactionExecution<'_>, what: &str) -> Result<(), BoxError> {
    if tx.name().starts_with("observe_pg_listener::") {
        let sp = if tx.is_savepoint() {
            " (savepoint)"
        } else {
            ""
        };
        CALLBACKS
            .lock()
            .unwrap()
            .push(format!("{what} {}{sp} {}", tx.name(), tx.backend()));
    }
    Ok(())
}

impl TransactionListener for Recording {
    fn before_begin(&self, tx: &TransactionExecution<'_>) -> Result<(), BoxError> {
        push(tx, "before_begin")
    }
    fn after_begin(
        &self,
        tx: &TransactionExecution<'_>,
        _: Option<&TxError>,
    ) -> Result<(), BoxError> {
        push(tx, "after_begin")
    }
    fn before_commit(&self, tx: &TransactionExecution<'_>) -> Result<(), BoxError> {
        push(tx, "before_commit")
    }
    fn after_commit(
        &self,
        tx: &TransactionExecution<'_>,
        failure: Option<&TxError>,
    ) -> Result<(), BoxError> {
        assert!(failure.is_none());
        push(tx, "after_commit")
    }
    fn before_rollback(&self, tx: &TransactionExecution<'_>) -> Result<(), BoxError> {
        push(tx, "before_rollback")
    }
    fn after_rollback(
        &self,
        tx: &TransactionExecution<'_>,
        cause: RollbackCause,
    ) -> Result<(), BoxError> {
        push(tx, &format!("after_rollback({cause})"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_sees_a_transaction_with_a_failing_nested_step_then_a_rollback_in_order() {
    capture();
    let Some(db) = tx_tests::pg_pool(4).await else {
        return;
    };
    tx_sqlx::add_transaction_listener(Recording);
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
        *CALLBACKS.lock().unwrap(),
        [
            "before_begin observe_pg_listener::order postgresql",
            "after_begin observe_pg_listener::order postgresql",
            "before_begin observe_pg_listener::reserve (savepoint) postgresql",
            "after_begin observe_pg_listener::reserve (savepoint) postgresql",
            "before_rollback observe_pg_listener::reserve (savepoint) postgresql",
            "after_rollback(error) observe_pg_listener::reserve (savepoint) postgresql",
            "before_commit observe_pg_listener::order postgresql",
            "after_commit observe_pg_listener::order postgresql",
            "before_begin observe_pg_listener::refund postgresql",
            "after_begin observe_pg_listener::refund postgresql",
            "before_rollback observe_pg_listener::refund postgresql",
            "after_rollback(error) observe_pg_listener::refund postgresql",
        ]
    );
    drop_table(&table).await;
}

// ---------------------------------------------------------------------------------------------
// Spans

#[derive(Debug, Clone)]
struct SpanRec {
    parent: Option<usize>,
    fields: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct EventRec {
    target: String,
    fields: BTreeMap<String, String>,
    span: Option<usize>,
}

#[derive(Default)]
struct Captured {
    spans: Vec<SpanRec>,
    events: Vec<EventRec>,
    live: std::collections::HashMap<u64, usize>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Captured>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().target() != "tx" {
            return;
        }
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .and_then(|p| c.live.get(&p.id().into_u64()).copied());
        let index = c.spans.len();
        c.spans.push(SpanRec { parent, fields });
        c.live.insert(id.into_u64(), index);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&index) = c.live.get(&id.into_u64()) {
            values.record(&mut Fields(&mut c.spans[index].fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let span = ctx
            .event_span(event)
            .and_then(|s| c.live.get(&s.id().into_u64()).copied());
        c.events.push(EventRec {
            target: event.metadata().target().to_owned(),
            fields,
            span,
        });
    }

    fn on_close(&self, id: Id, _: Context<'_, S>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .live
            .remove(&id.into_u64());
    }
}

/// sqlx's statement events carry the statement in `db.statement`.
fn statements_in(events: &[EventRec], span: usize) -> Vec<String> {
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
fn capture() -> &'static Capture {
    static CAPTURE: LazyLock<Capture> = LazyLock::new(|| {
        let capture = Capture::default();
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(capture.clone()),
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

    let c = capture.0.lock().unwrap_or_else(|p| p.into_inner());
    let find = |name: &str| {
        c.spans
            .iter()
            .position(|s| s.fields.get("name").map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no span {name}: {:#?}", c.spans))
    };
    let (order, audit) = (find("observe_pg::place_order"), find("observe_pg::audit"));
    assert_eq!(c.spans[audit].parent, Some(order));
    for i in [order, audit] {
        let f = &c.spans[i].fields;
        assert_eq!(f.get("db.system").map(String::as_str), Some("postgresql"));
        assert_eq!(f.get("outcome").map(String::as_str), Some("committed"));
        assert_ne!(f.get("tx_id"), None);
    }
    assert_ne!(
        c.spans[order].fields.get("tx_id"),
        c.spans[audit].fields.get("tx_id")
    );
    // sqlx logs each statement when it completes, inside the scope that ran it.
    let insert = format!("INSERT INTO {table} (tag) VALUES ($1)");
    for (span, what) in [(order, "order"), (audit, "audit")] {
        let statements = statements_in(&c.events, span);
        assert!(
            statements.iter().any(|s| s == &insert) && statements.iter().any(|s| s == "COMMIT"),
            "{what}: {statements:#?}"
        );
    }
}
