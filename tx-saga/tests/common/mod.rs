//! Shared support of the saga tests: server URLs and the "server missing" policy, a tiny
//! dynamic query helper per backend ([`db`]), the three services of the order saga, each with
//! its own pool and its own database (SQLite file) or schema (PostgreSQL) or tables (MySQL)
//! ([`env`]), the order saga itself ([`order_saga`]), workers on tasks ([`worker`]), and the
//! behaviour every backend must show ([`scenarios`]).
// Each test binary uses its own part of this support.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod db;
pub mod env;
pub mod order_saga;
pub mod scenarios;
pub mod worker;

use std::sync::atomic::{AtomicU32, Ordering};

pub use db::{Arg, Kind, TestDb};
pub use env::{Env, EnvSpec, sqlite_file};
pub use order_saga::{Hook, Order, order};
pub use worker::{FromStrChecked, Running, settle, spawn_worker};

pub fn pg_url() -> String {
    std::env::var("TX_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub fn mysql_url() -> String {
    std::env::var("TX_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// Under `TX_TEST_REQUIRE_SERVERS=1` a missing server fails the test; else it is skipped,
/// loudly.
pub fn server_missing(what: &str, err: &dyn std::fmt::Display) {
    if std::env::var("TX_TEST_REQUIRE_SERVERS").is_ok_and(|v| v == "1" || v == "true") {
        panic!("{what} is required (TX_TEST_REQUIRE_SERVERS=1) but unreachable: {err}");
    }
    eprintln!(
        "\n!!!!! SKIPPED: {what} unreachable ({err}); set TX_TEST_REQUIRE_SERVERS=1 to make this a failure !!!!!\n"
    );
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
