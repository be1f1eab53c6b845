//! `TxLayer` on PostgreSQL, through a real HTTP client against the app served on loopback:
//! commit on success, rollback on error statuses, services joining the request's
//! transaction, nothing sent for a request that touches no table, a failed COMMIT (a deferred
//! constraint) turned into an error response, hooks after the commit, and a client that
//! disconnects mid-request rolling back.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{Notify, mpsc};
use tx_axum::TxLayer;
use tx_sqlx::prelude::*;
use tx_sqlx::testing::Log;
use tx_sqlx::{PgTxPool, after_commit, after_completion};

#[derive(Clone)]
struct App {
    db: PgTxPool,
    table: Arc<str>,
    /// What the handlers and their hooks saw, in order.
    log: Log,
    /// Told when the slow handler has written its row.
    reached: Arc<Notify>,
    /// Receives the slow handler's transaction outcome.
    completions: mpsc::UnboundedSender<Completion>,
}

impl App {
    async fn insert(&self, name: &str) -> Result<(), TxError> {
        Ok(insert(&self.db, &self.table, name).await?)
    }
}

/// Inserts the row `name` through `db`, in the transaction of the scope it runs in.
async fn insert(db: &PgTxPool, table: &str, name: &str) -> Result<(), sqlx::Error> {
    let sql = format!("INSERT INTO {table} (name) VALUES ($1)");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .execute(db)
        .await?;
    Ok(())
}

/// How many rows named `name` `executor` sees.
async fn count<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    table: &str,
    name: &str,
) -> sqlx::Result<i64> {
    let sql = format!("SELECT COUNT(*) FROM {table} WHERE name = $1");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .fetch_one(executor)
        .await
}

/// What the service below fails with.
#[derive(Debug)]
enum RecordError {
    Tx(TxError),
    Refused,
}

impl From<TxError> for RecordError {
    fn from(e: TxError) -> Self {
        RecordError::Tx(e)
    }
}

/// A service the handlers call: joins the request's transaction.
#[transactional(manager = app.db)]
async fn record(app: &App, name: &str, fail: bool) -> Result<(), RecordError> {
    let status = tx_sqlx::current_status().unwrap();
    assert!(
        !status.is_new_transaction(),
        "joins the request's transaction"
    );
    app.insert(name).await?;
    if fail {
        return Err(RecordError::Refused);
    }
    Ok(())
}

/// What `/write` and its hooks log for a request whose transaction commits.
const COMMITTED: &[&str] = &["handler returned", "after_commit", "completed Committed"];

/// What `/write` and its hooks log for a request whose transaction rolls back.
const ROLLED_BACK: &[&str] = &["handler returned", "completed RolledBack"];

/// Writes `name`, registers hooks, answers `status`.
async fn write(
    State(app): State<App>,
    Json((name, status)): Json<(String, u16)>,
) -> impl IntoResponse {
    app.insert(&name).await.unwrap();
    let log = app.log.clone();
    after_commit(async move { log.push("after_commit") }).unwrap();
    let log = app.log.clone();
    after_completion(move |c: Completion| async move { log.push(format!("completed {c:?}")) })
        .unwrap();
    app.log.push("handler returned");
    StatusCode::from_u16(status).unwrap()
}

/// Calls a transactional service; with `fail`, swallows its failure and answers 200.
async fn via_service(
    State(app): State<App>,
    Json((name, fail)): Json<(String, bool)>,
) -> StatusCode {
    match record(&app, &name, fail).await {
        Ok(()) => assert!(!fail),
        Err(RecordError::Refused) => assert!(fail),
        Err(RecordError::Tx(e)) => panic!("unexpected: {e}"),
    }
    StatusCode::OK
}

/// Touches no table.
async fn no_table() -> String {
    let status = tx_sqlx::current_status().expect("runs in the request's scope");
    status.name().to_owned()
}

/// Writes a row, then waits for the client to give up.
async fn slow(State(app): State<App>) -> StatusCode {
    app.insert("slow").await.unwrap();
    let completions = app.completions.clone();
    after_completion(move |c: Completion| async move {
        let _ = completions.send(c);
    })
    .unwrap();
    app.reached.notify_one();
    tokio::time::sleep(Duration::from_secs(60)).await;
    StatusCode::OK
}

/// Serves `router` on a loopback port; returns its base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

struct Fixture {
    db: PgTxPool,
    table: String,
    log: Log,
    url: String,
    reached: Arc<Notify>,
    completions: mpsc::UnboundedReceiver<Completion>,
}

/// A table of its own (names unique, a deferred uniqueness check) and the app on it.
async fn fixture(layer: impl FnOnce(PgTxPool) -> TxLayer) -> Option<Fixture> {
    let db = tx_tests::pg_pool(4).await?;
    let table = tx_tests::unique_table("axum");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, \
         CONSTRAINT {table}_name UNIQUE (name) DEFERRABLE INITIALLY DEFERRED)"
    )))
    .execute(db.pool())
    .await
    .unwrap();
    let (tx, completions) = mpsc::unbounded_channel();
    let app = App {
        db: db.clone(),
        table: table.as_str().into(),
        log: Log::default(),
        reached: Arc::new(Notify::new()),
        completions: tx,
    };
    let router = Router::new()
        .route("/write", post(write))
        .route("/service", post(via_service))
        .route("/none", get(no_table))
        .route("/slow", get(slow))
        .layer(layer(db.clone()))
        .with_state(app.clone());
    let url = serve(router).await;
    Some(Fixture {
        db,
        table,
        log: app.log,
        url,
        reached: app.reached,
        completions,
    })
}

/// Runs `test` against a fresh app whose router has `layer`, then drops its table (nothing
/// runs when the servers are not there).
async fn with_app(layer: impl FnOnce(PgTxPool) -> TxLayer, test: impl AsyncFnOnce(&mut Fixture)) {
    let Some(mut f) = fixture(layer).await else {
        return;
    };
    test(&mut f).await;
    f.drop_table().await;
}

impl Fixture {
    async fn post(&self, path: &str, body: serde_json::Value) -> (StatusCode, String) {
        let response = client()
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        (status, response.text().await.unwrap())
    }

    /// Posts `name` to `/write`, whose handler answers `status`.
    async fn write(&self, name: &str, status: u16) -> (StatusCode, String) {
        self.post("/write", serde_json::json!([name, status])).await
    }

    /// The committed rows named `name`.
    async fn count(&self, name: &str) -> i64 {
        count(self.db.pool(), &self.table, name).await.unwrap()
    }

    async fn drop_table(self) {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {}", self.table)))
            .execute(self.db.pool())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn success_commits_before_the_response_and_errors_roll_back() {
    with_app(TxLayer::new, async |f| {
        // 201 and 303 commit, and the hooks ran before the response was returned; 409 and 500
        // roll back, and the handler's response still goes out.
        for (name, code, log, rows) in [
            ("created", 201, COMMITTED, 1),
            ("redirected", 303, COMMITTED, 1),
            ("conflict", 409, ROLLED_BACK, 0),
            ("failed", 500, ROLLED_BACK, 0),
        ] {
            let (status, _) = f.write(name, code).await;
            assert_eq!(status.as_u16(), code);
            assert_eq!(f.log.take(), log, "{name}");
            assert_eq!(f.count(name).await, rows, "{name}");
        }
    })
    .await;
}

#[tokio::test]
async fn commit_when_decides() {
    with_app(
        |db| TxLayer::new(db).commit_when(|s| s.is_success() || s == StatusCode::CONFLICT),
        async |f| {
            let (status, _) = f.write("kept", 409).await;
            assert_eq!(status, StatusCode::CONFLICT);
            assert_eq!(f.count("kept").await, 1);
            let (status, _) = f.write("moved", 302).await;
            assert_eq!(status, StatusCode::FOUND);
            assert_eq!(f.count("moved").await, 0, "3xx no longer commits");
        },
    )
    .await;
}

#[tokio::test]
async fn services_join_the_request_transaction() {
    with_app(TxLayer::new, async |f| {
        let (status, _) = f
            .post("/service", serde_json::json!(["joined", false]))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(f.count("joined").await, 1);

        // The service failed and marked the transaction rollback-only; the handler swallowed it
        // and answered 200: the commit turns into a rollback, and the client gets a 500.
        let (status, body) = f
            .post("/service", serde_json::json!(["doomed", true]))
            .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("did not commit"), "{body}");
        assert_eq!(f.count("doomed").await, 0);
    })
    .await;
}

#[tokio::test]
async fn a_request_that_touches_no_table_sends_nothing() {
    with_app(TxLayer::new, async |_| {
        // A pool of its own that opens connections only on demand.
        let lazy = PgTxPool::new(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy(&tx_tests::pg_url())
                .unwrap(),
        );
        let url = serve(
            Router::new()
                .route("/none", get(no_table))
                .layer(TxLayer::new(lazy.clone())),
        )
        .await;
        for _ in 0..3 {
            let response = client().get(format!("{url}/none")).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            assert_eq!(response.text().await.unwrap(), "GET /none");
        }
        assert_eq!(lazy.pool().size(), 0, "no connection was ever opened");
    })
    .await;
}

#[tokio::test]
async fn a_failed_commit_is_an_error_response() {
    with_app(TxLayer::new, async |f| {
        let (status, _) = f.write("taken", 201).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(f.log.take(), COMMITTED);
        // The duplicate passes every statement; the deferred constraint fails at COMMIT.
        let (status, body) = f.write("taken", 201).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("did not commit"), "{body}");
        assert_eq!(f.log.take(), ROLLED_BACK);
        assert_eq!(f.count("taken").await, 1);
    })
    .await;
}

#[tokio::test]
async fn on_commit_error_maps_the_failure() {
    with_app(
        |db| {
            TxLayer::new(db).on_commit_error(|e: TxError| {
                (
                    StatusCode::CONFLICT,
                    format!("not saved: {}", e.is_retryable()),
                )
                    .into_response()
            })
        },
        async |f| {
            let (status, _) = f.write("dup", 200).await;
            assert_eq!(status, StatusCode::OK);
            let (status, body) = f.write("dup", 200).await;
            assert_eq!(status, StatusCode::CONFLICT);
            assert_eq!(body, "not saved: false");
            assert_eq!(f.count("dup").await, 1);
        },
    )
    .await;
}

#[tokio::test]
async fn a_client_that_disconnects_rolls_back() {
    with_app(TxLayer::new, async |f| {
        let url = format!("{}/slow", f.url);
        let request = tokio::spawn(async move { client().get(url).send().await });
        f.reached.notified().await; // the row is written, the handler waits
        request.abort(); // the client goes away mid-request
        let completion = tokio::time::timeout(Duration::from_secs(20), f.completions.recv())
            .await
            .expect("the server drops the handler when the client disconnects")
            .unwrap();
        assert_eq!(completion, Completion::RolledBack);
        assert_eq!(f.count("slow").await, 0);
    })
    .await;
}

/// A tower service of `http` requests that is not axum: plain `String` bodies.
#[derive(Clone)]
struct Plain {
    db: PgTxPool,
    table: Arc<str>,
}

impl tower_service::Service<http::Request<String>> for Plain {
    type Response = http::Response<String>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<http::Response<String>, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<String>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let name = request.into_body();
            insert(&this.db, &this.table, &name).await.unwrap();
            let status = if name.starts_with("bad") { 400 } else { 200 };
            Ok(http::Response::builder().status(status).body(name).unwrap())
        })
    }
}

#[tokio::test]
async fn any_tower_service_of_http_requests() {
    use tower_layer::Layer;
    use tower_service::Service;
    with_app(TxLayer::new, async |f| {
        let layer = TxLayer::new(f.db.clone()).on_commit_error(|e: TxError| {
            http::Response::builder()
                .status(503)
                .body(e.to_string())
                .unwrap()
        });
        let mut service = layer.layer(Plain {
            db: f.db.clone(),
            table: f.table.as_str().into(),
        });
        for (name, status) in [("good", 200), ("bad", 400), ("good", 503)] {
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .unwrap();
            let response = service
                .call(http::Request::new(name.to_owned()))
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), status, "{name}");
        }
        // The second "good" failed the deferred uniqueness check at COMMIT.
        assert_eq!(f.count("good").await, 1);
        assert_eq!(f.count("bad").await, 0);
    })
    .await;
}

/// Handlers called in the test's task (not through a server) run inside a test
/// transaction: the request's transaction is a savepoint of it, and nothing stays.
#[tokio::test]
async fn handlers_in_a_test_transaction() {
    use tower_service::Service;
    with_app(TxLayer::new, async |f| {
        let (completions, _) = mpsc::unbounded_channel();
        let app = App {
            db: f.db.clone(),
            table: f.table.as_str().into(),
            log: Log::default(),
            reached: Arc::new(Notify::new()),
            completions,
        };
        let mut router: Router = Router::new()
            .route("/write", post(write))
            .layer(TxLayer::new(f.db.clone()))
            .with_state(app);
        let mut send = async |name: &str, status: u16| {
            let request = http::Request::post("/write")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(
                    serde_json::json!([name, status]).to_string(),
                ))
                .unwrap();
            type Http = http::Request<axum::body::Body>;
            std::future::poll_fn(|cx| <Router as Service<Http>>::poll_ready(&mut router, cx))
                .await
                .unwrap();
            <Router as Service<Http>>::call(&mut router, request)
                .await
                .unwrap()
                .status()
                .as_u16()
        };
        tx_sqlx::testing::rollback(&f.db, || async {
            assert_eq!(send("in_test", 201).await, 201);
            assert_eq!(send("refused", 409).await, 409);
            let seen = |name| count(&f.db, &f.table, name);
            assert_eq!(
                seen("in_test").await?,
                1,
                "committed to the test transaction"
            );
            assert_eq!(seen("refused").await?, 0, "rolled back to its savepoint");
            Ok::<_, TxError>(())
        })
        .await
        .unwrap();
        assert_eq!(f.count("in_test").await, 0);
    })
    .await;
}
