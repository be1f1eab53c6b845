//! Commit outcome unknown: the COMMIT or its reply lost.

use std::sync::Arc;
use std::time::Duration;

use tx_sqlx::{Completion, TxError};

use super::backend::{Server, eventually, settle};
use super::errors::{AppError, error_chain};
use super::hooks::{
    Completions, completions_of, later_transaction, record_completion, saw_exactly,
};

/// The connection dies while COMMIT is in flight (the proxy cuts it in `mode`): the call must
/// return `TxError::CommitOutcomeUnknown` and after_completion see `Completion::Unknown`,
/// whatever the server did; the pool recovers. `expect_committed` is what the server really
/// did (DropReply: committed; DropCommit: rolled back). Returns every violation.
pub async fn commit_outcome_unknown<B: Server>(
    b: &B,
    proxy: &crate::proxy::CommitCutProxy,
    mode: crate::proxy::CutMode,
) -> Vec<String> {
    let expect_committed = mode == crate::proxy::CutMode::DropReply;
    let case = format!("{}: connection cut at COMMIT ({mode:?})", b.name());
    let mut violations = Vec::new();
    let table = b.create_table("unknown").await;
    let completions: Completions = Arc::default();
    let cuts_before = proxy.cuts();
    proxy.arm(mode);
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        b.template().name("unknown.victim").execute(|_| async {
            record_completion(&completions)?;
            b.insert(&table, "in-doubt").await?;
            Ok::<_, AppError>(())
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("{case}: the call hangs"));
    proxy.disarm();
    if proxy.cuts() != cuts_before + 1 {
        violations.push(format!(
            "{case}: the proxy did not see the COMMIT (test harness problem)"
        ));
    }
    match &r {
        Err(AppError::Tx(TxError::CommitOutcomeUnknown(source))) => {
            eprintln!("{case}: CommitOutcomeUnknown, source: {source}");
        }
        Ok(()) => violations.push(format!(
            "{case}: the call returned Ok, but the client never heard the COMMIT's answer"
        )),
        Err(e) => violations.push(format!(
            "{case}: expected TxError::CommitOutcomeUnknown, got a plain failure: {e:?} ({})",
            error_chain(e)
        )),
    }
    eventually(Duration::from_secs(2), || async {
        !completions.lock().unwrap().is_empty()
    })
    .await;
    if let Err(e) = saw_exactly(&completions_of(&completions), Completion::Unknown) {
        violations.push(format!("{case}: {e}"));
    }
    // What the server really did.
    let expected: Vec<String> = if expect_committed {
        vec!["in-doubt".into()]
    } else {
        vec![]
    };
    let settled = eventually(Duration::from_secs(5), || async {
        b.tags(&table).await == expected && b.open_transactions().await == 0
    })
    .await;
    if !settled {
        violations.push(format!(
            "{case}: the server shows {:?} (expected {expected:?}), {} open transaction(s)",
            b.tags(&table).await,
            b.open_transactions().await
        ));
    }
    let (size, idle) = settle(b).await;
    if size as usize != idle {
        violations.push(format!("{case}: pool size {size}, idle {idle}"));
    }
    // The pool (through the disarmed proxy) recovers.
    b.clear(&table).await;
    let r = later_transaction(b, &table).await;
    if let Err(e) = r {
        violations.push(format!("{case}: a later transaction failed: {e:?}"));
    }
    if b.tags(&table).await != ["later"] {
        violations.push(format!("{case}: the later transaction did not commit"));
    }
    if let Err(e) = b.check_clean().await {
        violations.push(format!("{case}: {e}"));
    }
    b.drop_table(&table).await;
    violations
}
