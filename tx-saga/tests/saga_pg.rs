//! The saga engine on PostgreSQL (a schema per service): the order saga across three services, compensation in
//! reverse order, start joining the caller's transaction, retries, panics, timeouts, stuck
//! sagas and resume, misuse, a worker shut down mid-saga handing it back.

mod common;

common::scenarios::saga_suite!(sqlx::Postgres);
