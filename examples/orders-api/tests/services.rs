//! The services tested without HTTP, in test transactions (`tx_sqlx::testing::rollback`): on
//! SQLite the audit log has a database (a transaction manager) of its own, so the test runs in
//! one test transaction per manager, nested.
// The nested test transactions around the service make a deep future type.
#![recursion_limit = "256"]

use orders_api::schema::ids::*;
use orders_api::{ApiError, ShopError};
use tx_sqlx::testing;

#[tokio::test]
async fn an_order_in_test_transactions_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let api = orders_api::sqlite::connect(dir.path()).await.unwrap();
    let (db, audit_db) = (api.db(), api.audit_db());
    testing::rollback(db, || {
        testing::rollback(audit_db, || async {
            let placed = api.orders().place(ZHANG_SAN, LAPTOP, 1).await?;
            assert_eq!(placed.points, 100);
            let zhang = api.orders().account(ZHANG_SAN).await?;
            assert_eq!((zhang.balance, zhang.points), (4000, 100));
            // The audit entry, written in "its own transaction" on the audit database.
            assert_eq!(api.audit().entries().await?.len(), 1);

            let err = api.orders().place(LI_SI, LAPTOP, 1).await.unwrap_err();
            assert!(
                matches!(err, ApiError::Shop(ShopError::InsufficientBalance { .. })),
                "{err:?}"
            );
            assert_eq!(api.orders().product(LAPTOP).await?.stock, 9);
            assert_eq!(api.audit().entries().await?.len(), 2);
            Ok::<_, ApiError>(())
        })
    })
    .await
    .unwrap();

    let zhang = api.orders().account(ZHANG_SAN).await.unwrap();
    assert_eq!((zhang.balance, zhang.points), (5000, 0));
    assert_eq!(api.orders().product(LAPTOP).await.unwrap().stock, 10);
    assert!(api.audit().entries().await.unwrap().is_empty());
}
