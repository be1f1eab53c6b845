//! # tx-axum: one transaction per request
//!
//! [`TxLayer`] is a tower layer for axum 0.8 (and any tower service of `http` requests): each
//! request's handler runs in a transaction on the layer's transaction manager (a `TxPool`), so
//! everything the handler does on that pool, and every `#[transactional]` service it calls,
//! joins one transaction (Django's `ATOMIC_REQUESTS`).
//!
//! * **Lazy.** The transaction is begun by the handler's first statement: a request that
//!   touches no table sends nothing to the database and holds no connection.
//! * **The status decides.** It commits when the response status passes
//!   [`commit_when`](TxLayer::commit_when) (default: 2xx and 3xx), else rolls back; the
//!   response is returned either way. A service error of the inner service rolls back too.
//! * **Committed before it leaves.** The commit happens before the response is handed back to
//!   the server, so a commit that fails (a serialization failure, a lost connection, a
//!   deferred constraint, a participant that marked the transaction rollback-only) becomes a
//!   500 response, or what [`on_commit_error`](TxLayer::on_commit_error) maps it to: never a
//!   success for lost work. `after_commit` hooks run after the commit, before the response
//!   leaves.
//! * **Cancellation rolls back.** A client that disconnects mid-request makes the server drop
//!   the handler's future: the transaction is rolled back.
//!
//! The transaction covers the handler's future, not the streaming of the response body: a
//! body streamed after the handler returned runs after the commit, outside the transaction.
//! Build the body inside the handler (as `Json`, `String` and other buffered bodies are).
//!
//! In tests, a router called in the test's own task (`Service::call`, or tower's `oneshot`)
//! inside `tx_sqlx::testing::rollback` runs each request's transaction on a savepoint of the
//! test transaction, so nothing stays. A router served by `axum::serve` runs each connection
//! in a task of its own, outside the test transaction.
//!
//! ```no_run
//! use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
//! use tx_axum::TxLayer;
//! use tx_sqlx::{PgTxPool, TxError};
//!
//! async fn create(State(db): State<PgTxPool>, Json(name): Json<String>) -> Result<StatusCode, StatusCode> {
//!     // Runs in the request's transaction: committed when the handler returns 201.
//!     sqlx::query("insert into users (name) values ($1)")
//!         .bind(name)
//!         .execute(&db)
//!         .await
//!         .map_err(|_| StatusCode::CONFLICT)?; // 409: rolled back
//!     Ok(StatusCode::CREATED)
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let db = PgTxPool::new(sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?);
//! let app = Router::new()
//!     .route("/users", post(create))
//!     .layer(TxLayer::new(db.clone()))
//!     .with_state(db);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum_core::body::Body;
use http::{Request, Response, StatusCode, header};
use tower_layer::Layer;
use tower_service::Service;
use tx_core::{TransactionDefinition, TransactionManager, TransactionTemplate, TxError};

type ErrorMapper<B> = Arc<dyn Fn(TxError) -> Response<B> + Send + Sync>;

/// A tower layer that runs each request's handler in a transaction on one transaction
/// manager, committed or rolled back by the response status before the response is returned.
///
/// See the [crate documentation](crate) for the rules. `B` is the response body type of the
/// wrapped service (axum's [`Body`] unless [`on_commit_error`](TxLayer::on_commit_error)
/// says otherwise).
///
/// ```
/// use axum::http::StatusCode;
/// use axum::response::IntoResponse;
/// use tx_axum::TxLayer;
/// # use tx_core::TxError;
/// # let db = tx_core::testing::NoopManager::default(); // a TxPool in real code
///
/// let layer = TxLayer::new(db)
///     // 409 answers are business outcomes worth keeping, too.
///     .commit_when(|s| s.is_success() || s.is_redirection() || s == StatusCode::CONFLICT)
///     // A serialization failure at COMMIT: ask the client to try again.
///     .on_commit_error(|e: TxError| {
///         if e.is_retryable() {
///             (StatusCode::SERVICE_UNAVAILABLE, "conflict, try again").into_response()
///         } else {
///             StatusCode::INTERNAL_SERVER_ERROR.into_response()
///         }
///     });
/// # let _ = layer;
/// ```
#[must_use = "a layer does nothing until it wraps a service (Router::layer)"]
pub struct TxLayer<B = Body> {
    template: TransactionTemplate,
    named: bool,
    commit_when: fn(StatusCode) -> bool,
    on_commit_error: ErrorMapper<B>,
}

impl<B> Clone for TxLayer<B> {
    fn clone(&self) -> Self {
        TxLayer {
            template: self.template.clone(),
            named: self.named,
            commit_when: self.commit_when,
            on_commit_error: self.on_commit_error.clone(),
        }
    }
}

impl<B> fmt::Debug for TxLayer<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxLayer")
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

/// Commit for success (2xx) and redirection (3xx) statuses.
fn success_or_redirect(status: StatusCode) -> bool {
    status.is_success() || status.is_redirection()
}

/// The default answer when the transaction did not commit: a 500, the cause in the log only
/// (its text may name tables and constraints).
fn internal_error(e: TxError) -> Response<Body> {
    tracing::error!(target: "tx", error = %e, "request transaction did not commit");
    let mut response = Response::new(Body::from(
        "internal server error: the request's transaction did not commit",
    ));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl TxLayer<Body> {
    /// A layer running each request in a `Required` transaction on `db` (a `TxPool`, or any
    /// [`TransactionManager`]).
    ///
    /// ```
    /// # let db = tx_core::testing::NoopManager::default(); // a TxPool in real code
    /// let app: axum::Router = axum::Router::new().layer(tx_axum::TxLayer::new(db));
    /// # let _ = app;
    /// ```
    pub fn new(db: impl TransactionManager) -> Self {
        TxLayer {
            template: TransactionTemplate::new(db),
            named: false,
            commit_when: success_or_redirect,
            on_commit_error: Arc::new(internal_error),
        }
    }
}

impl<B> TxLayer<B> {
    /// Commits when `commit_when(status)` holds for the handler's response status, else rolls
    /// back (default: success and redirection statuses).
    ///
    /// ```
    /// # let db = tx_core::testing::NoopManager::default();
    /// // Only 2xx commits; a redirect after a failed form rolls back.
    /// let layer = tx_axum::TxLayer::new(db).commit_when(|status| status.is_success());
    /// # let _ = layer;
    /// ```
    pub fn commit_when(mut self, commit_when: fn(StatusCode) -> bool) -> Self {
        self.commit_when = commit_when;
        self
    }

    /// The response sent instead of the handler's when its transaction did not commit
    /// although the status asked for it: COMMIT failed (serialization failure, deferred
    /// constraint, lost connection: [`TxError::CommitOutcomeUnknown`]), a participant marked
    /// it rollback-only ([`TxError::UnexpectedRollback`]), the deadline passed
    /// ([`TxError::Timeout`]), or a `before_commit` hook failed. Default: a plain 500, with
    /// the error logged.
    ///
    /// ```
    /// use axum::{http::StatusCode, response::IntoResponse};
    /// # use tx_core::TxError;
    /// # let db = tx_core::testing::NoopManager::default();
    /// let layer = tx_axum::TxLayer::new(db).on_commit_error(|e: TxError| match e {
    ///     TxError::Timeout => StatusCode::GATEWAY_TIMEOUT.into_response(),
    ///     _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    /// });
    /// # let _ = layer;
    /// ```
    pub fn on_commit_error<B2, F>(self, on_commit_error: F) -> TxLayer<B2>
    where
        F: Fn(TxError) -> Response<B2> + Send + Sync + 'static,
    {
        TxLayer {
            template: self.template,
            named: self.named,
            commit_when: self.commit_when,
            on_commit_error: Arc::new(on_commit_error),
        }
    }

    /// Sets the request transaction's attributes: isolation, timeout, read-only, name
    /// (default: `Required`, the server's isolation, no timeout, named after the request's
    /// method and path).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tx_core::{Isolation, TransactionDefinition};
    /// # let db = tx_core::testing::NoopManager::default();
    /// // For GET routes: a read-only transaction that may take at most 2 s.
    /// let reads = tx_axum::TxLayer::new(db).definition(
    ///     TransactionDefinition::default()
    ///         .read_only(true)
    ///         .timeout(Duration::from_secs(2)),
    /// );
    /// # let _ = reads;
    /// ```
    pub fn definition(mut self, definition: TransactionDefinition) -> Self {
        self.named = !definition.get_name().is_empty();
        self.template = self.template.definition(definition);
        self
    }
}

impl<S, B> Layer<S> for TxLayer<B> {
    type Service = TxService<S, B>;

    fn layer(&self, inner: S) -> TxService<S, B> {
        TxService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`TxLayer`] wraps around an inner service.
pub struct TxService<S, B = Body> {
    inner: S,
    layer: TxLayer<B>,
}

impl<S: Clone, B> Clone for TxService<S, B> {
    fn clone(&self) -> Self {
        TxService {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, B> fmt::Debug for TxService<S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxService")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

/// Why the handler's transaction ended without its response.
enum Failure<E> {
    /// The engine's: the commit failed, or the transaction was rolled back against the
    /// handler's wish.
    Tx(TxError),
    /// The inner service's own error.
    Service(E),
}

impl<E> From<TxError> for Failure<E> {
    fn from(e: TxError) -> Self {
        Failure::Tx(e)
    }
}

/// The future of [`TxService`].
pub type ResponseFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

impl<S, ReqBody, B> Service<Request<ReqBody>> for TxService<S, B>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = ResponseFuture<B, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready handles this request; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let template = if layer.named {
            layer.template.clone()
        } else {
            let name = format!("{} {}", request.method(), request.uri().path());
            layer.template.clone().name(Cow::Owned(name))
        };
        let commit_when = layer.commit_when;
        Box::pin(async move {
            let outcome = template
                .execute(move |status| async move {
                    let response = inner.call(request).await.map_err(Failure::Service)?;
                    if !commit_when(response.status()) {
                        // The owner's own mark: rolled back, and the response goes out.
                        status.set_rollback_only();
                    }
                    Ok::<_, Failure<S::Error>>(response)
                })
                .await;
            match outcome {
                Ok(response) => Ok(response),
                Err(Failure::Service(e)) => Err(e),
                Err(Failure::Tx(e)) => Ok((layer.on_commit_error)(e)),
            }
        })
    }
}
