//! Bad input at run time (PostgreSQL and SQLite): each misuse is refused with its
//! typed `TxError`, the refused body never runs, and nothing is written (checked from a fresh
//! connection).
//!
//! * Mandatory without a transaction: `TxError::NoTransaction`
//! * Never inside one: `TxError::ExistingTransaction`
//! * `manager = "nope"`: `TxError::UnknownManager`
//! * Nested where savepoints are not supported (no shipped backend lacks them, so a manager
//!   whose `supports_savepoints()` is false): `TxError::NestedNotSupported`
//! * hooks and `set_rollback_only` outside every scope: `TxError::NoTransaction`
//! * a `TxPool` whose pool is closed: `TxError::PoolClosed`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tx_sqlx::manager::{
    BeginOptions, BoxFuture, ManagerKey, PhysicalTransaction, TransactionManager,
};
use tx_sqlx::{Completion, Propagation, TransactionSynchronization, TransactionTemplate, TxError};
use tx_tests::reliability::{AppError, Backend, PgBackend, SqliteBackend, eventually};

/// A service in the Spring style, with one method per misuse.
struct Svc<B: Backend> {
    db: B::Pool,
    b: B,
    table: String,
    ran: Arc<AtomicBool>,
}

impl<B: Backend> Svc<B> {
    async fn new(b: &B, prefix: &str) -> Svc<B> {
        Svc {
            db: b.manager().clone(),
            b: b.clone(),
            table: b.create_table(prefix).await,
            ran: Arc::default(),
        }
    }

    fn ran(&self) -> bool {
        self.ran.swap(false, Ordering::SeqCst)
    }

    async fn write(&self, tag: &str) -> Result<(), AppError> {
        self.ran.store(true, Ordering::SeqCst);
        self.b.insert(&self.table, tag).await?;
        Ok(())
    }

    #[tx_sqlx::transactional(manager = self.db, propagation = Mandatory)]
    async fn mandatory(&self) -> Result<(), AppError> {
        self.write("mandatory").await
    }

    #[tx_sqlx::transactional(manager = self.db, propagation = Never)]
    async fn never(&self) -> Result<(), AppError> {
        self.write("never").await
    }

    #[tx_sqlx::transactional(manager = "nope")]
    async fn unknown_manager(&self) -> Result<(), AppError> {
        self.write("unknown-manager").await
    }

    #[tx_sqlx::transactional(manager = self.db)]
    async fn required(&self, tag: &'static str) -> Result<(), AppError> {
        self.write(tag).await
    }

    async fn rows(&self) -> Vec<String> {
        self.b.tags(&self.table).await
    }
}

/// The outer transaction, on `outer`, writes "outer", then calls `inner`; the inner error is
/// propagated (`propagate`) or swallowed.
async fn outer_then<B, F, Fut>(
    outer: TransactionTemplate,
    svc: &Svc<B>,
    propagate: bool,
    inner: F,
) -> (Result<(), AppError>, Option<Result<(), AppError>>)
where
    B: Backend,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), AppError>>,
{
    let inner_result = Mutex::new(None);
    let r = outer
        .execute(|_| async {
            svc.b.insert(&svc.table, "outer").await?;
            let r = inner().await;
            let failed = r.is_err();
            *inner_result.lock().unwrap() = Some(r);
            if failed && propagate {
                return Err(AppError::Injected("propagated the inner error"));
            }
            Ok(())
        })
        .await;
    (r, inner_result.into_inner().unwrap())
}

fn is_tx(r: &Option<Result<(), AppError>>, pred: impl Fn(&TxError) -> bool) -> bool {
    matches!(r, Some(Err(AppError::Tx(e))) if pred(e))
}

// ---------------------------------------------------------------------------------------------

async fn mandatory_without_transaction<B: Backend>(b: &B) {
    let svc = Svc::new(b, "mandatory").await;
    let r = svc.mandatory().await;
    assert!(
        matches!(r, Err(AppError::Tx(TxError::NoTransaction))),
        "{}: {r:?}",
        b.name()
    );
    assert!(!svc.ran(), "the refused body must not run");
    let r = b
        .template()
        .propagation(Propagation::Mandatory)
        .execute(|_| svc.write("template"))
        .await;
    assert!(
        matches!(r, Err(AppError::Tx(TxError::NoTransaction))),
        "{}: {r:?}",
        b.name()
    );
    assert!(!svc.ran());
    assert_eq!(svc.rows().await, Vec::<String>::new(), "nothing written");
    // Inside a transaction it joins.
    svc.b.template().execute(|_| svc.mandatory()).await.unwrap();
    assert_eq!(svc.rows().await, ["mandatory"]);
    b.drop_table(&svc.table).await;
}

async fn never_inside_transaction<B: Backend>(b: &B) {
    let svc = Svc::new(b, "never").await;
    let (outer, inner) = outer_then(svc.b.template(), &svc, true, || svc.never()).await;
    assert!(
        is_tx(&inner, |e| matches!(e, TxError::ExistingTransaction)),
        "{}: {inner:?}",
        b.name()
    );
    assert!(outer.is_err());
    assert!(!svc.ran(), "the refused body must not run");
    assert_eq!(svc.rows().await, Vec::<String>::new(), "nothing written");
    // Swallowed: the outer transaction commits its own work, the refused body wrote nothing.
    let (outer, inner) = outer_then(svc.b.template(), &svc, false, || async {
        let r = svc.never().await;
        assert!(!svc.ran(), "the refused body must not run");
        r
    })
    .await;
    assert!(is_tx(&inner, |e| matches!(e, TxError::ExistingTransaction)));
    outer.unwrap();
    assert_eq!(svc.rows().await, ["outer"]);
    // Outside every transaction it runs (autocommit).
    svc.never().await.unwrap();
    assert_eq!(svc.rows().await, ["outer", "never"]);
    b.drop_table(&svc.table).await;
}

async fn unknown_manager<B: Backend>(b: &B) {
    let svc = Svc::new(b, "unknown_mgr").await;
    match svc.unknown_manager().await {
        Err(AppError::Tx(TxError::UnknownManager { name })) => assert_eq!(name, "nope"),
        other => panic!("{}: expected UnknownManager, got {other:?}", b.name()),
    }
    assert!(!svc.ran(), "the refused body must not run");
    // Also inside a transaction of another manager.
    let (outer, inner) = outer_then(svc.b.template(), &svc, true, || svc.unknown_manager()).await;
    assert!(
        is_tx(&inner, |e| matches!(e, TxError::UnknownManager { .. })),
        "{inner:?}"
    );
    assert!(outer.is_err());
    assert!(!svc.ran());
    assert_eq!(svc.rows().await, Vec::<String>::new(), "nothing written");
    let msg = TxError::UnknownManager {
        name: "nope".into(),
    }
    .to_string();
    assert!(
        msg.contains("\"nope\"") && msg.contains("register_manager"),
        "{msg}"
    );
    b.drop_table(&svc.table).await;
}

/// A manager on the same pool (same key: `&TxPool` statements join its transactions) that
/// does not support savepoints.
#[derive(Clone)]
struct NoSavepoints<M>(M);

impl<M: TransactionManager + Clone> TransactionManager for NoSavepoints<M> {
    fn key(&self) -> ManagerKey {
        self.0.key()
    }

    fn begin(
        &self,
        options: BeginOptions,
    ) -> BoxFuture<'static, Result<Box<dyn PhysicalTransaction>, TxError>> {
        self.0.begin(options)
    }

    fn supports_savepoints(&self) -> bool {
        false
    }

    fn backend_name(&self) -> &'static str {
        "no-savepoints"
    }
}

async fn nested_without_savepoints<B: Backend>(b: &B) {
    let svc = Svc::new(b, "nested_nosp").await;
    let manager = NoSavepoints(b.manager().clone());
    let svc = &svc;
    let nested = || async {
        TransactionTemplate::new(manager.clone())
            .propagation(Propagation::Nested)
            .execute(|_| svc.write("nested"))
            .await
    };
    for propagate in [true, false] {
        b.clear(&svc.table).await;
        let outer = TransactionTemplate::new(manager.clone());
        let (r, inner_result) = outer_then(outer, svc, propagate, nested).await;
        assert!(
            is_tx(&inner_result, |e| matches!(e, TxError::NestedNotSupported)),
            "{}: {inner_result:?}",
            b.name()
        );
        assert!(!svc.ran(), "the refused body must not run");
        let expected: Vec<String> = if propagate {
            assert!(r.is_err());
            vec![]
        } else {
            r.unwrap();
            vec!["outer".into()]
        };
        assert_eq!(svc.rows().await, expected, "propagate: {propagate}");
    }
    // Without an outer transaction, Nested begins one (no savepoint needed).
    b.clear(&svc.table).await;
    nested().await.unwrap();
    assert_eq!(svc.rows().await, ["nested"]);
    b.drop_table(&svc.table).await;
}

struct WriteOnCommit<B: Backend> {
    b: B,
    table: String,
    fired: Arc<AtomicBool>,
}

impl<B: Backend> TransactionSynchronization for WriteOnCommit<B> {
    async fn after_commit(&self) {
        self.fired.store(true, Ordering::SeqCst);
        let _ = self.b.insert(&self.table, "hook").await;
    }
}

async fn hooks_outside_scope<B: Backend>(b: &B) {
    let svc = Svc::new(b, "hooks_out").await;
    let fired = Arc::new(AtomicBool::new(false));
    let hook_write = |fired: &Arc<AtomicBool>| {
        let (b, t, f) = (b.clone(), svc.table.clone(), fired.clone());
        async move {
            f.store(true, Ordering::SeqCst);
            let _ = b.insert(&t, "hook").await;
        }
    };
    assert!(tx_sqlx::current_status().is_none());
    assert!(!tx_sqlx::is_actual_transaction_active());
    assert!(matches!(
        tx_sqlx::after_commit(hook_write(&fired)),
        Err(TxError::NoTransaction)
    ));
    assert!(matches!(
        tx_sqlx::after_rollback(hook_write(&fired)),
        Err(TxError::NoTransaction)
    ));
    let f = fired.clone();
    let r = tx_sqlx::after_completion(move |_: Completion| {
        f.store(true, Ordering::SeqCst);
        async {}
    });
    assert!(matches!(r, Err(TxError::NoTransaction)));
    let r = tx_sqlx::register_synchronization(WriteOnCommit {
        b: b.clone(),
        table: svc.table.clone(),
        fired: fired.clone(),
    });
    assert!(matches!(r, Err(TxError::NoTransaction)));
    assert!(matches!(
        tx_sqlx::set_rollback_only(),
        Err(TxError::NoTransaction)
    ));
    // A task spawned from inside a transaction starts outside it.
    let spawned = svc
        .b
        .template()
        .execute(|_| async {
            let (b2, t2, f2) = (b.clone(), svc.table.clone(), fired.clone());
            svc.b.insert(&svc.table, "tx").await?;
            let r = tokio::spawn(async move {
                let hook = tx_sqlx::after_commit(async move {
                    f2.store(true, Ordering::SeqCst);
                    let _ = b2.insert(&t2, "hook").await;
                });
                (hook.is_err(), tx_sqlx::current_status().is_none())
            })
            .await
            .expect("spawned task");
            Ok::<_, AppError>(r)
        })
        .await
        .unwrap();
    assert_eq!(
        spawned,
        (true, true),
        "(registration refused, no status) in a spawned task"
    );
    // None of the refused hooks ever runs, neither now nor when a later transaction commits.
    svc.required("later").await.unwrap();
    let ran = eventually(Duration::from_millis(300), || async {
        fired.load(Ordering::SeqCst)
    })
    .await;
    assert!(!ran, "a refused hook ran");
    assert_eq!(svc.rows().await, ["tx", "later"], "no hook wrote anything");
    b.drop_table(&svc.table).await;
}

async fn pool_closed<B: Backend>(b: &B) {
    let svc = Svc::new(b, "closed").await;
    b.close().await;
    // A template call that runs a statement.
    let r = b.template().execute(|_| svc.write("template")).await;
    match &r {
        Err(AppError::Tx(TxError::PoolClosed)) => {}
        other => panic!("{}: expected TxError::PoolClosed, got {other:?}", b.name()),
    }
    let msg = TxError::PoolClosed.to_string();
    assert!(msg.contains("pool is closed"), "{msg}");
    // The same through #[transactional], and in autocommit.
    assert!(matches!(
        svc.required("macro").await,
        Err(AppError::Tx(TxError::PoolClosed))
    ));
    let r: Result<(), AppError> = svc.write("autocommit").await;
    assert!(matches!(r, Err(AppError::Tx(TxError::PoolClosed))), "{r:?}");
    // A transaction that runs no statement needs no connection.
    b.template()
        .execute(|_| async { Ok::<_, AppError>(()) })
        .await
        .unwrap();
    assert_eq!(svc.rows().await, Vec::<String>::new(), "nothing written");
    b.drop_table(&svc.table).await;
}

// ---------------------------------------------------------------------------------------------

/// One `#[tokio::test]` per misuse check in module `$backend`, each on a backend from `$open`
/// (called with the check's name; `None`: skipped); `pool_closed` also checks that the closed
/// pool refuses `acquire()`.
macro_rules! misuse_tests {
    ($backend:ident, $open:expr) => {
        mod $backend {
            use super::*;

            misuse_tests!(@each $open;
                mandatory_without_transaction,
                never_inside_transaction,
                unknown_manager,
                nested_without_savepoints,
                hooks_outside_scope,
            );

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pool_closed() {
                let Some(b) = ($open)("closed").await else { return };
                super::pool_closed(&b).await;
                assert!(matches!(b.db.acquire().await, Err(TxError::PoolClosed)));
            }
        }
    };
    (@each $open:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(b) = ($open)(stringify!($check)).await else { return };
                super::$check(&b).await;
            }
        )*
    };
}

misuse_tests!(postgres, |tag| PgBackend::connect(
    2,
    Duration::from_secs(10),
    tag
));
misuse_tests!(sqlite, |_| async { Some(SqliteBackend::connect(2).await) });
