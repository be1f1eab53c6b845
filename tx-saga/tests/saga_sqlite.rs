//! The saga engine on SQLite (three database files): the order saga across three services, compensation in
//! reverse order, start joining the caller's transaction, retries, panics, timeouts, stuck
//! sagas and resume, misuse, a worker shut down mid-saga handing it back.

mod common;

use common::scenarios;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_completes_across_three_services() {
    scenarios::order_completes_across_three_services(Env::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_failure_compensates_in_reverse_order() {
    scenarios::payment_failure_compensates_in_reverse_order(Env::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_joins_the_callers_transaction() {
    scenarios::start_joins_the_callers_transaction(Env::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_keep_the_key_and_roll_back_failed_attempts() {
    scenarios::retries_keep_the_key_and_roll_back_failed_attempts(Env::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_timeouts_are_failed_attempts() {
    scenarios::panics_and_timeouts_are_failed_attempts(Env::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_sagas_are_listed_and_resumed() {
    scenarios::stuck_sagas_are_listed_and_resumed(Env::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misuse_is_reported() {
    scenarios::misuse_is_reported(Env::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_step_and_hands_the_saga_back() {
    scenarios::shutdown_finishes_the_step_and_hands_the_saga_back(Env::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_installs_succeed() {
    scenarios::concurrent_installs_succeed(Env::sqlite().await).await;
}
