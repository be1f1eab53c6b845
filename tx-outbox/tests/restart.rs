//! PostgreSQL restarted under a running relay (and a running publisher and consumer): every
//! message of a transaction that reported a commit is delivered to JetStream and handled
//! exactly once through the inbox; none of a transaction that reported a failure; a
//! transaction whose commit outcome is unknown is handled at most once; the relay, its
//! `LISTEN` connection and the consumer recover by themselves.
//!
//! This binary restarts the shared PostgreSQL server (`pg_ctlcluster ... restart`). cargo runs
//! test binaries one after another, so no other binary of this crate sees the restart; a
//! drop guard brings the server back (and waits until it answers) however the test ends.
//! Needs root and the server tools on a machine whose test server is local; otherwise skips
//! loudly, or fails under `TX_TEST_REQUIRE_SERVERS=1`.

mod support;

use support::servers_required;
use tx_tests::server_control::{RestorePostgres, postgres_restart_tools, restart_postgres};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_the_relay() {
    let version = match postgres_restart_tools(&[]) {
        Ok(v) => v,
        Err(why) => {
            if servers_required() {
                panic!("cannot restart PostgreSQL (TX_TEST_REQUIRE_SERVERS=1): {why}");
            }
            eprintln!("\n!!!!! SKIPPED: cannot restart PostgreSQL here: {why} !!!!!\n");
            return;
        }
    };
    let Some(db) = support::pg_pool(8).await else {
        return;
    };
    let _restore = RestorePostgres(version.clone());
    support::database_fault::relay_through(db, || async move {
        tokio::task::spawn_blocking(move || restart_postgres(&version))
            .await
            .unwrap()
            .unwrap();
    })
    .await;
}
