// Included by the pass cases: tx's recording manager (a transaction manager without a
// database that logs what the engine asks of it), so the cases can run their functions and
// check the outcome, and a statement that only reaches the bound transaction.

#[allow(dead_code)]
mod manager {
    use tx_sqlx::manager::TransactionManager;
    pub use tx_sqlx::testing::RecordingManager;

    pub trait Statement {
        /// What a statement on this manager does to the engine: sends the deferred `BEGIN`
        /// (and savepoints) of the transaction bound to this task, if any. Logs nothing
        /// itself, so the log holds what the engine sent: `BEGIN ..`, `COMMIT`, `ROLLBACK`, ...
        fn statement(&self) -> impl std::future::Future<Output = ()> + Send;
    }

    impl Statement for RecordingManager {
        async fn statement(&self) {
            if let Some(tx) = tx_sqlx::connection::bound_transaction(self.key()) {
                let _guard = tx.lock().await.expect("lock the bound transaction");
            }
        }
    }
}
