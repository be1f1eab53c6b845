//! The saga engine on PostgreSQL (a schema per service): the order saga across three services, compensation in
//! reverse order, start joining the caller's transaction, retries, panics, timeouts, stuck
//! sagas and resume, misuse, a worker shut down mid-saga handing it back.

mod common;

use common::scenarios;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_completes_across_three_services() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    scenarios::order_completes_across_three_services(env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_failure_compensates_in_reverse_order() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    scenarios::payment_failure_compensates_in_reverse_order(env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_joins_the_callers_transaction() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    scenarios::start_joins_the_callers_transaction(env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_keep_the_key_and_roll_back_failed_attempts() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    scenarios::retries_keep_the_key_and_roll_back_failed_attempts(env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_timeouts_are_failed_attempts() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    scenarios::panics_and_timeouts_are_failed_attempts(env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_sagas_are_listed_and_resumed() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    scenarios::stuck_sagas_are_listed_and_resumed(env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misuse_is_reported() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    scenarios::misuse_is_reported(env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_step_and_hands_the_saga_back() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    scenarios::shutdown_finishes_the_step_and_hands_the_saga_back(env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_installs_succeed() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    scenarios::concurrent_installs_succeed(env).await;
}
