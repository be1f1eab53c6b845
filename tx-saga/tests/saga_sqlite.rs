//! The saga engine on SQLite (three database files): the order saga across three services, compensation in
//! reverse order, start joining the caller's transaction, retries, panics, timeouts, stuck
//! sagas and resume, misuse, a worker shut down mid-saga handing it back.

mod common;

common::scenarios::saga_suite!(sqlx::Sqlite);
