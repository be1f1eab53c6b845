//! Pool exhaustion: RequiresNew with no connection left.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tx_sqlx::{Propagation, TxError};

use super::backend::{Server, nothing_left};
use super::errors::{AppError, error_chain};

/// With a pool of one connection held by the outer transaction, a RequiresNew scope cannot get
/// a connection: it must fail at once (within the pool's acquire timeout at the latest) with an
/// error naming the cause (pool starvation), never hang; the pool recovers. `catch`: the outer
/// body swallows the inner error and commits its own work.
pub async fn requires_new_pool_exhausted<B: Server>(
    b: &B,
    acquire_timeout: Duration,
    catch: bool,
) -> Vec<String> {
    let case = format!(
        "{}: RequiresNew with the only connection taken (catch: {catch})",
        b.name()
    );
    let mut violations = Vec::new();
    assert_eq!(b.pool_counts().0.max(1), 1, "needs a pool of one");
    let table = b.create_table("exhaust").await;
    let inner_result: Arc<Mutex<Option<(Duration, String, bool)>>> = Arc::default();
    let started = Instant::now();
    let r = tokio::time::timeout(
        acquire_timeout * 4 + Duration::from_secs(10),
        b.template().name("exhaust.outer").execute(|_| async {
            b.insert(&table, "outer").await?;
            let t0 = Instant::now();
            let inner = b
                .template()
                .name("exhaust.inner")
                .propagation(Propagation::RequiresNew)
                .execute(|_| async {
                    b.insert(&table, "inner").await?;
                    Ok::<_, AppError>(())
                })
                .await;
            let took = t0.elapsed();
            let starved = matches!(&inner, Err(AppError::Tx(TxError::PoolStarvation { .. })));
            let text = match &inner {
                Ok(()) => "Ok".to_owned(),
                Err(e) => error_chain(e),
            };
            *inner_result.lock().unwrap() = Some((took, text, starved));
            match inner {
                Err(e) if !catch => Err(e),
                _ => Ok(()),
            }
        }),
    )
    .await;
    let Ok(r) = r else {
        violations.push(format!(
            "{case}: no answer within {:?}: deadlock",
            started.elapsed()
        ));
        return violations;
    };
    match inner_result.lock().unwrap().clone() {
        None => violations.push(format!("{case}: the inner call never returned")),
        Some((took, text, starved)) => {
            eprintln!("{case}: inner call failed after {took:?} with: {text}");
            if took > acquire_timeout + Duration::from_secs(2) {
                violations.push(format!(
                    "{case}: the inner call took {took:?}, acquire timeout {acquire_timeout:?}"
                ));
            }
            if !starved || !text.contains("connection pool starved") {
                violations.push(format!(
                    "{case}: the error does not name the cause (pool starvation): {text}"
                ));
            }
        }
    }
    let expected_rows: Vec<String> = if catch { vec!["outer".into()] } else { vec![] };
    match (&r, catch) {
        (Ok(()), true) | (Err(_), false) => {}
        _ => violations.push(format!("{case}: outer call ended {r:?}")),
    }
    let rows = b.tags(&table).await;
    if rows != expected_rows {
        violations.push(format!("{case}: rows {rows:?}, expected {expected_rows:?}"));
    }
    if let Err(e) = nothing_left(b).await {
        violations.push(format!("{case}: {e}"));
    }
    // The pool works again: a RequiresNew when the outer holds no connection yet works too.
    b.clear(&table).await;
    let r = b
        .template()
        .execute(|_| async {
            b.template()
                .propagation(Propagation::RequiresNew)
                .execute(|_| async {
                    b.insert(&table, "inner").await?;
                    Ok::<_, AppError>(())
                })
                .await?;
            b.insert(&table, "outer").await?;
            Ok::<_, AppError>(())
        })
        .await;
    if let Err(e) = r {
        violations.push(format!("{case}: a later transaction failed: {e:?}"));
    }
    if b.tags(&table).await != ["inner", "outer"] {
        violations.push(format!("{case}: the later transaction did not commit"));
    }
    b.drop_table(&table).await;
    violations
}
