//! Shared support of the saga tests (server URLs, pools and unique names come from
//! `tx_tests`): a tiny dynamic query helper per backend ([`db`]), the three services of the
//! order saga, each with its own pool and its own database (SQLite file) or schema
//! (PostgreSQL) or tables (MySQL) ([`env`]), the order saga itself ([`order_saga`]), workers on
//! tasks ([`worker`]), and the behaviour every backend must show ([`scenarios`]).
// Each test binary uses its own part of this support.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod db;
pub mod env;
pub mod order_saga;
pub mod scenarios;
pub mod worker;

use std::future::Future;

pub use db::{Arg, Kind, TestDb};
pub use env::{Env, EnvSpec};
pub use order_saga::{Hook, Order, order};
pub use worker::{FromStrChecked, Running, run_until_settled, settle, spawn_worker};

/// Runs `scenario` on a fresh environment of `DB`, then drops what it created; skips (returns)
/// when the server of `DB` is missing.
pub async fn with_env<DB: TestDb, F: Future<Output = ()>>(scenario: impl FnOnce(Env<DB>) -> F) {
    let Some(env) = Env::<DB>::new().await else {
        return;
    };
    scenario(env.clone()).await;
    env.drop_all().await;
}

/// One test (multi-threaded runtime, two workers) per `name: Database => scenario`, each running
/// `scenario` through [`with_env`].
macro_rules! env_tests {
    ($($name:ident: $db:ty => $scenario:expr),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::common::with_env::<$db, _>($scenario).await;
            }
        )+
    };
}
pub(crate) use env_tests;
