//! Workers on their own tasks, and waiting for sagas to settle.

use std::time::{Duration, Instant};

use tx_saga::{SagaBackend, SagaEngine, SagaId, SagaStatus};
use tx_sqlx::TxError;

/// A worker running on its own task until [`Running::stop`].
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<Result<(), TxError>>,
}

/// A worker of `engine` on its own task, running until stopped.
pub fn spawn_worker<DB: SagaBackend>(engine: &SagaEngine<DB>) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let engine = engine.clone();
    let join = tokio::spawn(async move { engine.run(stopped).await });
    Running {
        stop: Some(stop),
        join,
    }
}

/// Runs a worker until every saga in `ids` settled (see [`settle`]), then stops it.
pub async fn run_until_settled<DB: SagaBackend>(
    engine: &SagaEngine<DB>,
    ids: &[SagaId],
    limit: Duration,
) -> Vec<SagaStatus> {
    let worker = spawn_worker(engine);
    let statuses = settle(engine, ids, limit).await;
    worker.stop().await;
    statuses
}

impl Running {
    pub async fn stop(mut self) {
        let _ = self.stop.take().expect("stopped once").send(());
        self.join
            .await
            .expect("worker task")
            .expect("worker result");
    }

    /// Kills the worker as a crash would: its task is dropped mid-step.
    pub fn kill(self) {
        self.join.abort();
    }
}

/// Waits until every saga in `ids` is final or stuck; panics with their statuses after
/// `limit`.
pub async fn settle<DB: SagaBackend>(
    engine: &SagaEngine<DB>,
    ids: &[SagaId],
    limit: Duration,
) -> Vec<SagaStatus> {
    let deadline = Instant::now() + limit;
    loop {
        let mut all = Vec::with_capacity(ids.len());
        for id in ids {
            all.push(engine.status(*id).await.expect("status"));
        }
        if all
            .iter()
            .all(|s| s.is_final() || matches!(s, SagaStatus::Stuck(_)))
        {
            return all;
        }
        if Instant::now() > deadline {
            let pending: Vec<_> = ids
                .iter()
                .zip(&all)
                .filter(|(_, s)| !s.is_final())
                .take(5)
                .collect();
            panic!("sagas did not settle within {limit:?}; e.g. {pending:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Parses a saga id the tests know to be well formed.
pub trait FromStrChecked {
    fn from_str_checked(s: &str) -> SagaId;
}
impl FromStrChecked for SagaId {
    fn from_str_checked(s: &str) -> SagaId {
        s.parse().expect("a well-formed saga id")
    }
}
