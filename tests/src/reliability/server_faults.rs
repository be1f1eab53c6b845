//! Server faults: the session killed mid-transaction.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tx_sqlx::TxError;

use super::backend::{Server, eventually, nothing_left};
use super::errors::{AppError, error_chain};
use super::hooks::{Completions, check_failed_completion, later_transaction, record_completion};

/// How the killed transaction learns of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillWhen {
    /// Killed between statements; the next statement fails.
    BetweenStatements,
    /// Killed while a statement runs on the server.
    DuringStatement,
    /// Killed after the last statement; the COMMIT fails.
    BeforeCommit,
}

/// The server kills the transaction's session: the call must fail promptly (within `prompt`
/// of the kill), nothing of it be committed, after_completion agree, and the pool recover:
/// every connection back, nothing open, a later transaction commits. Returns every violation.
pub async fn kill_mid_transaction<B: Server>(b: &B, when: KillWhen) -> Vec<String> {
    let prompt = Duration::from_secs(3);
    let table = b.create_table("kill").await;
    let case = format!("{}: session killed {when:?}", b.name());
    let mut violations = Vec::new();
    let completions: Completions = Arc::default();
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let victim: Arc<Mutex<Option<i64>>> = Arc::default();

    let template = b.template().name("kill.victim");
    let call = template.execute(|_| async {
        record_completion(&completions)?;
        b.insert(&table, "doomed").await?;
        let id = b.session_id().await?;
        *victim.lock().unwrap() = Some(id);
        match when {
            KillWhen::DuringStatement => {
                let killer = b.clone();
                let killed_at = killed_at.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    *killed_at.lock().unwrap() = Some(Instant::now());
                    killer.kill(id).await;
                });
                b.sleep(30.0).await?;
                b.insert(&table, "after-sleep").await?;
            }
            KillWhen::BetweenStatements | KillWhen::BeforeCommit => {
                b.kill(id).await;
                *killed_at.lock().unwrap() = Some(Instant::now());
                // Let the server finish tearing the session down.
                let gone = eventually(Duration::from_secs(5), || async {
                    !b.session_alive(id).await
                })
                .await;
                assert!(gone, "session {id} survived the kill");
                if when == KillWhen::BetweenStatements {
                    b.insert(&table, "after-kill").await?;
                }
            }
        }
        Ok::<_, AppError>(())
    });
    let r = tokio::time::timeout(Duration::from_secs(40), call)
        .await
        .unwrap_or_else(|_| panic!("{case}: the call hangs"));
    let returned = Instant::now();
    let elapsed = killed_at
        .lock()
        .unwrap()
        .map(|k| returned.saturating_duration_since(k));
    match elapsed {
        Some(e) if e <= prompt => {}
        other => violations.push(format!(
            "{case}: returned {other:?} after the kill (limit {prompt:?})"
        )),
    }
    let unknown = matches!(&r, Err(AppError::Tx(TxError::CommitOutcomeUnknown(_))));
    match &r {
        Ok(()) => violations.push(format!(
            "{case}: the call returned Ok although its session was killed"
        )),
        Err(e) => eprintln!("{case}: the call failed with: {}", error_chain(e)),
    }
    let rows = b.tags(&table).await;
    if !rows.is_empty() {
        violations.push(format!(
            "{case}: rows of the killed transaction committed: {rows:?}"
        ));
    }
    if let Err(e) = check_failed_completion(&completions, unknown).await {
        violations.push(format!("{case}: {e}"));
    }
    if let Err(e) = nothing_left(b).await {
        violations.push(format!("{case}: {e}"));
    }
    // The pool recovers: later transactions succeed.
    for i in 0..3 {
        let r = later_transaction(b, &table).await;
        if let Err(e) = r {
            violations.push(format!(
                "{case}: transaction {i} after the kill failed: {e:?}"
            ));
        }
    }
    let rows = b.tags(&table).await;
    if rows != ["later", "later", "later"] {
        violations.push(format!("{case}: after recovery the table holds {rows:?}"));
    }
    let victim = *victim.lock().unwrap();
    if let Some(id) = victim
        && b.session_alive(id).await
    {
        violations.push(format!("{case}: the killed session {id} is still there"));
    }
    if let Err(e) = b.check_clean().await {
        violations.push(format!("{case}: {e}"));
    }
    b.drop_table(&table).await;
    violations
}
