//! Model-based randomized test of the transaction engine on the real servers.
//!
//! proptest generates small transactional programs (`model_based/program.rs`,
//! `model_based/generate.rs`): trees of scopes with every propagation, inserts, outcomes `Ok`,
//! `Err`, an `Err` matching `no_rollback_for` (or outside `rollback_for`), rollback-only,
//! panic and failing statements (retryable or not), hooks in every phase (some fail, sleep,
//! mark the transaction rollback-only, call a service, or write after commit),
//! `tokio::join!` of sibling calls, calls dropped after their k-th poll, `retry`, and deadlines
//! that fire and that do not. Each program runs against the database through `TxPool`,
//! `TransactionTemplate` and `#[transactional]` (`model_based/runner.rs`), and what it did
//! (each call's result, how often each body started, the rows left in its table, the hook
//! log) is compared (`model_based/compare.rs`) with an in-memory model of the specified
//! semantics (`model_based/model.rs`, whose header lists the points it accepts both ways). A
//! mismatch is shrunk to a minimal program, printed as the code it runs, with the closest
//! world of the model and the seed to replay it.
//!
//! Per run: 4,000 programs on SQLite over 4 workers and 800 on each of PostgreSQL and MariaDB
//! over 3 workers; each worker has its own pool and table (SQLite: its own database file).
//! - `TX_MODEL_CASES=100000`: that many programs on every backend, a local soak
//!   (`PROPTEST_CASES` is read when it is unset). `TX_MODEL_THREADS=n`: workers per backend.
//! - `TX_MODEL_SEED=<hex>`: replay one worker's sequence, with the `TX_MODEL_CASES` and
//!   `TX_MODEL_THREADS=1` printed next to it (a failure that depends on two joined scopes
//!   racing may shrink to a different program of the same kind).
//! - `TX_MODEL_OFF=joins,cancellation,deadlines,retry,hook_actions,rules,faults` (any subset),
//!   or the narrower `hook_rollback_only,spin,joins_in_scope`: switch parts of the generator
//!   off, to tell failures apart. The default is all on.
//! - `TX_MODEL_ACCEPT=nested_after_mark`: for exploring other disagreements only, also accept
//!   a Nested scope that misses its participant's failure in an already rollback-only
//!   transaction (see `model.rs`).
//!
//! Run one backend: `cargo test -p tx-tests --test engine -- model_based::sqlite` (or `postgres`,
//! `mysql`); `-- --nocapture` prints what the programs did (results, rows, hook callbacks).

mod compare;
mod generate;
mod model;
mod program;
mod runner;

use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::SqliteSynchronous;
use tx_sqlx::{MySqlTxPool, PgTxPool};

use generate::Features;
use model::Chooser;
use program::{Backend, Program};
use runner::{Db, ModelPanic, Observation, Run};

/// A program that has not finished after this long is reported as a hang.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(15);
/// Programs per run on SQLite, and on each of PostgreSQL and MariaDB (`TX_MODEL_CASES`
/// overrides both).
const SQLITE_CASES: u32 = 4000;
const SERVER_CASES: u32 = 800;
/// Connections per worker: enough for every scope of the largest program to hold its own at
/// once (three levels of joins of RequiresNew calls), so no program waits on the pool.
const POOL_SIZE: u32 = 20;
/// Runs of each candidate program while shrinking.
const SHRINK_TRIES: usize = 4;
/// Worlds of the model tried per program before giving up.
const MAX_WORLDS: usize = 20_000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Generated panics are expected: keep them off the output.
fn quiet_model_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<ModelPanic>().is_none() {
                default(info);
            }
        }));
    });
}

async fn open(backend: Backend, worker: usize) -> Option<(Db, String, Option<tempfile::TempDir>)> {
    let table = tx_tests::unique_table(&format!("model{worker}"));
    let (db, dir) = match backend {
        Backend::Postgres => {
            let pool = PgPoolOptions::new()
                .max_connections(POOL_SIZE)
                .acquire_timeout(Duration::from_secs(5))
                .connect(&tx_tests::pg_url())
                .await;
            (
                Db::Postgres(PgTxPool::new(or_missing(pool, "PostgreSQL")?)),
                None,
            )
        }
        Backend::MySql => {
            let pool = MySqlPoolOptions::new()
                .max_connections(POOL_SIZE)
                .acquire_timeout(Duration::from_secs(5))
                // Under REPEATABLE READ, InnoDB turns the locks of a row removed by ROLLBACK TO
                // SAVEPOINT into gap locks: a RequiresNew insert into that gap would then wait
                // on its own suspended transaction (a deadlock of the program, not of the
                // engine, and one no model of the specification can predict).
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::raw_sql("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                            .execute(conn)
                            .await
                            .map(|_| ())
                    })
                })
                .connect(&tx_tests::mysql_url())
                .await;
            (
                Db::MySql(MySqlTxPool::new(or_missing(pool, "MariaDB")?)),
                None,
            )
        }
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let opts = tx_tests::sqlite_options(&dir.path().join("model.db"))
                // Durability is not under test; fsync per commit would dominate the run time.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(2));
            let pool = tx_tests::sqlite_pool_with(opts, POOL_SIZE, Duration::from_secs(5)).await;
            (Db::Sqlite(pool), Some(dir))
        }
    };
    let ddl = match backend {
        Backend::MySql => {
            format!("CREATE TABLE {table} (tag VARCHAR(40) PRIMARY KEY) ENGINE=InnoDB")
        }
        _ => format!("CREATE TABLE {table} (tag VARCHAR(40) PRIMARY KEY)"),
    };
    db.fresh_exec(ddl).await.expect("create the program table");
    Some((db, table, dir))
}

/// What the programs did, summed over a run (printed at the end: evidence that the generated
/// programs exercise what they should).
#[derive(Default)]
struct Stats {
    programs: u64,
    rows: u64,
    hook_entries: u64,
    results: std::collections::BTreeMap<String, u64>,
    worlds_max: usize,
    unmodelled: u64,
}

static STATS: Mutex<Vec<(Backend, Stats)>> = Mutex::new(Vec::new());

fn record_stats(backend: Backend, obs: &Observation, worlds: usize, unmodelled: bool) {
    let mut g = STATS.lock().unwrap();
    let i = match g.iter().position(|(b, _)| *b == backend) {
        Some(i) => i,
        None => {
            g.push((backend, Stats::default()));
            g.len() - 1
        }
    };
    let s = &mut g[i].1;
    s.programs += 1;
    s.rows += obs.rows.len() as u64;
    s.hook_entries += obs.log.iter().filter(|e| !e.starts_with("reg ")).count() as u64;
    for r in obs.calls.results.values() {
        let name = format!("{r:?}");
        let name = name.split([' ', '(']).next().unwrap_or("").to_owned();
        *s.results.entry(name).or_insert(0) += 1;
    }
    s.worlds_max = s.worlds_max.max(worlds);
    s.unmodelled += u64::from(unmodelled);
}

/// Fails under `TX_TEST_REQUIRE_SERVERS=1`, else says loudly that the test is skipped.
/// The connected pool, or `None` (after [`server_missing`]) when the server is down.
fn or_missing<P>(pool: Result<P, sqlx::Error>, what: &str) -> Option<P> {
    pool.map_err(|e| server_missing(what, &e)).ok()
}

fn server_missing(what: &str, err: &dyn std::fmt::Display) {
    if std::env::var("TX_TEST_REQUIRE_SERVERS").is_ok_and(|v| v == "1" || v == "true") {
        panic!("{what} is required (TX_TEST_REQUIRE_SERVERS=1) but unreachable: {err}");
    }
    eprintln!(
        "\n!!!!! SKIPPED: {what} unreachable ({err}); set TX_TEST_REQUIRE_SERVERS=1 to make this a failure !!!!!\n"
    );
}

/// Runs one program and compares it with the model.
async fn check(db: &Db, table: &str, program: &Program) -> Result<(), String> {
    db.fresh_exec(format!("DELETE FROM {table}"))
        .await
        .map_err(|e| format!("could not empty the table: {e}"))?;
    let run = Run::new(db.clone(), table.to_owned());
    let mut obs = match tokio::time::timeout(PROGRAM_TIMEOUT, run.program(program)).await {
        Ok(obs) => obs,
        Err(_) => Observation {
            hung: true,
            ..run.snapshot()
        },
    };
    // Hooks of dropped scopes may complete in the background.
    let background = obs.hung
        || obs
            .calls
            .results
            .values()
            .any(|r| matches!(r, runner::Res::Cancelled | runner::Res::Timeout));
    if background {
        runner::settle(&run).await;
    }
    // A COMMIT or ROLLBACK of a dropped call, or a statement of a hook finishing in the
    // background, may still be in flight: wait for it, so that its rows and the hook calls
    // after it are in the observation and do not leak into the next program.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !db.idle() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if background {
        runner::settle(&run).await;
        obs.log = run.snapshot().log;
    }
    obs.rows = db
        .fresh_tags(format!("SELECT tag FROM {table}"))
        .await
        .map_err(|e| format!("could not read the rows: {e}"))?
        .into_iter()
        .collect();

    let mut chooser = Chooser::default();
    let mut best: Option<(Vec<String>, model::Expected)> = None;
    for world in 1..=MAX_WORLDS {
        let expected = model::expect(program, db.backend(), &obs, &mut chooser);
        if expected.unmodelled.is_some() {
            record_stats(db.backend(), &obs, world, true);
            return Ok(());
        }
        let diffs = compare::compare(&expected, &obs);
        if diffs.is_empty() {
            record_stats(db.backend(), &obs, world, false);
            return Ok(());
        }
        if best.as_ref().is_none_or(|(d, _)| diffs.len() < d.len()) {
            best = Some((diffs, expected));
        }
        if !chooser.next_world() {
            break;
        }
    }
    let (diffs, expected) = best.expect("at least one world");
    Err(format!(
        "{program:?}\n  differences from the closest world of the model:\n    {}\n  observed:\n    results {:?}\n    starts {:?}\n    rows {:?}\n    log {:?}\n  expected (closest world):\n    results {:?}\n    starts {:?}\n    rows {:?} maybe {:?}\n    log {:?}\n    completed after a cut {:?}",
        diffs.join("\n    "),
        obs.calls.results,
        obs.calls.starts,
        obs.rows,
        obs.log,
        expected.calls.results,
        expected.calls.starts,
        expected.rows,
        expected.maybe_rows,
        expected.log,
        expected.patterns,
    ))
}

struct Failure {
    seed: String,
    cases: u32,
    message: String,
}

fn run_worker(
    backend: Backend,
    worker: usize,
    seed: [u8; 32],
    cases: u32,
    features: Features,
) -> Option<Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (db, table, _dir) = rt.block_on(open(backend, worker))?;
    let config = Config {
        cases,
        max_shrink_iters: 400,
        // A program that waits out a lock timeout costs seconds per shrinking step.
        max_shrink_time: 30_000,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let strategy = generate::program(backend, features);
    // After the first failure every case is a shrinking step; a failure that depends on
    // timing (two joined scopes racing) must not pass by luck there, or the shrunk program
    // would not be minimal: run each candidate a few times.
    let shrinking = std::cell::Cell::new(false);
    let result = runner.run(&strategy, |p| {
        let tries = if shrinking.get() { SHRINK_TRIES } else { 1 };
        for _ in 0..tries {
            if let Err(e) = rt.block_on(check(&db, &table, &p)) {
                shrinking.set(true);
                return Err(TestCaseError::fail(e));
            }
        }
        Ok(())
    });
    rt.block_on(async {
        db.fresh_exec(format!("DROP TABLE {table}")).await.ok();
    });
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    match result {
        Ok(()) => None,
        Err(TestError::Fail(reason, _program)) => Some(Failure {
            seed: hex,
            cases,
            message: reason.to_string(),
        }),
        Err(TestError::Abort(reason)) => Some(Failure {
            seed: hex,
            cases,
            message: format!("aborted: {reason}"),
        }),
    }
}

fn parse_seed(hex: &str) -> [u8; 32] {
    let hex = hex.trim();
    assert_eq!(hex.len(), 64, "TX_MODEL_SEED is 64 hex digits");
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("TX_MODEL_SEED is hex");
    }
    seed
}

fn model_based(backend: Backend, default_cases: u32, default_threads: u64) {
    quiet_model_panics();
    let features = Features::from_env();
    let total = env_u64("TX_MODEL_CASES")
        .or_else(|| env_u64("PROPTEST_CASES"))
        .map_or(default_cases, |n| n as u32);
    let threads = env_u64("TX_MODEL_THREADS")
        .unwrap_or(default_threads)
        .max(1) as usize;
    let seeds: Vec<[u8; 32]> = match std::env::var("TX_MODEL_SEED") {
        Ok(hex) => vec![parse_seed(&hex); 1],
        Err(_) => (0..threads)
            .map(|_| {
                let mut s = [0u8; 32];
                for b in &mut s {
                    *b = fastrand_byte();
                }
                s
            })
            .collect(),
    };
    let per_worker = total.div_ceil(seeds.len() as u32);
    let started = Instant::now();
    let failures = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for (worker, seed) in seeds.iter().enumerate() {
            let failures = failures.clone();
            let seed = *seed;
            s.spawn(move || {
                if let Some(f) = run_worker(backend, worker, seed, per_worker, features) {
                    failures.lock().unwrap().push(f);
                }
            });
        }
    });
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    let stats = {
        let mut g = STATS.lock().unwrap();
        g.iter()
            .position(|(b, _)| *b == backend)
            .map(|i| g.swap_remove(i).1)
    };
    if let Some(st) = stats {
        eprintln!(
            "  passing programs: {}, rows committed {}, hook callbacks {}, worlds tried at most {}, not judged {}\n  call results: {:?}",
            st.programs, st.rows, st.hook_entries, st.worlds_max, st.unmodelled, st.results
        );
    }
    eprintln!(
        "model-based test on {backend:?}: {} programs in {} workers, {:?}, features {features:?}: {} failing",
        per_worker as usize * seeds.len(),
        seeds.len(),
        started.elapsed(),
        failures.len()
    );
    if !failures.is_empty() {
        let mut report = String::new();
        for f in &failures {
            report.push_str(&format!(
                "\n==== minimal failing program on {backend:?} (replay: TX_MODEL_SEED={} TX_MODEL_CASES={} TX_MODEL_THREADS=1)\n{}\n",
                f.seed, f.cases, f.message
            ));
        }
        panic!("{report}");
    }
}

fn fastrand_byte() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u8
}

/// The model itself, checked against Spring's observed behaviour: every line of the Spring
/// matrix (outer scope x inner propagation x inner outcome x outer outcome, on PostgreSQL)
/// written as a program, and the model's outcome, rows and hook log compared with the line's.
#[test]
fn model_reproduces_the_spring_matrix() {
    use super::spring_matrix::propagation;
    use program::{End, Hook, OnErr, Op, Propagation, Rule, Scope};

    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/spring-matrix/matrix.jsonl"
    ))
    .expect("read the Spring matrix");
    let scope = |propagation, ops, end| Scope {
        propagation,
        rule: Rule::Default,
        deadline: None,
        retry: 0,
        ops,
        ends: vec![end],
    };
    let call = |scope, on_err| program::Call {
        id: 0,
        scope,
        on_err,
        cancel_after: None,
    };
    let hook = || {
        Op::Hook(Hook {
            id: 0,
            before_commit: program::BeforeCommit::Record,
            after_commit_insert: false,
        })
    };
    let mut mismatches = Vec::new();
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        lines += 1;
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let id = v["id"].as_str().unwrap();
        let parts: Vec<&str> = id.split('/').collect();
        let (outer, inner, inner_act, outer_act) = (parts[0], parts[1], parts[2], parts[3]);
        let inner_end = match inner_act {
            "ok" => End::Ok,
            "rollback_only" => End::RollbackOnly,
            _ => End::Fail,
        };
        // Only the inner body's own error is swallowed; any other propagates.
        let on_err = if inner_act == "err_swallow" {
            OnErr::SwallowFail
        } else {
            OnErr::Propagate
        };
        let inner_call = call(
            scope(propagation(inner), vec![Op::Insert(0), hook()], inner_end),
            on_err,
        );
        let outer_end = if outer_act == "err" {
            End::Fail
        } else {
            End::Ok
        };
        let body = vec![Op::Insert(0), hook(), Op::Call(inner_call), Op::Insert(0)];
        let mut p = if outer == "NONE" {
            let mut ops = body;
            if outer_end == End::Fail {
                // Plain code returning its own error: the same as a scope that changes
                // nothing (Supports without a transaction cannot be told apart here).
                ops = vec![Op::Call(call(
                    scope(Propagation::Never, ops, End::Fail),
                    OnErr::Propagate,
                ))];
            }
            Program { ops }
        } else {
            Program {
                ops: vec![Op::Call(call(
                    scope(propagation(outer), body, outer_end),
                    OnErr::Propagate,
                ))],
            }
        };
        p.number();
        let names = if outer == "NONE" && outer_end != End::Fail {
            [
                ("o0.0", "outer-before"),
                ("o3.0", "inner"),
                ("o5.0", "outer-after"),
            ]
        } else {
            [
                ("o1.0", "outer-before"),
                ("o4.0", "inner"),
                ("o6.0", "outer-after"),
            ]
        };
        let hooks = if outer == "NONE" && outer_end != End::Fail {
            [("h1.0", "outer"), ("h4.0", "inner")]
        } else {
            [("h2.0", "outer"), ("h5.0", "inner")]
        };
        let mut chooser = Chooser::default();
        let e = model::expect(&p, Backend::Postgres, &Observation::default(), &mut chooser);
        let outcome = match e.calls.root.clone().unwrap() {
            runner::Res::Ok => "ok".to_owned(),
            runner::Res::Fail if outer_act == "err" && !matches!(inner_act, "err_propagate") => {
                "OuterError".to_owned()
            }
            runner::Res::Fail => "InnerError".to_owned(),
            other => format!("{other:?}"),
        };
        let tag_of = |t: &str| names.iter().find(|(k, _)| *k == t).map(|(_, n)| *n);
        let mut rows: Vec<&str> = e.rows.iter().filter_map(|t| tag_of(t)).collect();
        let order = ["outer-before", "inner", "outer-after"];
        rows.sort_by_key(|r| order.iter().position(|o| o == r));
        let mut log = Vec::new();
        for (tag, label) in hooks {
            if e.calls.results.get(tag) == Some(&runner::Res::NoTransaction) {
                log.push(format!("{label}:no_scope"));
            }
        }
        fn flat(items: &[model::Item], out: &mut Vec<String>) {
            for i in items {
                match i {
                    model::Item::Entry(x) => out.push(x.clone()),
                    model::Item::Par(a, b) => {
                        flat(a, out);
                        flat(b, out);
                    }
                }
            }
        }
        let mut entries = Vec::new();
        flat(&e.log, &mut entries);
        for entry in entries {
            let (tag, phase) = entry.split_once(':').unwrap();
            let label = hooks
                .iter()
                .find(|(k, _)| *k == tag)
                .map(|(_, n)| *n)
                .unwrap();
            let phase = match phase {
                "bc" => "before_commit",
                "bcpl" => "before_completion",
                "ac" => "after_commit",
                "acpl(C)" => "after_completion(committed)",
                "acpl(R)" => "after_completion(rolled_back)",
                other => other,
            };
            log.push(format!("{label}:{phase}"));
        }
        let want_rows: Vec<&str> = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        let want_hooks: Vec<String> = v["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_owned())
            .collect();
        let want_outcome = v["outcome"].as_str().unwrap();
        // The Never wrapper standing for plain code that fails owns the hooks the plain code
        // could not register: there, only the outcome and the rows are compared.
        let hooks_comparable = !(outer == "NONE" && outer_end == End::Fail);
        if outcome != want_outcome || rows != want_rows || (hooks_comparable && log != want_hooks) {
            mismatches.push(format!(
                "{id}: outcome {outcome} / {want_outcome}, rows {rows:?} / {want_rows:?}, hooks {log:?} / {want_hooks:?}"
            ));
        }
    }
    assert_eq!(lines, 224, "the matrix has 224 lines");
    assert!(
        mismatches.is_empty(),
        "the model differs from the Spring matrix (model / matrix):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn sqlite() {
    model_based(Backend::Sqlite, SQLITE_CASES, 4);
}

#[test]
fn postgres() {
    model_based(Backend::Postgres, SERVER_CASES, 3);
}

#[test]
fn mysql() {
    model_based(Backend::MySql, SERVER_CASES, 3);
}
