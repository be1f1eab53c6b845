//! # tx-saga: persisted, resumable work across services, with compensations
//!
//! A local transaction cannot span an order database, a stock service and a payment
//! provider. A **saga** does that work as a sequence of steps, each with a forward action and
//! a compensation that undoes it. Its state and position are written to the database after
//! every step, so a crashed worker loses nothing: another worker resumes the saga from its last
//! recorded step. When a step fails for good, the compensations of the completed steps run in
//! reverse order.
//!
//! * [`Saga::named`]`(..)`[`.step(name, forward, compensate)`](Saga::step) defines one;
//!   both closures are `|ctx: StepContext<S>| async move { .. }` returning the next state as
//!   `Result<S, StepError>`.
//! * [`SagaEngine::new`]`(db)`[`.register(saga)`](SagaEngine::register), then
//!   [`install`](SagaEngine::install) (the table), [`start`](SagaEngine::start) (joins the
//!   caller's transaction: the saga exists if and only if the caller commits),
//!   [`run`](SagaEngine::run) (a worker; run as many as you like, in any processes),
//!   [`status`](SagaEngine::status), [`stuck`](SagaEngine::stuck) and
//!   [`resume`](SagaEngine::resume).
//!
//! On PostgreSQL, MySQL/MariaDB and SQLite, over [`tx_sqlx::TxPool`].
//!
//! ## What happens exactly once, and what at least once
//!
//! Each attempt of a step runs in a transaction on the engine's pool, and the engine records
//! the step's completion (new state, new position) in that same transaction. So:
//!
//! * **Local steps are exactly once.** What a step writes through the engine's `TxPool` (with
//!   `&db` as the executor, or by calling `#[transactional]` code on it) commits together with
//!   the record of its completion, or not at all. A worker that dies before the commit leaves
//!   nothing behind and the step runs again; one that dies after it never runs it again.
//! * **Remote steps are at least once.** A call to another service (HTTP, another database, a
//!   broker) may have happened when its worker dies before recording it; the step then runs
//!   again. Give the service [`StepContext::idempotency_key`], the same for every attempt of
//!   one step and direction of one saga, and let it de-duplicate.
//!
//! A step can enqueue a message on a transactional outbox kept on the engine's pool: the row
//! is written in the step's transaction, so it is enqueued exactly once with the step, and
//! delivered by the outbox's relay afterwards.
//!
//! Finished sagas stay in the table (with their final state) as a record; delete old rows with
//! plain SQL when they are no longer wanted.
//!
//! ## Failures
//!
//! * [`StepError::Retry`], a panic, or running past the step's
//!   [timeout](StepOptions::timeout): the attempt failed; the step is tried again after a
//!   jittered exponential backoff, up to its [attempt limit](StepOptions::max_attempts).
//! * [`StepError::Fail`], or the forward limit reached: compensation starts with the last
//!   completed step and goes back to the first.
//! * A compensation is retried on any error, up to its own
//!   [limit](StepOptions::compensation_max_attempts); past it the saga is
//!   [`Stuck`](SagaStatus::Stuck) with the error, listed by [`stuck`](SagaEngine::stuck), until an operator calls
//!   [`resume`](SagaEngine::resume).
//!
//! ## Workers and leases
//!
//! A worker claims due sagas with a lease token and an expiry ([`SagaEngine::lease`]); every
//! record it writes is fenced by that token, so a worker that lost its lease cannot record
//! anything (its step's transaction is rolled back). Before a step starts, the lease is made
//! to outlast the step's timeout, and the step is cut off at that timeout, so a step never
//! runs on two workers at once. A worker that
//! dies leaves its sagas to be claimed again when their leases expire. Lease times are the
//! database server's clock.
//!
//! ## Observability
//!
//! Every attempt is a `tracing` span `saga_step` with `saga_id`, `saga`, `step`, `direction`,
//! `attempt` and `outcome`; the step's own statements and events nest under it. With the
//! feature `metrics`, the `metrics` facade gets the counters `tx_saga_started_total`,
//! `tx_saga_completed_total`, `tx_saga_compensated_total`, `tx_saga_stuck_total` (label
//! `saga`) and the histogram `tx_saga_step_duration_seconds` (labels `saga`, `step`,
//! `direction`, `outcome`).
//!
//! ## Example
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use tx_saga::{Saga, SagaEngine, StepContext, StepError};
//! use tx_sqlx::{PgTxPool, TransactionTemplate, TxError};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct PlaceOrder { item: i64, order_id: Option<i64> }
//!
//! # async fn run(db: PgTxPool) -> Result<(), TxError> {
//! let orders = db.clone();
//! let saga = Saga::<PlaceOrder>::named("place_order")
//!     .step(
//!         "create_order",
//!         // Local: commits with the record of this step, exactly once.
//!         move |ctx: StepContext<PlaceOrder>| async move {
//!             let mut s = ctx.into_state();
//!             let id: i64 = sqlx::query_scalar("insert into orders(item) values ($1) returning id")
//!                 .bind(s.item)
//!                 .fetch_one(&orders)
//!                 .await?;
//!             s.order_id = Some(id);
//!             Ok(s)
//!         },
//!         {
//!             let orders = db.clone();
//!             move |ctx: StepContext<PlaceOrder>| async move {
//!                 // Keep the row, mark it cancelled.
//!                 sqlx::query("update orders set status = 'cancelled' where id = $1")
//!                     .bind(ctx.state().order_id)
//!                     .execute(&orders)
//!                     .await?;
//!                 Ok(ctx.into_state())
//!             }
//!         },
//!     )
//!     .step(
//!         "charge",
//!         // Remote: at least once; the payment service de-duplicates on the key.
//!         |ctx: StepContext<PlaceOrder>| async move {
//!             let _key = ctx.idempotency_key();
//!             Err(StepError::Fail("card declined".into()))
//!         },
//!         |ctx: StepContext<PlaceOrder>| async move { Ok(ctx.into_state()) },
//!     );
//!
//! let engine = SagaEngine::new(db.clone()).register(saga);
//! engine.install().await?;
//! let id = TransactionTemplate::new(db.clone())
//!     .execute(|_| {
//!         let engine = engine.clone();
//!         async move { engine.start("place_order", PlaceOrder { item: 7, order_id: None }).await }
//!     })
//!     .await?;
//! println!("saga {id} started");
//! // Elsewhere: engine.run(shutdown).await?
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
mod context;
mod definition;
mod engine;
mod error;
mod id;
mod observe;
mod registry;
mod sql;
mod status;
mod worker;

pub use backend::SagaBackend;
pub use context::{Direction, StepContext};
pub use definition::{Saga, StepAction, StepOptions};
pub use engine::SagaEngine;
pub use error::StepError;
pub use id::SagaId;
pub use status::{SagaStatus, StuckSaga};
