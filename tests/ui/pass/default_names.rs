//! The default transaction name: `Type::method` for methods (Spring's `Class.method`), so two
//! services with a `record` method are told apart; the module path and the function's name for
//! free functions.
use tx_sqlx::prelude::*;

include!("../support/manager.rs");
use manager::RecordingManager;

static DB: std::sync::LazyLock<RecordingManager> = std::sync::LazyLock::new(RecordingManager::default);

fn current_name() -> String {
    tx_sqlx::current_status().expect("in a transactional scope").name().to_owned()
}

mod audit {
    use super::*;

    pub struct AuditService;
    impl AuditService {
        #[transactional]
        pub async fn record(&self) -> Result<String, TxError> {
            Ok(current_name())
        }
        /// an associated function without `self`
        #[transactional]
        pub async fn open() -> Result<String, TxError> {
            Ok(current_name())
        }
    }

    #[transactional]
    pub async fn free() -> Result<String, TxError> {
        Ok(current_name())
    }

    pub fn module() -> &'static str {
        module_path!()
    }
}

struct OrderService;
impl OrderService {
    #[transactional(retry = 2)]
    async fn record(&self, _note: String) -> Result<String, TxError> {
        Ok(current_name())
    }
}

struct Repo<T>(T);
impl<T: Send + Sync> Repo<T> {
    #[transactional]
    async fn get(&self) -> Result<String, TxError> {
        Ok(current_name())
    }
}

trait Counter {
    async fn bump(&self) -> Result<String, TxError>;
    #[transactional]
    async fn reset(&self) -> Result<String, TxError> {
        Ok(current_name())
    }
}
struct Pg;
impl Counter for Pg {
    #[transactional]
    async fn bump(&self) -> Result<String, TxError> {
        Ok(current_name())
    }
}

/// the block's attribute and a method's own one
struct Block;
#[transactional(read_only)]
impl Block {
    async fn a(&self) -> Result<String, TxError> {
        Ok(current_name())
    }
    #[transactional(propagation = RequiresNew)]
    async fn b() -> Result<String, TxError> {
        Ok(current_name())
    }
    #[transactional(name = "block.c")]
    async fn c(&self) -> Result<String, TxError> {
        Ok(current_name())
    }
}

#[transactional]
async fn top_level() -> Result<String, TxError> {
    Ok(current_name())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tx_sqlx::set_default_manager(DB.clone());

    assert_eq!(audit::AuditService.record().await.unwrap(), "AuditService::record");
    assert_eq!(OrderService.record("n".into()).await.unwrap(), "OrderService::record");
    assert_eq!(audit::AuditService::open().await.unwrap(), "AuditService::open");
    assert_eq!(Repo(1u8).get().await.unwrap(), "Repo::get");
    assert_eq!(Repo("x").get().await.unwrap(), "Repo::get");
    assert_eq!(Pg.bump().await.unwrap(), "Pg::bump");
    assert_eq!(Pg.reset().await.unwrap(), "Counter::reset");
    assert_eq!(Block.a().await.unwrap(), "Block::a");
    assert_eq!(Block::b().await.unwrap(), "Block::b");
    assert_eq!(Block.c().await.unwrap(), "block.c");

    // free functions: module path and name, also when declared inside another function
    assert_eq!(audit::free().await.unwrap(), format!("{}::free", audit::module()));
    assert_eq!(top_level().await.unwrap(), concat!(module_path!(), "::top_level"));
    #[transactional]
    async fn local() -> Result<String, TxError> {
        Ok(current_name())
    }
    assert_eq!(local().await.unwrap(), concat!(module_path!(), "::local"));
}
