//! Every key of #[transactional] in every accepted spelling, on free functions, run against a
//! logging manager so the definition the macro builds is observed.
use std::sync::LazyLock;
use tx_sqlx::prelude::*;

include!("../support/manager.rs");
use manager::{RecordingManager, Statement};

#[derive(Debug)]
pub enum AppError {
    Tx(TxError),
    RiskRejected { reason: String },
    OutOfStock(u32),
    Db(String),
}

impl From<TxError> for AppError {
    fn from(e: TxError) -> Self {
        AppError::Tx(e)
    }
}

/// The default manager.
static DB: LazyLock<RecordingManager> = LazyLock::new(RecordingManager::default);

/// One function per spelling, `name => (keys)`: `#[transactional(keys)]` on a body that runs
/// one statement on `DB`.
macro_rules! spelled {
    ($($name:ident => ($($key:tt)*);)*) => {$(
        #[transactional($($key)*)]
        async fn $name() -> Result<(), TxError> { DB.statement().await; Ok(()) }
    )*};
}

// ---- defaults -------------------------------------------------------------------------------
#[transactional]
async fn bare() -> Result<u32, TxError> {
    DB.statement().await;
    Ok(1)
}

#[transactional()]
async fn empty_parens() -> Result<u32, TxError> {
    DB.statement().await;
    Ok(2)
}

// ---- propagation: CamelCase, Spring's SCREAMING_CASE, and the enum path ------------------------
spelled! {
    p_required => (propagation = Required);
    p_required_s => (propagation = REQUIRED);
    p_requires_new => (propagation = RequiresNew);
    p_requires_new_s => (propagation = REQUIRES_NEW);
    p_requires_new_path => (propagation = Propagation::RequiresNew);
    p_nested => (propagation = Nested);
    p_nested_s => (propagation = NESTED);
    p_supports => (propagation = Supports);
    p_supports_s => (propagation = SUPPORTS);
    p_not_supported => (propagation = NotSupported);
    p_not_supported_s => (propagation = NOT_SUPPORTED);
    p_mandatory => (propagation = Mandatory);
    p_mandatory_s => (propagation = MANDATORY);
    p_never => (propagation = Never);
    p_never_s => (propagation = NEVER);
}

// ---- isolation -------------------------------------------------------------------------------
spelled! {
    i_default => (isolation = Default);
    i_default_s => (isolation = DEFAULT);
    i_ru => (isolation = ReadUncommitted);
    i_ru_s => (isolation = READ_UNCOMMITTED);
    i_rc => (isolation = ReadCommitted);
    i_rc_s => (isolation = READ_COMMITTED);
    i_rr => (isolation = RepeatableRead);
    i_rr_s => (isolation = REPEATABLE_READ);
    i_ser => (isolation = Serializable);
    i_ser_s => (isolation = SERIALIZABLE);
    i_ser_path => (isolation = Isolation::Serializable);
}

// ---- timeout ---------------------------------------------------------------------------------
spelled! {
    t_secs => (timeout = 5);
    t_ms => (timeout = "250ms");
    t_s => (timeout = "2s");
    t_m => (timeout = "1m");
    t_compound => (timeout = "1m30s");
    t_h => (timeout = "1h");
}

// ---- read_only -------------------------------------------------------------------------------
spelled! {
    ro_bare => (read_only);
    ro_true => (read_only = true);
    ro_false => (read_only = false);
}

// ---- rollback rules --------------------------------------------------------------------------
#[transactional(no_rollback_for = AppError::RiskRejected { .. })]
async fn nrf_one(e: AppError) -> Result<(), AppError> { DB.statement().await; Err(e) }
#[transactional(no_rollback_for = AppError::RiskRejected { .. } | AppError::OutOfStock(_))]
async fn nrf_or(e: AppError) -> Result<(), AppError> { DB.statement().await; Err(e) }
#[transactional(rollback_for = AppError::Db(_))]
async fn rf_one(e: AppError) -> Result<(), AppError> { DB.statement().await; Err(e) }
#[transactional(rollback_for = | AppError::Db(_) | AppError::Tx(_))]
async fn rf_leading_vert(e: AppError) -> Result<(), AppError> { DB.statement().await; Err(e) }
#[transactional(rollback_for = AppError::Db(_) | AppError::OutOfStock(_), no_rollback_for = AppError::OutOfStock(0))]
async fn both(e: AppError) -> Result<(), AppError> { DB.statement().await; Err(e) }

// ---- manager ---------------------------------------------------------------------------------
static OTHER: LazyLock<RecordingManager> = LazyLock::new(RecordingManager::default);
fn other_ref() -> &'static RecordingManager {
    &OTHER
}
fn other_owned() -> RecordingManager {
    OTHER.clone()
}

spelled! {
    m_named => (manager = "audit");
}
#[transactional(manager = other_ref())]
async fn m_fn_ref() -> Result<(), TxError> { OTHER.statement().await; Ok(()) }
#[transactional(manager = other_owned())]
async fn m_fn_owned() -> Result<(), TxError> { OTHER.statement().await; Ok(()) }
#[transactional(manager = *OTHER)]
async fn m_static() -> Result<(), TxError> { OTHER.statement().await; Ok(()) }
#[transactional(manager = pool)]
async fn m_param(pool: RecordingManager, n: u32) -> Result<u32, TxError> {
    pool.statement().await;
    drop(pool); // the manager handle was taken before the body ran
    Ok(n)
}
#[transactional(manager = pool)]
async fn m_param_ref(pool: &RecordingManager) -> Result<(), TxError> {
    pool.statement().await;
    Ok(())
}

// ---- name, retry -----------------------------------------------------------------------------
#[transactional(name = "custom.name")]
async fn named() -> Result<Option<String>, TxError> {
    Ok(tx_sqlx::current_status().map(|s| s.name().to_owned()))
}
#[transactional]
async fn default_name() -> Result<Option<String>, TxError> {
    Ok(tx_sqlx::current_status().map(|s| s.name().to_owned()))
}
#[transactional(retry = 3)]
async fn retried(s: String, n: u32) -> Result<usize, TxError> {
    DB.statement().await;
    Ok(s.len() + n as usize)
}
spelled! {
    retry_zero => (retry = 0);
}

// ---- everything at once, trailing comma ------------------------------------------------------
#[transactional(
    propagation = REQUIRES_NEW,
    isolation = RepeatableRead,
    timeout = "2s",
    read_only = false,
    rollback_for = AppError::Db(_),
    no_rollback_for = AppError::OutOfStock(_),
    manager = other_ref(),
    name = "all.keys",
    retry = 2,
)]
async fn all_keys(n: u32) -> Result<u32, AppError> {
    OTHER.statement().await;
    Ok(n)
}

// ---- generic functions -----------------------------------------------------------------------
#[transactional(propagation = Supports)]
async fn generic<T: Clone + Send + 'static, E>(value: T) -> Result<T, E>
where
    E: From<TxError> + Send,
{
    Ok(value.clone())
}

#[transactional(retry = 2)]
async fn generic_retry<T: Clone + std::fmt::Debug>(value: T) -> Result<String, TxError> {
    Ok(format!("{value:?}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let db = &*DB;
    tx_sqlx::set_default_manager(db.clone());
    tx_sqlx::register_manager("audit", db.clone());

    assert_eq!(bare().await.unwrap(), 1);
    assert_eq!(db.take(), ["BEGIN Default", "COMMIT"]);
    assert_eq!(empty_parens().await.unwrap(), 2);
    assert_eq!(db.take(), ["BEGIN Default", "COMMIT"]);

    // each function is its own future type, so a macro instead of a loop over them
    macro_rules! expect_log {
        ([$($f:ident),*], $expect:expr) => {$(
            $f().await.unwrap();
            assert_eq!(db.take(), $expect, "{}", stringify!($f));
        )*};
    }
    let none = Vec::<String>::new();
    expect_log!([p_required, p_required_s, p_requires_new, p_requires_new_s, p_requires_new_path, p_nested, p_nested_s], ["BEGIN Default", "COMMIT"]);
    expect_log!([p_supports, p_supports_s, p_not_supported, p_not_supported_s, p_never, p_never_s], none);
    assert!(matches!(p_mandatory().await, Err(TxError::NoTransaction)));
    assert!(matches!(p_mandatory_s().await, Err(TxError::NoTransaction)));

    expect_log!([i_default, i_default_s], ["BEGIN Default", "COMMIT"]);
    expect_log!([i_ru, i_ru_s], ["BEGIN ReadUncommitted", "COMMIT"]);
    expect_log!([i_rc, i_rc_s], ["BEGIN ReadCommitted", "COMMIT"]);
    expect_log!([i_rr, i_rr_s], ["BEGIN RepeatableRead", "COMMIT"]);
    expect_log!([i_ser, i_ser_s, i_ser_path], ["BEGIN Serializable", "COMMIT"]);

    expect_log!([t_secs, t_ms, t_s, t_m, t_compound, t_h], ["BEGIN Default", "COMMIT"]);

    expect_log!([ro_bare, ro_true], ["BEGIN Default READ ONLY", "COMMIT"]);
    expect_log!([ro_false], ["BEGIN Default", "COMMIT"]);

    // no_rollback_for: a matching error commits, any other rolls back
    let risk = || AppError::RiskRejected { reason: "amount".into() };
    assert!(matches!(nrf_one(risk()).await, Err(AppError::RiskRejected { .. })));
    assert_eq!(db.take(), ["BEGIN Default", "COMMIT"]);
    assert!(nrf_one(AppError::Db("x".into())).await.is_err());
    assert_eq!(db.take(), ["BEGIN Default", "ROLLBACK"]);
    assert!(nrf_or(AppError::OutOfStock(3)).await.is_err());
    assert_eq!(db.take(), ["BEGIN Default", "COMMIT"]);
    // rollback_for: only matching errors roll back
    assert!(rf_one(AppError::Db("x".into())).await.is_err());
    assert_eq!(db.take(), ["BEGIN Default", "ROLLBACK"]);
    assert!(rf_one(risk()).await.is_err());
    assert_eq!(db.take(), ["BEGIN Default", "COMMIT"]);
    assert!(rf_leading_vert(AppError::Tx(TxError::Timeout)).await.is_err());
    assert_eq!(db.take(), ["BEGIN Default", "ROLLBACK"]);
    // both: matches!(e, R) && !matches!(e, N)
    assert!(both(AppError::OutOfStock(1)).await.is_err());
    assert_eq!(db.take(), ["BEGIN Default", "ROLLBACK"]);
    assert!(both(AppError::OutOfStock(0)).await.is_err());
    assert_eq!(db.take(), ["BEGIN Default", "COMMIT"]);
    assert!(both(risk()).await.is_err());
    assert_eq!(db.take(), ["BEGIN Default", "COMMIT"]);

    m_named().await.unwrap();
    assert_eq!(db.take(), ["BEGIN Default", "COMMIT"]);
    // the other manager was used, not the default one
    expect_log!([m_fn_ref, m_fn_owned, m_static], none);
    assert_eq!(OTHER.take(), ["BEGIN Default", "COMMIT", "BEGIN Default", "COMMIT", "BEGIN Default", "COMMIT"]);
    assert_eq!(m_param(OTHER.clone(), 7).await.unwrap(), 7);
    assert_eq!(OTHER.take(), ["BEGIN Default", "COMMIT"]);
    m_param_ref(&OTHER).await.unwrap();
    assert_eq!(OTHER.take(), ["BEGIN Default", "COMMIT"]);

    assert_eq!(named().await.unwrap().as_deref(), Some("custom.name"));
    assert_eq!(default_name().await.unwrap().as_deref(), Some(concat!(module_path!(), "::default_name")));
    assert_eq!(retried("abc".into(), 2).await.unwrap(), 5);
    retry_zero().await.unwrap();
    assert_eq!(all_keys(4).await.unwrap(), 4);
    assert_eq!(OTHER.take(), ["BEGIN RepeatableRead", "COMMIT"]);
    let _ = db.take();

    assert_eq!(generic::<_, TxError>(5u8).await.unwrap(), 5);
    assert_eq!(generic_retry(vec![1, 2]).await.unwrap(), "[1, 2]");
}
